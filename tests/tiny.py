"""A tiny config and tiny in-memory data (0.5 s tones, one pitch per class) for training tests."""

import ml_collections
import numpy as np

from vggsound_jax import default_config
from vggsound_jax.input_pipeline import Data

NUM_CLASSES = 4
NUM_SAMPLES = 8000  # 0.5 s


def tiny_config(steps: int = 10) -> ml_collections.ConfigDict:
  c = default_config.get_config()
  c.model.width = 4
  c.model.dtype = "float32"
  c.batch_size = 16
  c.num_train_steps = steps
  c.log_every_steps = 2
  c.data.num_samples = NUM_SAMPLES
  c.data.worker_count = 0
  c.eval.num_samples = NUM_SAMPLES
  c.eval.batch_size = 16
  c.optimizer.learning_rate = 0.4
  c.schedule.warmup_epochs = 0.2
  c.augment.time_mask_width = 10  # SpecAugment and mixup on: their RNG must resume too
  c.augment.mixup_alpha = 0.4
  c.checkpoint.save_interval_steps = 3
  c.checkpoint.max_to_keep = 2
  return c


def tones(n: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  t = np.arange(NUM_SAMPLES) / 16000
  out = []
  for i in range(n):
    label = i % NUM_CLASSES
    wave = 6000 * np.sin(2 * np.pi * 250 * (label + 1) * t + rng.uniform(0, 6))
    wave += rng.normal(0, 300, t.size)
    out.append({"audio": wave.astype(np.int16), "label": label, "clip_id": f"clip{i:03d}"})
  return out


def tiny_data() -> Data:
  names = tuple(f"class{i}" for i in range(NUM_CLASSES))
  return Data(names, tones(64, 0), {"test": tones(21, 1)})
