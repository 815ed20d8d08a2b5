"""Starting a run from a model directory (config.init_from), and a VGGish run as rows A-C train:
multi-hot labels with a sigmoid loss, checkpoints with an empty batch_stats, their restore, export."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from tiny import NUM_CLASSES, tiny_config, tiny_data

from vggsound_jax import checkpoints, optimizers, sharding, train_state, trainer, warm_start
from vggsound_jax.errors import ConfigError
from vggsound_jax.input_pipeline import Data
from vggsound_jax.model_dir import load_model, save_model
from vggsound_jax.models import ModelConfig, VGGish
from vggsound_jax.testing.random_model import random_model

WIDTH, FC_WIDTH = 2, 8


def _vggish_config(steps):
  config = tiny_config(steps)
  config.model.arch = "vggish"
  config.model.width, config.model.fc_width = WIDTH, FC_WIDTH
  config.model.output = "sigmoid"
  config.data.num_samples = config.eval.num_samples = 16000  # one patch
  config.augment.freq_masks = config.augment.time_masks = 0
  config.optimizer.name, config.optimizer.learning_rate = "adamw", 1e-3
  return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A VGGish without classifier, as vggsound-convert writes the released weights."""
  directory = tmp_path_factory.mktemp("pretrained") / "vggish"
  model = random_model(ModelConfig(arch="vggish", width=WIDTH, fc_width=FC_WIDTH, num_classes=0), seed=7)
  save_model(directory, model, class_names=[])
  return directory, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _state(config, *, shapes_only=False):
  tx = optimizers.make_optimizer(config, optimizers.make_schedule(config, 10, 4.0))
  model_cfg = ModelConfig.from_config(config.model, NUM_CLASSES)
  if shapes_only:  # enough to refuse shapes before any array is placed, or to restore into
    return jax.eval_shape(lambda: train_state.init_state(model_cfg, tx, 0))
  return train_state.create_train_state(model_cfg, tx, 0, sharding.make_mesh())


def test_parameters_come_from_the_directory_and_the_classifier_stays(pretrained, capsys):
  directory, expected = pretrained
  state = _state(_vggish_config(2))
  before = nnx.to_pure_dict(state["model"]["params"])
  loaded = warm_start.init_from_model_dir(state, directory)
  params = nnx.to_pure_dict(loaded["model"]["params"])
  for layer in ("conv1", "conv4_2", "fc1_1", "fc2"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(np.asarray(params[layer][leaf]), np.asarray(expected[layer][leaf]))
  assert not np.array_equal(np.asarray(before["conv1"]["kernel"]), np.asarray(params["conv1"]["kernel"]))
  np.testing.assert_array_equal(np.asarray(params["classifier"]["kernel"]), np.asarray(before["classifier"]["kernel"]))
  assert params["conv1"]["kernel"].sharding == before["conv1"]["kernel"].sharding
  # The state it was given is left as it was; the command says what stayed random.
  np.testing.assert_array_equal(
    np.asarray(nnx.to_pure_dict(state["model"]["params"])["conv1"]["kernel"]), np.asarray(before["conv1"]["kernel"])
  )
  err = capsys.readouterr().err
  assert "initialised the model from" in err and "params.classifier.kernel" in err
  assert warm_start.init_from_model_dir(state, "") is state


def test_a_directory_that_does_not_fit_is_named(pretrained):
  directory, _ = pretrained
  config = _vggish_config(2)
  config.model.fc_width = 16
  with pytest.raises(ConfigError, match=r"config\.init_from: .*vggish: does not fit .*wrong shape: fc1_1\.bias \(8,\)"):
    warm_start.init_from_model_dir(_state(config, shapes_only=True), directory)
  with pytest.raises(ConfigError, match=r"not in the model: conv1\.bias"):
    warm_start.init_from_model_dir(_state(tiny_config(2), shapes_only=True), directory)


def _multi_hot(data):
  """tiny_data with multi-hot training labels: each clip its class and, for even classes, the next."""
  train = []
  for example in data.train:
    label = np.zeros(NUM_CLASSES, np.bool_)
    label[example["label"]] = True
    label[(example["label"] + 1) % NUM_CLASSES] = example["label"] % 2 == 0
    train.append(dict(example, label=label))
  return Data(data.class_names, train, data.eval)


@pytest.mark.slow
def test_a_vggish_run_trains_from_the_directory_checkpoints_and_exports(pretrained, tmp_path):
  directory, expected = pretrained
  config = _vggish_config(3)
  config.init_from = str(directory)
  config.checkpoint.save_interval_steps = 3
  results = trainer.train_and_evaluate(config, tmp_path, data=_multi_hot(tiny_data()))
  assert results["test"]["num_clips"] == 21 and np.isfinite(results["test"]["mAP"])
  metrics = json.loads((tmp_path / "eval" / "test" / "metrics.json").read_text())
  assert metrics["num_clips"] == 21

  model, metadata = load_model(tmp_path / "model")
  assert isinstance(model, VGGish) and model.config.output == "sigmoid"
  assert metadata["source"]["step"] == 3
  assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))  # VGGish has no BatchNorm
  trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert not np.allclose(np.asarray(trained["fc2"]["kernel"]), np.asarray(expected["fc2"]["kernel"]))

  # What a resumed run restores: the checkpoint, its empty batch_stats included, over a fresh state.
  manager = checkpoints.checkpoint_manager(tmp_path, config)
  restored = checkpoints.restore(manager, _state(_vggish_config(5), shapes_only=True), sharding.make_mesh())
  assert int(restored["step"]) == 3 and not jax.tree.leaves(restored["model"]["batch_stats"])
  np.testing.assert_array_equal(
    np.asarray(nnx.to_pure_dict(restored["model"]["params"])["fc2"]["kernel"]), np.asarray(trained["fc2"]["kernel"])
  )
  manager.close()

  # Resuming needs the run's own checkpoint only: the warm-start directory may be gone by then.
  longer = _vggish_config(4)
  longer.init_from = str(tmp_path / "deleted_since")
  longer.checkpoint.save_interval_steps = 3
  trainer.train_and_evaluate(longer, tmp_path, data=_multi_hot(tiny_data()))
  assert load_model(tmp_path / "model")[1]["source"]["step"] == 4
