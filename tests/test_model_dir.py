"""vggsound_jax.model_dir: model directories round-trip exactly, load in another dtype, carry a
manifest that catches any damaged file, are written atomically, never replace what this project
did not write, never hold NaN; anything else is a one-line error naming the file."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from vggsound_jax import labels, model_dir
from vggsound_jax.model_dir import (
  MANIFEST,
  ModelCheckpointError,
  NonFiniteModelError,
  load_metadata,
  load_model,
  save_model,
)
from vggsound_jax.models import ModelConfig, build_model

NAMES = labels.class_names()


def _random_model(head, poison=None):
  """A tiny model with random parameters and BatchNorm statistics (not the initial 0 and 1).

  Built from shapes only: eager random initialisation op by op is slow on CPU. `poison`:
  (path, value) written into one element.
  """
  config = ModelConfig(depth=18, head=head, width=4)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  rng = np.random.default_rng(7)
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
  values = {}
  for path, leaf in flat.items():
    if path[-1] == "var":
      values[path] = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    else:
      values[path] = (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)
  if poison:
    path, value = poison
    values[path].flat[1] = value
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
  model = nnx.merge(graphdef, state)
  model.eval()
  return model


def _input():
  return np.asarray(jax.random.normal(jax.random.key(1), (2, 65, 40, 1)))


def _files(directory):
  return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _snapshot(directory):
  return {name: (directory / name).read_bytes() for name in _files(directory)}


def _rewrite_manifest(directory):
  """What a consistent directory with these contents would hold (hashlib, not the code under test)."""
  lines = [
    f"{hashlib.sha256((directory / name).read_bytes()).hexdigest()}  {name}\n"
    for name in _files(directory)
    if name != MANIFEST
  ]
  (directory / MANIFEST).write_text("".join(lines))


def _one_line_error(error, path):
  message = str(error.value)
  assert message.startswith(f"{path}: ") and len(message.splitlines()) == 1, message
  return message


@pytest.mark.parametrize("head", ["avgpool", "vlad"])
def test_round_trip_is_exact(tmp_path, head):
  model = _random_model(head)
  assert not np.allclose(model.bn1.mean[...], 0) and not np.allclose(model.bn1.var[...], 1)
  source = {"file": "x.pth.tar", "sha256": "ab" * 32, "note": ["free", "form"]}
  save_model(tmp_path / "m", model, class_names=NAMES, source=source)

  loaded, metadata = load_model(tmp_path / "m")
  assert metadata["model_config"] == dataclasses.asdict(model.config)
  assert {k: metadata["model_config"][k] for k in ("depth", "head", "num_classes", "width", "dtype")} == {
    "depth": 18,
    "head": head,
    "num_classes": 309,
    "width": 4,
    "dtype": "float32",
  }
  assert metadata["class_names"] == list(NAMES)
  assert metadata["source"] == source
  assert load_metadata(tmp_path / "m") == metadata
  assert loaded.config == model.config

  original, restored = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(loaded))
  jax.tree_util.tree_map(np.testing.assert_array_equal, original, restored)
  x = _input()
  logits, embedding = model(x, return_embedding=True)
  loaded_logits, loaded_embedding = loaded(x, return_embedding=True)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(loaded_logits))
  np.testing.assert_array_equal(np.asarray(embedding), np.asarray(loaded_embedding))


def test_loaded_model_is_in_eval_mode(tmp_path):
  model = _random_model("avgpool")
  save_model(tmp_path / "m", model, class_names=NAMES)
  loaded, _ = load_model(tmp_path / "m")
  x = _input()
  # Eval mode uses running statistics, so one clip's output does not depend on its batch mates.
  alone = np.asarray(loaded(x[:1]))
  np.testing.assert_allclose(np.asarray(loaded(x))[:1], alone, rtol=1e-5, atol=1e-5)


def test_bfloat16_override(tmp_path):
  model = _random_model("vlad")
  save_model(tmp_path / "m", model, class_names=NAMES)
  loaded, metadata = load_model(tmp_path / "m", dtype="bfloat16")
  assert loaded.config.dtype == "bfloat16"
  assert metadata["model_config"]["dtype"] == "float32"  # what was saved
  assert loaded.fc.kernel[...].dtype == jnp.float32  # parameters stay float32
  x = _input()
  logits = np.asarray(loaded(x))
  expected = np.asarray(model(x))
  assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
  assert not np.array_equal(logits, expected)  # really computed in bf16
  assert np.max(np.abs(logits - expected)) <= 0.05 * np.max(np.abs(expected)) + 1e-3


def test_not_a_model_directory(tmp_path):
  with pytest.raises(ModelCheckpointError, match="no such model directory") as error:
    load_model(tmp_path / "absent")
  _one_line_error(error, tmp_path / "absent")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ModelCheckpointError, match="not a model checkpoint") as error:
    load_model(empty)
  _one_line_error(error, empty)


@pytest.fixture(name="saved")
def saved_fixture(tmp_path):
  directory = tmp_path / "m"
  save_model(directory, _random_model("avgpool"), class_names=NAMES)
  return directory


def test_manifest_lists_every_file_and_sha256sum_agrees(saved):
  listed = [line.split("  ", 1)[1] for line in (saved / MANIFEST).read_text().splitlines()]
  assert sorted(listed) == [name for name in _files(saved) if name != MANIFEST]
  assert any(name.startswith("state/") for name in listed) and any(name.startswith("metadata/") for name in listed)
  # The coreutils tool, independent of the code that wrote it.
  result = subprocess.run(
    ["sha256sum", "--check", "--strict", MANIFEST], cwd=saved, capture_output=True, text=True, encoding="utf-8"
  )
  assert result.returncode == 0, result.stdout + result.stderr
  before = _snapshot(saved)
  load_model(saved)
  assert _snapshot(saved) == before  # loading writes nothing


def _largest_state_file(directory):
  return max((p for p in (directory / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_damaged_files_are_named(saved):
  pristine = _snapshot(saved)

  def restore():
    shutil.rmtree(saved)
    for name, data in pristine.items():
      (saved / name).parent.mkdir(parents=True, exist_ok=True)
      (saved / name).write_bytes(data)

  victim = _largest_state_file(saved)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 0x01  # one bit
  victim.write_bytes(bytes(data))
  with pytest.raises(ModelCheckpointError, match="damaged: its sha256 differs") as error:
    load_model(saved)
  _one_line_error(error, victim)

  restore()
  victim.write_bytes(pristine[victim.relative_to(saved).as_posix()][:-100])  # truncated
  with pytest.raises(ModelCheckpointError, match="damaged") as error:
    load_model(saved)
  _one_line_error(error, victim)

  restore()
  victim.unlink()
  with pytest.raises(ModelCheckpointError, match="missing") as error:
    load_model(saved)
  _one_line_error(error, victim)

  restore()
  extra = saved / "state" / "extra.bin"
  extra.write_bytes(b"not ours")
  with pytest.raises(ModelCheckpointError, match="not part of the model") as error:
    load_metadata(saved)
  _one_line_error(error, extra)

  restore()
  (saved / MANIFEST).unlink()
  with pytest.raises(ModelCheckpointError, match="missing") as error:
    load_model(saved)
  _one_line_error(error, saved / MANIFEST)

  restore()
  (saved / MANIFEST).write_text("0123  state/x\n")
  with pytest.raises(ModelCheckpointError, match="line 1 is malformed") as error:
    load_model(saved)
  _one_line_error(error, saved / MANIFEST)

  restore()
  load_model(saved)  # the pristine bytes load again


def test_metadata_that_does_not_fit_the_state(saved):
  metadata_file = saved / "metadata" / "metadata"
  metadata = json.loads(metadata_file.read_text())
  metadata["model_config"]["width"] = 8
  metadata_file.write_text(json.dumps(metadata))
  with pytest.raises(ModelCheckpointError, match="damaged"):  # caught by the manifest first
    load_model(saved)
  _rewrite_manifest(saved)  # consistent bytes, inconsistent contents
  with pytest.raises(ModelCheckpointError, match="does not match model_config") as error:
    load_model(saved)
  _one_line_error(error, saved)

  metadata["format"] = "something else"
  metadata_file.write_text(json.dumps(metadata))
  _rewrite_manifest(saved)
  with pytest.raises(ModelCheckpointError, match="not a model checkpoint"):
    load_model(saved)


def test_directories_of_the_format_before_manifests_still_load(saved):
  model, _ = load_model(saved)
  metadata_file = saved / "metadata" / "metadata"
  metadata = json.loads(metadata_file.read_text())
  metadata["format"] = model_dir.UNCHECKED_FORMATS[0]
  metadata_file.write_text(json.dumps(metadata))
  (saved / MANIFEST).unlink()
  loaded, _ = load_model(saved)
  x = _input()
  np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
  # And the trainer's re-export replaces it.
  save_model(saved, _random_model("vlad"), class_names=NAMES, overwrite=True)
  assert load_metadata(saved)["format"] == model_dir.MODEL_FORMAT


def _siblings(directory):
  return sorted(p.name for p in directory.parent.iterdir())


def test_overwrite_replaces_only_a_model_directory_of_this_project(saved, tmp_path, monkeypatch):
  model = _random_model("avgpool")
  with pytest.raises(ModelCheckpointError, match="already exists") as error:
    save_model(saved, model, class_names=NAMES)
  _one_line_error(error, saved)
  # The trainer re-exports over its own export at the end of every run.
  save_model(saved, model, class_names=NAMES, source={"round": 2}, overwrite=True)
  assert load_metadata(saved)["source"] == {"round": 2}
  assert _siblings(saved) == ["m"]  # no scratch left beside it

  foreign = tmp_path / "photos"
  foreign.mkdir()
  (foreign / "cat.jpg").write_bytes(b"meow")
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine")
  ours_plus = tmp_path / "ours_plus"
  save_model(ours_plus, model, class_names=NAMES)
  (ours_plus / "my_notes.txt").write_text("keep me")
  link = tmp_path / "link"
  link.symlink_to(saved)
  refusals = {
    foreign: "not a model directory written by vggsound-jax",
    a_file: "is a file",
    ours_plus / "my_notes.txt": "was not written by vggsound-jax",
    link: "symbolic link",
  }
  before = {p: (_snapshot(p) if p.is_dir() else p.read_bytes()) for p in (foreign, a_file, ours_plus, saved)}
  for path, reason in refusals.items():
    target = ours_plus if path.parent == ours_plus else path
    with pytest.raises(ModelCheckpointError, match=reason) as error:
      save_model(target, model, class_names=NAMES, overwrite=True)
    _one_line_error(error, path)
  assert before == {p: (_snapshot(p) if p.is_dir() else p.read_bytes()) for p in before}

  # The current directory and its parents, however they are spelled.
  monkeypatch.chdir(saved)
  for spelling in (".", "..", str(saved), str(saved / "state" / ".."), "../m"):
    with pytest.raises(ModelCheckpointError, match="current directory or one of its parents"):
      save_model(spelling, model, class_names=NAMES, overwrite=True)
  assert _snapshot(saved) == before[saved]

  empty = tmp_path / "empty"
  empty.mkdir()
  save_model(empty, model, class_names=NAMES, overwrite=True)  # nothing to lose
  load_model(empty)


def test_non_finite_state_is_never_written(tmp_path):
  for value, name in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
    model = _random_model("avgpool", poison=(("layer2", 0, "bn1", "scale"), value))
    with pytest.raises(NonFiniteModelError, match=r"NaN or inf in params/layer2/0/bn1/scale") as error:
      save_model(tmp_path / name, model, class_names=NAMES)
    _one_line_error(error, tmp_path / name)
  statistics = _random_model("vlad", poison=(("bn1", "var"), np.nan))
  with pytest.raises(NonFiniteModelError, match="batch_stats/bn1/var"):
    save_model(tmp_path / "stats", statistics, class_names=NAMES)
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even a scratch directory

  # Over an existing model: it stays as it was.
  save_model(tmp_path / "m", _random_model("avgpool"), class_names=NAMES)
  before = _snapshot(tmp_path / "m")
  with pytest.raises(NonFiniteModelError):
    save_model(tmp_path / "m", statistics, class_names=NAMES, overwrite=True)
  assert _snapshot(tmp_path / "m") == before


def test_a_failed_save_keeps_the_previous_model(saved, monkeypatch):
  before = _snapshot(saved)

  def broken(directory):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(model_dir.manifest, "write_manifest", broken)
  with pytest.raises(OSError, match="No space left"):
    save_model(saved, _random_model("vlad"), class_names=NAMES, overwrite=True)
  assert _snapshot(saved) == before and _siblings(saved) == ["m"]
  monkeypatch.undo()
  # What a killed save leaves (its scratch name is reserved) is cleaned by the next save.
  (saved.parent / ".m.saving" / "state").mkdir(parents=True)
  (saved.parent / ".m.saving" / "state" / "half-written").write_bytes(b"\0" * 100)
  save_model(saved, _random_model("vlad"), class_names=NAMES, overwrite=True)
  assert _siblings(saved) == ["m"] and load_metadata(saved)["model_config"]["head"] == "vlad"


def test_save_killed_between_its_renames_loses_nothing(saved, monkeypatch):
  before = _snapshot(saved)
  real_rename = os.rename

  def rename_then_die(src, dst):
    if os.fspath(dst) == os.fspath(saved):  # the old model is aside, the new one not yet in place
      raise KeyboardInterrupt
    real_rename(src, dst)

  monkeypatch.setattr(model_dir.os, "rename", rename_then_die)
  with pytest.raises(KeyboardInterrupt):
    save_model(saved, _random_model("vlad"), class_names=NAMES, overwrite=True)
  monkeypatch.undo()
  assert not saved.exists()
  replaced = saved.parent / ".m.replaced"
  with pytest.raises(ModelCheckpointError, match="rename it back") as error:
    load_model(saved)
  assert str(replaced) in str(error.value)
  assert _snapshot(replaced) == before

  # The next save, even without overwrite, first puts the previous model back.
  with pytest.raises(ModelCheckpointError, match="already exists"):
    save_model(saved, _random_model("vlad"), class_names=NAMES)
  assert _snapshot(saved) == before
  save_model(saved, _random_model("vlad"), class_names=NAMES, overwrite=True)
  assert _siblings(saved) == ["m"] and load_metadata(saved)["model_config"]["head"] == "vlad"


def test_class_names_must_fit(tmp_path):
  with pytest.raises(ValueError, match="3 class names for a model with 309 outputs"):
    save_model(tmp_path / "other", _random_model("avgpool"), class_names=["a", "b", "c"])
