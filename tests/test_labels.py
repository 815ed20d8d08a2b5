from vggsound_jax.labels import NUM_CLASSES, class_index, class_names


def test_309_names_in_pythons_sorted_order():
  names = class_names()
  assert len(names) == NUM_CLASSES == 309
  assert list(names) == sorted(names)
  assert len(set(names)) == 309


def test_names_are_verbatim():
  names = class_names()
  assert names[0] == "air conditioning noise"
  # Typos and commas of the original are kept.
  assert "eletric blender running" in names
  assert "female speech, woman speaking" in names
  assert "bird chirping, tweeting" in names
  assert class_index()["air horn"] == 1
