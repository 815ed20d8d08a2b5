"""Every config field with its default: the training recipe for real VGGSound.

The experiment configs (`configs/paper.py`, `configs/demo.py`) start from `get_config()` and
change what their row needs. The original release has no training code and never published
its recipe (docs/original_pipeline.md#the-papers-table), so this one is chosen, and why:
- SGD, momentum 0.9, Nesterov, weight decay 1e-4 on conv/linear kernels only: the recipe
  torchvision's ResNets (the network here, docs/original_pipeline.md#network) were designed and tuned with, and
  what a PyTorch ResNet codebase of 2019-2020 would have used.
- Peak learning rate 0.1 per 256 clips (Goyal et al.'s linear scaling), 5 epochs of linear
  warmup, then cosine decay to 0 over 50 epochs: warmup keeps the large-batch start stable,
  cosine replaces hand-tuned step drops. 50 epochs of 183,730 clips is about 36k steps at
  batch 256, the budget audio ResNets on data sets of this size converge in.
- Label smoothing 0.1: VGGSound labels are noisy (one label per clip, often several sounds).
- SpecAugment, 2 frequency masks of up to 24 bins and 2 time masks of up to 100 frames
  (about 1 s): the standard regulariser for spectrogram CNNs, cheap on device. Mixup is
  available (`augment.mixup_alpha`) but off: it blurs the single-label targets.
- Full 10 s clips (no random crop), as the model sees at test time; average pooling and
  NetVLAD are length-independent, so crops are an option (`data.crop_samples`), not needed.
- bfloat16 compute with float32 parameters and optimizer state: no loss scaling needed.
- Gradient clipping at global norm 5, only as a guard against rare bad batches.

Every field can be overridden on the command line, e.g. `--config.batch_size=128`.
"""

from __future__ import annotations

import ml_collections

