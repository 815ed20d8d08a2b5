"""vggsound_jax.model_dir: model directories round-trip exactly, load in another dtype, and
anything else is a one-line error naming the directory."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from vggsound_jax import labels
from vggsound_jax.model_dir import ModelCheckpointError, load_metadata, load_model, save_model
from vggsound_jax.models import ModelConfig, build_model

NAMES = labels.class_names()


def _random_model(head):
  """A tiny model with random parameters and BatchNorm statistics (not the initial 0 and 1).

  Built from shapes only: eager random initialisation op by op is slow on CPU.
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
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
  model = nnx.merge(graphdef, state)
  model.eval()
  return model


def _input():
  return np.asarray(jax.random.normal(jax.random.key(1), (2, 65, 40, 1)))


@pytest.mark.parametrize("head", ["avgpool", "vlad"])
def test_round_trip_is_exact(tmp_path, head):
  model = _random_model(head)
  assert not np.allclose(model.bn1.mean[...], 0) and not np.allclose(model.bn1.var[...], 1)
  source = {"file": "x.pth.tar", "sha256": "ab" * 32, "note": ["free", "form"]}
  save_model(tmp_path / "m", model, class_names=NAMES, source=source)

  loaded, metadata = load_model(tmp_path / "m")
  assert metadata["model_config"] == {
    "depth": 18,
    "head": head,
    "num_classes": 309,
    "width": 4,
    "num_clusters": 16,
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
  assert str(tmp_path / "absent") in str(error.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ModelCheckpointError, match="not a model checkpoint") as error:
    load_model(empty)
  assert str(empty) in str(error.value) and len(str(error.value).splitlines()) == 1


def test_metadata_that_does_not_fit_the_state(tmp_path):
  save_model(tmp_path / "m", _random_model("avgpool"), class_names=NAMES)
  metadata_files = [p for p in (tmp_path / "m" / "metadata").iterdir() if p.name == "metadata"]
  assert len(metadata_files) == 1
  metadata = json.loads(metadata_files[0].read_text())
  metadata["model_config"]["width"] = 8
  metadata_files[0].write_text(json.dumps(metadata))
  with pytest.raises(ModelCheckpointError, match="does not match model_config") as error:
    load_model(tmp_path / "m")
  assert len(str(error.value).splitlines()) == 1

  metadata["format"] = "something else"
  metadata_files[0].write_text(json.dumps(metadata))
  with pytest.raises(ModelCheckpointError, match="not a model checkpoint"):
    load_model(tmp_path / "m")


def test_save_refuses_to_overwrite_and_checks_class_names(tmp_path):
  model = _random_model("avgpool")
  save_model(tmp_path / "m", model, class_names=NAMES)
  with pytest.raises(ModelCheckpointError, match="already exists"):
    save_model(tmp_path / "m", model, class_names=NAMES)
  save_model(tmp_path / "m", model, class_names=NAMES, source={"round": 2}, overwrite=True)
  assert load_metadata(tmp_path / "m")["source"] == {"round": 2}
  with pytest.raises(ValueError, match="3 class names for a model with 309 outputs"):
    save_model(tmp_path / "other", model, class_names=["a", "b", "c"])
