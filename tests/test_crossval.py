"""Fine-tuning and the linear probe, cross-validated over folds of generated labelled clips: the
optimizer groups (frozen backbone, backbone learning rate), the new head, folds never on both
sides, resuming, the summary; above chance on distinct sounds."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

from vggsound_jax import Tagger, checkpoints, crossval, default_config, optimizers, probe
from vggsound_jax.audio.decode import convert_waveform
from vggsound_jax.errors import ConfigError
from vggsound_jax.model_dir import load_model, save_model
from vggsound_jax.models import ModelConfig, split_model
from vggsound_jax.testing import labelled_clips
from vggsound_jax.testing.random_model import random_model, with_unit_statistics

NUM_CLASSES, CLIPS_PER_CLASS, NUM_FOLDS = 3, 12, 3
SECONDS = 0.5


def _data():
  source, labels, folds = [], [], []
  for k in range(NUM_CLASSES):
    for i in range(CLIPS_PER_CLASS):
      audio = convert_waveform(labelled_clips.clip(k, SECONDS, 16000, i), 16000)
      source.append({"audio": audio, "label": k, "fold": i % NUM_FOLDS + 1, "clip_id": f"{k}/{i}"})
      labels.append(k)
      folds.append(i % NUM_FOLDS + 1)
  names = tuple(labelled_clips.class_names(NUM_CLASSES))
  longest = max(len(s["audio"]) for s in source)
  return crossval.LabelledData(source, names, np.array(labels), np.array(folds), "generated", longest)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A tiny ResNet of 5 other classes, as a VGGSound model stands to the user's data."""
  directory = tmp_path_factory.mktemp("pretrained") / "model"
  model = with_unit_statistics(random_model(ModelConfig(width=4, num_classes=5), seed=1, std=0.3))
  save_model(directory, model, class_names=[f"other{i}" for i in range(5)])
  return directory


def _config(init_from, steps=30):
  from conftest import load_config

  config = load_config(f"configs/transfer.py:{init_from}")
  config.unlock()
  config.model.dtype = "float32"
  config.data.num_samples = int(SECONDS * 16000)
  config.data.worker_count = 0
  config.batch_size = config.eval.batch_size = 8
  config.num_train_steps = steps
  config.optimizer.learning_rate = 0.05
  config.finetune.backbone_learning_rate_factor = 1.0
  config.augment.time_mask_width = 5
  config.checkpoint.save_interval_steps = 10
  config.log_every_steps = 10
  config.probe.backend = "jax"
  return config


def test_frozen_backbone_and_backbone_rate_group_the_parameters():
  config = default_config.get_config()
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.momentum = 0.0
  params = {
    "conv1": {"kernel": np.ones((2, 2), np.float32)},
    "fc": {"kernel": np.ones((2, 3), np.float32), "bias": np.ones(3, np.float32)},
  }
  grads = jax.tree.map(np.ones_like, params)

  def step(**finetune):
    config.finetune.update(finetune)
    tx = optimizers.make_optimizer(config, optax.constant_schedule(0.5))
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree.map(lambda u: float(np.asarray(u).ravel()[0]), updates)

  assert step(freeze_backbone=False, backbone_learning_rate_factor=1.0) == {
    "conv1": {"kernel": -0.5},
    "fc": {"kernel": -0.5, "bias": -0.5},
  }
  assert step(backbone_learning_rate_factor=0.1)["conv1"]["kernel"] == pytest.approx(-0.05)
  frozen = step(freeze_backbone=True)
  assert frozen["conv1"]["kernel"] == 0.0 and frozen["fc"]["kernel"] == -0.5
  assert optimizers.backbone_frozen(config)


def test_folds_that_do_not_exist_are_one_line():
  data = _data()
  config = default_config.get_config()
  assert crossval.test_folds(config, data) == [1, 2, 3]
  config.crossval.folds = "2,7"
  with pytest.raises(ConfigError, match=r"crossval\.folds: fold 7 is not in the data \(its folds: 1, 2, 3\)"):
    crossval.test_folds(config, data)


