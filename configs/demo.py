"""The README's first command: a small ResNet-18 on the embedded synthetic data set.

  vggsound-train --config configs/demo.py --workdir runs/demo

Builds the synthetic data set on first use (8 classes of procedurally generated sounds),
trains a width-8 ResNet-18 on random 1 s crops for a few hundred steps, evaluates on the
full 10 s test clips, and writes runs/demo/eval/test/. A few minutes on a 2-core CPU.
"""

import ml_collections

from vggsound_jax import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config.get_config()
  config.model.width = 8  # an eighth of the paper's channels: 64x fewer FLOPs
  config.model.dtype = "float32"  # bfloat16 is slow on CPUs without native support

  config.data.config = "synthetic"
  config.data.crop_samples = 16_000  # 1 s: 10x fewer frames than a full clip
  config.data.worker_count = 0  # 2 cores: the main process keeps up with the model

  config.batch_size = 32
  config.num_train_steps = 300
  config.optimizer.learning_rate = 0.1
  config.optimizer.reference_batch_size = 0
  config.schedule.warmup_epochs = 2.0  # of 9 steps each: 18 steps

  config.augment.time_mask_width = 20  # of 97 frames per 1 s crop

  config.checkpoint.save_interval_steps = 100
  config.log_every_steps = 20

  config.eval.splits = ("test",)
  config.eval.batch_size = 32
  return config
