"""Train-step benchmark: clips/s and model FLOP utilisation, side by side with PyTorch.

  python benchmarks/benchmark_train.py                  # CPU: batch 8, ResNet-18 avgpool and vlad
  python benchmarks/benchmark_train.py --batch_size 256 --peak_tflops 989   # H100, bf16 dense peak
  python benchmarks/benchmark_train.py --smoke          # tiny shapes, just shows that it runs

Our step is the real one (`train_state.make_train_step`): int16 waveforms in, spectrogram on
device, SpecAugment, forward, backward, SGD update. The PyTorch step takes ready spectrograms
(the original has no training code), so it does strictly less work. Utilisation counts the
paper's forward FLOPs (docs/original_pipeline.md#network) times 3 for forward + backward,
against the peak given with --peak_tflops or, by default, the matmul rate measured in this run.
"""

from __future__ import annotations

from absl import app, flags
from benchmark_utils import machine, print_table, seconds_per_call

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model and clips, one repeat.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_HEADS = flags.DEFINE_list("heads", ["avgpool", "vlad"], "ResNet-18 heads to measure.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of our step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed steps per figure (median).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Peak FLOP/s of the device in TFLOP/s; 0: measure a matmul.")
_TORCH = flags.DEFINE_bool("torch", True, "Also measure the PyTorch train step.")

# Forward cost of one 10 s clip, counted with PyTorch's flop counter
# (docs/original_pipeline.md#network).
FORWARD_GFLOP_PER_CLIP = {18: 18.9, 34: 39.0, 50: 43.6}


def measured_matmul_tflops(dtype: str) -> float:
  import jax
  import jax.numpy as jnp

  n = 4096 if jax.default_backend() != "cpu" else 2048
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  seconds = seconds_per_call(lambda: matmul(a).block_until_ready(), repeats=5)
  return 2 * n**3 / seconds / 1e12


def our_step_seconds(head, dtype, cfg):
  import jax
  import numpy as np

  from vggsound_jax import default_config, optimizers, sharding, train_state
  from vggsound_jax.models import ModelConfig, graphdefs

  config = default_config.get_config()
  config.model.head, config.model.dtype, config.model.width = head, dtype, cfg["width"]
  config.batch_size = cfg["batch"]
  mesh = sharding.make_mesh()
  schedule = optimizers.make_schedule(config, 1000, 100.0)
  tx = optimizers.make_optimizer(config, schedule)
  model_cfg = ModelConfig.from_config(config.model, 309)
  state = train_state.create_train_state(model_cfg, tx, 0, mesh)
  step = train_state.make_train_step(config, graphdefs(model_cfg), tx, schedule, 309, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch(
    {
      "audio": rng.integers(-8000, 8000, (cfg["batch"], cfg["clip"]), dtype=np.int16),
      "label": rng.integers(0, 309, cfg["batch"]).astype(np.int32),
    },
    mesh,
  )
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)

  return seconds_per_call(run, repeats=cfg["repeats"], warmup=2)


def torch_step_seconds(head, cfg):
  """The PyTorch reference's train step on its best path for the device."""
  import torch

  from vggsound_jax.testing import torch_reference

  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  model = torch_reference.build_torch_model(18, head, width=cfg["width"]).to(device)
  model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
  frames = 1 + (cfg["clip"] - 512) // 159
  x = torch.randn(cfg["batch"], 1, 257, frames, device=device).contiguous(memory_format=torch.channels_last)
  y = torch.randint(0, 309, (cfg["batch"],), device=device)

  def step(m):
    optimizer.zero_grad(set_to_none=True)
    # bf16 autocast pays on GPUs; on CPUs without native bf16 it is slower than fp32.
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
      loss = torch.nn.functional.cross_entropy(m(x), y, label_smoothing=0.1)
    loss.backward()
    optimizer.step()
    if cuda:
      torch.cuda.synchronize()

  name = "PyTorch channels_last" + (" + bf16 autocast + torch.compile" if cuda else " fp32 eager")
  runner = torch.compile(model) if cuda else model
  return name, seconds_per_call(lambda: step(runner), repeats=cfg["repeats"], warmup=2)


def main(argv):
  del argv
  cfg = {"width": 64, "clip": 160000, "batch": _BATCH_SIZE.value, "repeats": _REPEATS.value}
  if _SMOKE.value:
    cfg.update(width=4, clip=16000, batch=2, repeats=1)
  print(f"# Train-step benchmark\n\n{machine()}")
  rows = []
  for head in _HEADS.value:
    for dtype in _DTYPES.value:
      peak = _PEAK_TFLOPS.value or measured_matmul_tflops(dtype)
      seconds = our_step_seconds(head, dtype, cfg)
      clips = cfg["batch"] / seconds
      # FLOPs scale with the squared width and the clip length.
      flop = 3 * FORWARD_GFLOP_PER_CLIP[18] * 1e9 * (cfg["width"] / 64) ** 2 * cfg["clip"] / 160000
      rows.append(
        [f"r18 {head}", dtype, "vggsound-jax (jit)", clips, f"{flop * clips / (peak * 1e12):.1%}", f"{peak:.3g}"]
      )
    if _TORCH.value:
      name, seconds = torch_step_seconds(head, cfg)
      rows.append([f"r18 {head}", "", name, cfg["batch"] / seconds, "", ""])
  print_table(
    f"Train step, batch {cfg['batch']}, {cfg['clip'] / 16000:g} s clips, width {cfg['width']}",
    ["model", "dtype", "implementation", "clips/s", "model FLOP utilisation", "peak TFLOP/s"],
    rows,
  )


if __name__ == "__main__":
  app.run(main)
