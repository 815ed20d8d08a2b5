"""Fine-tuning a model directory on your own labelled clips (docs/transfer.md).

  vggsound-crossval --config configs/transfer.py:models/H --workdir runs/esc50-H \
    --config.data.clips=esc50 --config.data.data_dir=~/tensorflow_datasets

The argument after the colon is `init_from`: a converted release model (H, I), a VGGSound run's
`WORKDIR/model`, or a converted VGGish. The network is that directory's (depth, head, width are
taken from it); its classifier layer is replaced by one for the data's classes
(`finetune.new_head`). Short clips are tiled to 10 s as the original tiles them
(`data.num_samples`; set it to the clips' own length, e.g. 80000 for ESC-50's 5 s, to skip that).

The recipe, and why:
- SGD with Nesterov momentum, peak 0.01 for the new classifier and a tenth of it for the
  backbone (`finetune.backbone_learning_rate_factor`): a random head next to a trained backbone
  must move fast while the backbone only adapts; batch 32 without batch-size scaling, since
  ESC-50's training folds hold 1,600 clips.
- 30 epochs, one of warmup, cosine decay: fold training sets are small, and the backbone
  starts trained.
- Label smoothing 0.1 and the default SpecAugment: the data sets have 40 (ESC-50) to ~870
  (UrbanSound8K) clips per class; regularisation matters.
- `--config.finetune.freeze_backbone=True` trains the classifier layer alone (the backbone's
  BatchNorm statistics stay as loaded too); the linear probe (`--mode probe`) is the fast form of it.
"""

import ml_collections

from vggsound_jax import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default_config.get_config()
  config.init_from = arg or ""
  config.finetune.new_head = bool(config.init_from)
  config.finetune.backbone_learning_rate_factor = 0.1

  config.data.worker_count = 2

  config.batch_size = 32
  config.num_epochs = 30.0
  config.optimizer.learning_rate = 0.01
  config.optimizer.reference_batch_size = 0
  config.schedule.warmup_epochs = 1.0
  config.checkpoint.save_interval_steps = 200
  config.log_every_steps = 20

  config.eval.splits = ("test",)
  config.eval.batch_size = 32
  config.eval.num_samples = config.data.get_ref("num_samples")  # test clips tiled as the training ones
  return config
