"""The experiment configs: the paper's table, the demo, overrides as the commands take them."""

import re

import pytest
from flax import nnx

from vggsound_jax import default_config, optimizers
from vggsound_jax.errors import ConfigError
from vggsound_jax.models import ModelConfig, build_model

# The paper's rows, written out independently of configs/paper.py: depth, head (None for
# VGGish), trained on (builder config), tested on (split), reported mAP, AUC, d'.
VGGISH_ROWS = {
  "A": (None, None, "common", "astest", 0.286, 0.899, 1.803),
  "B": (None, None, "common", "astest", 0.326, 0.916, 1.950),
  "C": (None, None, "common", "astest", 0.301, 0.910, 1.900),
}
# Rows A-C: trained on (builder), output, initialised from (the converted VGGish weights or random).
VGGISH_TRAINING = {
  "A": ("audioset", "sigmoid", "models/vggish"),
  "B": ("vggsound", "softmax", "models/vggish"),
  "C": ("vggsound", "softmax", ""),
}
ROWS = {
  **VGGISH_ROWS,
  "D": (18, "avgpool", "common", "astest", 0.328, 0.923, 2.024),
  "E": (18, "vlad", "common", "astest", 0.369, 0.927, 2.058),
  "F": (18, "avgpool", "full", "astest", 0.404, 0.944, 2.253),
  "G": (18, "vlad", "full", "astest", 0.434, 0.950, 2.327),
  "H": (18, "avgpool", "full", "test", 0.516, 0.968, 2.627),
  "I": (18, "vlad", "full", "test", 0.512, 0.970, 2.660),
  "J": (34, "avgpool", "full", "astest", 0.409, 0.947, 2.292),
  "K": (34, "avgpool", "full", "test", 0.529, 0.972, 2.703),
  "L": (50, "avgpool", "full", "astest", 0.412, 0.949, 2.309),
  "M": (50, "avgpool", "full", "test", 0.532, 0.973, 2.735),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_paper_row_matches_the_table_and_builds_its_model(row, load_config):
  depth, head, data_config, split, m_ap, m_auc, d_prime = ROWS[row]
  config = load_config(f"configs/paper.py:{row}")
  if row in VGGISH_ROWS:
    assert config.model.arch == "vggish" and config.data.config == data_config
  else:
    assert config.model.arch == "resnet" and config.init_from == ""
    assert (config.model.depth, config.model.head, config.data.config) == (depth, head, data_config)
  assert tuple(config.eval.splits) == (split,)
  assert config.model.width == 64 and config.model.dtype == "bfloat16"
  assert dict(config.reported) == {"row": row, "mAP": m_ap, "mAUC": m_auc, "d_prime": d_prime}
  model_cfg = ModelConfig.from_config(config.model, num_classes=309)
  # Shapes only: building the real parameters of ResNet-50 would take long on CPU.
  abstract = nnx.eval_shape(lambda: build_model(model_cfg))
  classifier = abstract.classifier if row in VGGISH_ROWS else abstract.fc
  assert classifier.kernel.shape == (model_cfg.embedding_dim, 309)


@pytest.mark.parametrize("row", sorted(VGGISH_TRAINING))
def test_vggish_rows_train_as_documented(row, load_config):
  train_dataset, output, init_from = VGGISH_TRAINING[row]
  config = load_config(f"configs/paper.py:{row}")
  assert (config.data.train_dataset, config.model.output, config.init_from) == (train_dataset, output, init_from)
  assert config.model.embedding_relu and config.model.patch_aggregation == "mean"
  assert config.augment.freq_masks == config.augment.time_masks == 0  # no SpecAugment on log-mel patches
  assert (config.optimizer.name, config.optimizer.learning_rate) == ("adamw", 1e-4)
  if train_dataset == "audioset":
    assert config.data.train_split == "balanced_train+unbalanced_train" and config.label_smoothing == 0
  default_config.validate(config)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_eval_row_is_its_row_in_float32(row, load_config):
  config = load_config(f"configs/paper.py:eval_{row}")
  train = load_config(f"configs/paper.py:{row}")
  assert config.model.dtype == "float32"
  config.unlock()
  config.model.dtype = train.model.dtype
  assert config.to_dict() == train.to_dict()


def test_unknown_row_names_the_choices(load_config):
  with pytest.raises(Exception, match="unknown row 'Z'.*eval_H"):
    load_config("configs/paper.py:Z")


def test_overrides_reach_the_config(load_config):
  config = load_config("configs/paper.py:H", "batch_size=32", "optimizer.learning_rate=0.05")
  assert config.batch_size == 32 and config.optimizer.learning_rate == 0.05
  assert config.model.head == "avgpool"


def test_demo_is_small_and_synthetic(load_config):
  config = load_config("configs/demo.py")
  assert config.data.config == "synthetic"
  assert config.model.width <= 16 and 0 < config.num_train_steps <= 1000
  assert optimizers.num_train_steps(config, 288) == config.num_train_steps
  assert not config.reported


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("batch_size", 0, "config.batch_size: 0 must be positive"),
    ("model.head", "max", "config.model.head: 'max' is not one of avgpool, vlad"),
    ("model.depth", 20, "config.model.depth: 20 is not one of 18, 34, 50"),
    ("nonfinite", "ignore", "config.nonfinite: 'ignore' is not one of stop, skip"),
    ("data.crop_samples", 100, "config.data.crop_samples: 100 is not in"),
  ],
)
def test_invalid_values_name_their_field(field, value, message, load_config):
  config = load_config("configs/demo.py", f"{field}={value}")
  with pytest.raises(ConfigError, match=re.escape(message)):
    default_config.validate(config)


def test_the_paper_rows_and_the_demo_are_valid(load_config):
  for spec in ["configs/demo.py"] + [f"configs/paper.py:{row}" for row in ROWS]:
    default_config.validate(load_config(spec))


def test_transfer_starts_from_its_argument_and_tests_at_the_training_length(load_config):
  config = load_config("configs/transfer.py:models/H", "data.num_samples=80000")
  assert config.init_from == "models/H" and config.finetune.new_head
  assert config.finetune.backbone_learning_rate_factor < 1 and config.eval.num_samples == 80000
  default_config.validate(config)
  assert not load_config("configs/transfer.py").finetune.new_head  # from scratch: nothing to keep