def test_probe_per_fold_above_chance_and_cached(pretrained, tmp_path, monkeypatch):
  monkeypatch.setenv("VGGSOUND_JAX_CACHE", str(tmp_path / "cache"))
  data = _data()
  summary = crossval.run(_config(pretrained), tmp_path / "probe", data, mode="probe")
  assert [f["fold"] for f in summary["folds"]] == [1, 2, 3]
  assert all(f["test_clips"] == CLIPS_PER_CLASS * NUM_CLASSES // NUM_FOLDS for f in summary["folds"])
  assert summary["mean_accuracy"] > 0.8 > 1 / NUM_CLASSES
  cached = list((tmp_path / "cache" / probe.EMBEDDINGS_SUBDIR).glob("*.npy"))
  assert len(cached) == 1
  # The test fold's predictions hold exactly its clips.
  predictions = np.load(tmp_path / "probe" / "fold_2" / "eval" / "test" / "predictions.npz")
  assert sorted(predictions["index"]) == sorted(np.flatnonzero(data.folds == 2))
  csv_rows = (tmp_path / "probe" / crossval.SUMMARY_CSV).read_text().splitlines()
  assert csv_rows[0] == "fold,accuracy,mAP,test_clips" and csv_rows[-2].startswith("mean,")
  # A second run reads every fold's result and computes no embedding.
  before = cached[0].stat().st_mtime_ns
  again = crossval.run(_config(pretrained), tmp_path / "probe", data, mode="probe")
  assert again["mean_accuracy"] == summary["mean_accuracy"] and cached[0].stat().st_mtime_ns == before


@pytest.mark.slow
def test_finetune_per_fold_resumes_and_keeps_each_model(pretrained, tmp_path, monkeypatch, capsys):
  data = _data()
  config = _config(pretrained)
  config.optimizer.learning_rate = 0.2
  config.crossval.folds = "2"
  workdir = tmp_path / "finetune"
  save = checkpoints.save

  def killed_after_step_10(manager, step, *args, **kwargs):
    saved = save(manager, step, *args, **kwargs)
    if step == 10:
      manager.wait_until_finished()
      raise KeyboardInterrupt
    return saved

  monkeypatch.setattr(checkpoints, "save", killed_after_step_10)
  with pytest.raises(KeyboardInterrupt):
    crossval.run(config, workdir, data, mode="finetune")
  monkeypatch.undo()
  assert not (workdir / "fold_2" / crossval.FOLD_RESULT).exists()
  summary = crossval.run(config, workdir, data, mode="finetune")
  assert "resuming from step 10 of 30" in capsys.readouterr().err
  assert [f["fold"] for f in summary["folds"]] == [2]
  assert summary["mean_accuracy"] > 0.7
  model, metadata = load_model(workdir / "fold_2" / "model")
  assert metadata["class_names"] == list(data.class_names) and model.config.num_classes == NUM_CLASSES
  assert model.config.width == 4  # the architecture of init_from
  assert Tagger(workdir / "fold_2" / "model", backend="jax").class_names == list(data.class_names)
  # A fold killed after its training resumes at its last step (nothing left to train), and
  # gives the same result; a finished fold is not run again.
  (workdir / "fold_2" / crossval.FOLD_RESULT).unlink()
  again = crossval.run(config, workdir, data, mode="finetune")
  assert again["folds"] == summary["folds"]
  assert json.loads((workdir / "fold_2" / crossval.FOLD_RESULT).read_text())["fold"] == 2
  assert crossval.run(config, workdir, data, mode="finetune")["folds"] == summary["folds"]


@pytest.mark.slow
def test_a_frozen_backbone_keeps_its_parameters_and_statistics(pretrained, tmp_path):
  config = _config(pretrained, steps=3)
  config.finetune.freeze_backbone = True
  config.crossval.folds = "3"
  crossval.run(config, tmp_path / "frozen", _data(), mode="finetune")
  before = split_model(load_model(pretrained)[0])[1]
  after = split_model(load_model(tmp_path / "frozen" / "fold_3" / "model")[0])[1]
  flat_before = {k: traverse_util.flatten_dict(nnx.to_pure_dict(v)) for k, v in before.items()}
  flat_after = {k: traverse_util.flatten_dict(nnx.to_pure_dict(v)) for k, v in after.items()}
  for kind in ("params", "batch_stats"):
    for path, value in flat_after[kind].items():
      if path[0] != "fc":
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_before[kind][path]), err_msg=str(path))
  assert flat_after["params"][("fc", "kernel")].shape == (32, NUM_CLASSES)


def test_an_architecture_that_cannot_take_the_clips_is_one_line(tmp_path):
  vggish = tmp_path / "vggish"
  save_model(vggish, random_model(ModelConfig(arch="vggish", width=2, fc_width=8, num_classes=0)), class_names=[])
  config = _config(vggish)
  with pytest.raises(ConfigError, match=r"config\.init_from: .*vggish is a vggish: .*0\.975 s"):
    crossval.run(config, tmp_path / "run", _data(), mode="finetune")
  assert not (tmp_path / "run").exists()
