"""Every experiment config loads, overrides apply, and its model config builds."""

import importlib
from pathlib import Path

import pytest
from flax import nnx

from vggsound_jax import trainer
from vggsound_jax.models import build_model

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base"))

# Table rows (SPEC section 5): depth, head, trained on, tested on.
ROWS = {
    "D": (18, "avgpool", "common", "astest"), "E": (18, "vlad", "common", "astest"),
    "F": (18, "avgpool", "full", "astest"), "G": (18, "vlad", "full", "astest"),
    "H": (18, "avgpool", "full", "test"), "I": (18, "vlad", "full", "test"),
    "J": (34, "avgpool", "full", "astest"), "K": (34, "avgpool", "full", "test"),
    "L": (50, "avgpool", "full", "astest"), "M": (50, "avgpool", "full", "test"),
}


def test_every_row_and_the_demo_have_a_config():
  assert set(ROWS) | {"demo", "eval_H", "eval_I"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  model_cfg = trainer.model_config(config, num_classes=309)
  # Shapes only: building the real parameters of ResNet-50 would take long on CPU.
  abstract = nnx.eval_shape(lambda: build_model(model_cfg))
  assert abstract.fc.kernel.shape == (model_cfg.embedding_dim, 309)
  assert config.batch_size > 0 and config.eval.splits
  if name in ROWS:
    depth, head, data_config, split = ROWS[name]
    assert (config.model.depth, config.model.head, config.data.config) == (depth, head, data_config)
    assert tuple(config.eval.splits) == (split,)
    assert config.model.width == 64


def test_overrides_reach_the_config():
  from ml_collections import config_flags  # the flag the scripts use
  from absl import flags

  fv = flags.FlagValues()
  path = Path(__file__).resolve().parents[1] / "configs" / "H.py"
  argv = ["prog", f"--config={path}", "--config.batch_size=32",
          "--config.optimizer.learning_rate=0.05"]
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.batch_size == 32 and fv.config.optimizer.learning_rate == 0.05
  assert fv.config.model.head == "avgpool"


def test_eval_configs_are_float32_and_match_their_rows():
  for row in ("H", "I"):
    config = importlib.import_module(f"configs.eval_{row}").get_config()
    train = importlib.import_module(f"configs.{row}").get_config()
    assert config.model.dtype == "float32"
    assert config.model.head == train.model.head and config.model.depth == 18


def test_demo_is_small_and_synthetic():
  config = importlib.import_module("configs.demo").get_config()
  assert config.data.config == "synthetic"
  assert config.model.width <= 16 and 0 < config.num_train_steps <= 1000
  steps = trainer.num_train_steps(config, 288)
  assert steps == config.num_train_steps
