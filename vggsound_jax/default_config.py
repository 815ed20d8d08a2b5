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

from vggsound_jax.audio import CLIP_SAMPLES


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.depth = 18
  config.model.head = "avgpool"  # or "vlad" (NetVLAD)
  config.model.width = 64
  config.model.num_clusters = 16
  config.model.dtype = "bfloat16"  # compute dtype; parameters stay float32

  config.data = ml_collections.ConfigDict()
  config.data.data_dir = "~/tensorflow_datasets"
  config.data.config = "full"  # builder config: "full", "common" (164 classes), "synthetic"
  config.data.train_split = "train"
  config.data.num_samples = CLIP_SAMPLES  # clip length after tiling (docs/original_pipeline.md#front-end)
  config.data.crop_samples = 0  # random training crop in samples; 0: the whole clip
  config.data.worker_count = 4  # Grain worker processes per host

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

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("test",)
  config.eval.batch_size = 64  # global
  config.eval.num_samples = CLIP_SAMPLES
  config.eval.export_clip_npy = False  # also one .npy of probabilities per clip

  # The paper's figures for the row a config reproduces (`row`, `mAP`, `mAUC`, `d_prime`;
  # configs/paper.py fills them): evaluation prints them beside the measured ones.
  config.reported = ml_collections.ConfigDict()

  return config