from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.errors import ConfigError


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.depth = 18
  config.model.head = "avgpool"  # or "vlad" (NetVLAD)
  config.model.width = 64
  config.model.num_clusters = 16
  config.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
  config.model.arch = "resnet"  # or "vggish" (rows A-C); depth, head and num_clusters are the ResNet's
  # "softmax": one class per clip; "sigmoid": independent classes and a binary cross-entropy,
  # for multi-label training data (AudioSet, row A). Inference reports the same probabilities.
  config.model.output = "softmax"
  config.model.fc_width = 4096  # VGGish: width of its two hidden fully connected layers
  config.model.embedding_relu = True  # VGGish: ReLU on the 128-d embedding, as released until 2020
  config.model.patch_aggregation = "mean"  # VGGish: pooling of a clip's patch embeddings, "mean" or "max"

  config.data = ml_collections.ConfigDict()
  config.data.data_dir = "~/tensorflow_datasets"
  config.data.config = "full"  # builder config: "full", "common" (164 classes), "synthetic"
  config.data.train_split = "train"
  # The builder training reads: "vggsound" (config data.config), or "audioset" (row A: the
  # user's AudioSet clips of the classes shared with VGGSound, multi-hot labels in VGGSound's
  # order; data.train_split is then one of its splits). Evaluation always reads vggsound.
  config.data.train_dataset = "vggsound"
  # A data set of your own labelled clips (`vggsound-build-clips --name NAME`), read by
  # vggsound-crossval (docs/transfer.md); its folds split it into training and test clips.
  config.data.clips = ""
  config.data.num_samples = CLIP_SAMPLES  # clip length after tiling (docs/original_pipeline.md#front-end)
  config.data.crop_samples = 0  # random training crop in samples; 0: the whole clip
  config.data.worker_count = 4  # Grain worker processes per host (docs/performance.md: cores per GPU)
  config.data.read_threads = 2  # threads per loader process making training batches
  config.data.prefetch_batches = 2  # training batches made ahead, per loader process

  config.batch_size = 256  # global, over all devices and hosts
  config.num_epochs = 50.0
  config.num_train_steps = -1  # > 0 overrides num_epochs

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # or "adamw"
  config.optimizer.learning_rate = 0.1  # peak, at reference_batch_size
  config.optimizer.reference_batch_size = 256  # peak scales with batch_size / this; 0: no scaling
  config.optimizer.momentum = 0.9  # sgd; b1 for adamw
  config.optimizer.nesterov = True
  config.optimizer.b2 = 0.999  # adamw only
  config.optimizer.weight_decay = 1e-4  # kernels only, not BatchNorm or biases
  config.optimizer.grad_clip_norm = 5.0  # 0 disables

  config.schedule = ml_collections.ConfigDict()
  config.schedule.warmup_epochs = 5.0
  config.schedule.end_learning_rate_factor = 0.0

  config.label_smoothing = 0.1
  # A model directory (converted or trained) whose parameters start a fresh run instead of a
  # random init: those present in both with the same shape (a converted VGGish has no
  # classifier, which stays random). Neither read nor needed once the run has its own checkpoint.
  config.init_from = ""

  # Fine-tuning a model of other classes (configs/transfer.py sets these for the user's clips).
  config.finetune = ml_collections.ConfigDict()
  # With init_from: the classifier layer (models.config.HEAD_MODULES) starts random, sized for
  # this data's classes, instead of being loaded; the backbone is loaded.
  config.finetune.new_head = False
  # Train the classifier layer only: the backbone's parameters and BatchNorm statistics stay as loaded.
  config.finetune.freeze_backbone = False
  # The backbone's learning rate is optimizer.learning_rate times this (the classifier's is 1x).
  config.finetune.backbone_learning_rate_factor = 1.0

  # Cross-validation over the folds of `data.clips` (vggsound-crossval): each fold in turn is
  # the test set of a model trained on the others.
  config.crossval = ml_collections.ConfigDict()
  config.crossval.folds = ""  # the test folds to run, e.g. "1,2"; empty: every fold of the data

  # The linear probe (vggsound-crossval --mode probe): a scikit-learn classifier per fold on the
  # embeddings of `init_from`, computed once per (model, data set) and cached.
  config.probe = ml_collections.ConfigDict()
  config.probe.backend = "auto"  # "auto": the fastest here (OpenVINO on a CPU), "jax", "openvino"
  config.probe.batch_size = 16  # clips per forward pass
  # Clip length embedded (every clip tiled or cut to it); 0: the data's longest clip. Not the
  # 10 s of training: an average-pooled (or NetVLAD) embedding of a clip tiled to 10 s is nearly
  # that of the clip itself, at twice the cost for ESC-50's 5 s clips.
  config.probe.num_samples = 0
  config.probe.C = 1.0  # inverse L2 strength of the logistic regression on standardised embeddings
  config.probe.max_iter = 1000

  config.augment = ml_collections.ConfigDict()
  config.augment.freq_masks = 2
  config.augment.freq_mask_width = 24  # frequency bins, of 257
  config.augment.time_masks = 2
  config.augment.time_mask_width = 100  # frames, of 1004 per 10 s
  config.augment.mixup_alpha = 0.0  # 0 disables

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.save_interval_steps = 1000
  config.checkpoint.max_to_keep = 3

  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: evaluate only at the end
  # A step whose loss or gradients are NaN or infinite: "stop" the run at the next save (naming
  # the step; nothing after the last good checkpoint is kept), or "skip" its update and go on.
  config.nonfinite = "stop"

  # Several processes: one that fails or dies ends all of them within seconds (faults.py); one
  # that sends no heartbeat for this long (a frozen or unreachable host) counts as dead.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.heartbeat_timeout_seconds = 20

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("test",)
  config.eval.batch_size = 64  # global
  config.eval.num_samples = CLIP_SAMPLES
  config.eval.export_clip_npy = False  # also one .npy of probabilities per clip
  # Also score the test split against VGGSounder's audible labels (vggsound_jax/vggsounder.py):
  # eval/test/vggsounder.json. Needs the 309 VGGSound classes (not the synthetic data).
  config.eval.vggsounder = False

  # The paper's figures for the row a config reproduces (`row`, `mAP`, `mAUC`, `d_prime`;
  # configs/paper.py fills them): evaluation prints them beside the measured ones.
  config.reported = ml_collections.ConfigDict()

  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value cannot work."""
  # Imported here: config files load this module, and should load fast.
  from vggsound_jax.audio.stft import NPERSEG
  from vggsound_jax.audio.vggish_frontend import MIN_SAMPLES as VGGISH_MIN_SAMPLES
  from vggsound_jax.datasets import audioset, vggsound
  from vggsound_jax.models.config import ARCHS, DEPTHS, OUTPUTS
  from vggsound_jax.models.vggish import PATCH_AGGREGATIONS
  from vggsound_jax.train_state import NONFINITE_POLICIES

  def positive(field: str, value: float) -> None:
    if not value > 0:
      raise ConfigError(field, f"{value!r} must be positive")

  def value_of(field: str) -> object:
    section, _, name = field.rpartition(".")
    return config[section][name] if section else config[name]

  for field in (
    "batch_size",
    "eval.batch_size",
    "log_every_steps",
    "checkpoint.save_interval_steps",
    "model.width",
    "data.num_samples",
    "eval.num_samples",
    "distributed.heartbeat_timeout_seconds",
    "data.prefetch_batches",
  ):
    positive(field, value_of(field))
  if config.num_train_steps <= 0:
    positive("num_epochs", config.num_epochs)
  choices = {
    "model.depth": tuple(DEPTHS),
    "model.head": ("avgpool", "vlad"),
    "model.dtype": ("float32", "bfloat16"),
    "optimizer.name": ("sgd", "adamw"),
    "nonfinite": NONFINITE_POLICIES,
    "model.arch": ARCHS,
    "model.output": OUTPUTS,
    "model.patch_aggregation": PATCH_AGGREGATIONS,
    "data.train_dataset": (vggsound.NAME, audioset.NAME),
  }
  for field, allowed in choices.items():
    value = value_of(field)
    if value not in allowed:
      raise ConfigError(field, f"{value!r} is not one of {', '.join(map(str, allowed))}")
  if config.data.num_samples < NPERSEG or config.eval.num_samples < NPERSEG:
    raise ConfigError("data.num_samples", f"clips must be at least one spectrogram frame ({NPERSEG} samples)")
  if config.data.crop_samples and not NPERSEG <= config.data.crop_samples <= config.data.num_samples:
    raise ConfigError("data.crop_samples", f"{config.data.crop_samples} is not in [{NPERSEG}, data.num_samples]")
  shortest = min(config.data.crop_samples or config.data.num_samples, config.eval.num_samples)
  if config.model.arch == "vggish" and shortest < VGGISH_MIN_SAMPLES:
    field = "data.crop_samples" if config.data.crop_samples else "data.num_samples"
    raise ConfigError(field, f"VGGish needs clips of at least one patch ({VGGISH_MIN_SAMPLES} samples, 0.975 s)")
  if config.finetune.backbone_learning_rate_factor < 0:
    raise ConfigError("finetune.backbone_learning_rate_factor", "must not be negative")
  if config.finetune.new_head and not config.init_from:
    raise ConfigError("finetune.new_head", "keeps the backbone of init_from, which is empty")
  for field in ("data.worker_count", "data.read_threads"):
    if value_of(field) < 0:
      raise ConfigError(field, f"{value_of(field)} is negative")
  if config.checkpoint.max_to_keep is not None and config.checkpoint.max_to_keep < 1:
    raise ConfigError("checkpoint.max_to_keep", f"{config.checkpoint.max_to_keep} keeps no checkpoint")
