"""CPU inference benchmarks, side by side with the PyTorch original, in one run.

  python benchmarks/benchmark_inference.py            # the full table (about 10 minutes on 2 cores)
  python benchmarks/benchmark_inference.py --smoke    # tiny shapes, just shows that it runs

Prints: model-only clips/s (JAX fp32 and bf16 vs PyTorch eager fp32 NCHW, channels_last + bf16
autocast, and that under torch.compile), the front end (jnp under jit vs scipy per clip), and
whole-process predict on wav files (scripts/predict.py vs the original's way: scipy front end +
eager PyTorch, batch 32). Ratios are measured in the same run, since these machines are noisy.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from benchmark_utils import REPO, machine, print_table, seconds_per_call

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model, 1 s clips, one repeat: shows the script runs.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8", "32"], "Model-only batch sizes.")
_HEADS = flags.DEFINE_list("heads", ["avgpool", "vlad"], "Heads of ResNet-18 to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per figure (median).")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", True, "Also measure torch.compile.")
_PREDICT_FILES = flags.DEFINE_integer("predict_files", 64, "Wav files for whole-process predict.")
_SECTIONS = flags.DEFINE_list("sections", ["model", "frontend", "predict"], "What to measure.")

ORIGINAL_PREDICT = """
import sys, time
import numpy as np, soundfile as sf, scipy.signal, torch
from vggsound_jax.testing import torch_reference
ckpt, files = sys.argv[1], sys.argv[2:]
model = torch_reference.build_torch_model({depth}, {head!r}, width={width})
state = torch.load(ckpt, map_location="cpu", weights_only=False)["model_state_dict"]
torch_reference.load_release_state_dict(model, state)
model.eval()
def spectrogram(path):  # the original's front end, per clip
    samples, rate = sf.read(path, dtype="int16")
    samples = np.tile(samples, 10)[:{clip}] / 32768.0
    samples[samples > 1.] = 1.
    samples[samples < -1.] = -1.
    _, _, s = scipy.signal.spectrogram(samples, rate, nperseg=512, noverlap=353)
    s = np.log(s + 1e-7)
    return (s - np.mean(s)) / (np.std(s) + 1e-9)
with torch.no_grad():
    for i in range(0, len(files), 32):
        x = np.stack([spectrogram(f) for f in files[i:i + 32]])[:, None]
        probs = torch.softmax(model(torch.from_numpy(x).float()), dim=1)
        for f, p in zip(files[i:i + 32], probs.numpy()):
            print(f, int(p.argmax()), float(p.max()))
"""


def _audio_batch(n, num_samples, seed=0):
  """Tones in noise with random pitch: spectrograms with structure, unlike white noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / 16000
  freqs = rng.uniform(100, 4000, size=(n, 1))
  x = 0.3 * np.sin(2 * np.pi * freqs * t) + rng.normal(0, 0.05, (n, num_samples))
  return np.clip(x * 32767, -32768, 32767).astype(np.int16)


def bench_model(cfg, rows):
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  from vggsound_jax.pytorch_conversion import flax_model_from_state_dict
  from vggsound_jax.spectrogram import log_spectrogram
  from vggsound_jax.testing import torch_reference

  for head in _HEADS.value:
    torch_model = torch_reference.build_torch_model(18, head, width=cfg["width"])
    torch_reference.randomize_(torch_model, seed=0)
    torch_model.eval()
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    flax_fp32 = flax_model_from_state_dict(state_dict)
    flax_bf16 = flax_model_from_state_dict(state_dict, dtype="bfloat16")
    for batch in cfg["batch_sizes"]:
      audio = _audio_batch(batch, cfg["clip"])
      spec = np.asarray(log_spectrogram(audio))[:, :, :, None]  # NHWC
      results = {}
      for name, model in (("jax fp32", flax_fp32), ("jax bf16", flax_bf16)):
        model.eval()
        graphdef, state = nnx.split(model)
        fwd = jax.jit(lambda s, x, g=graphdef, d=model.config.dtype: nnx.merge(g, s)(x.astype(d)))
        x = jnp.asarray(spec)
        results[name] = seconds_per_call(lambda: fwd(state, x).block_until_ready(), repeats=cfg["repeats"])
        results[name + " logits"] = np.asarray(fwd(state, x))
      nchw = torch.from_numpy(spec.transpose(0, 3, 1, 2).copy())
      with torch.no_grad():
        results["torch eager fp32"] = seconds_per_call(lambda: torch_model(nchw), repeats=cfg["repeats"])
        cl_model = torch_reference.build_torch_model(18, head, width=cfg["width"])
        cl_model.load_state_dict(torch_model.state_dict())
        cl_model = cl_model.eval().to(memory_format=torch.channels_last)
        cl_input = nchw.contiguous(memory_format=torch.channels_last)

        def call(m, bf16):
          with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return m(cl_input)

        runners = {"torch cl fp32": (cl_model, False), "torch cl+bf16": (cl_model, True)}
        if cfg["torch_compile"]:
          runners["torch cl fp32+compile"] = (torch.compile(cl_model), False)
          runners["torch cl+bf16+compile"] = (torch.compile(cl_model), True)
        for name, (runner, bf16) in runners.items():
          start = time.perf_counter()
          call(runner, bf16)  # compiles, for the compiled ones
          if "compile" in name:
            print(f"{name}: compiling took {time.perf_counter() - start:.0f} s", flush=True)
          results[name] = seconds_per_call(lambda: call(runner, bf16), repeats=cfg["repeats"])
      agreement = np.mean(results["jax fp32 logits"].argmax(1) == results["jax bf16 logits"].argmax(1))
      eager = results["torch eager fp32"]
      torch_names = [k for k in results if k.startswith("torch")]
      best_torch = min(results[k] for k in torch_names)
      for name in ["jax fp32", "jax bf16"] + torch_names:
        rows.append(
          [
            f"r18 {head}",
            batch,
            name,
            batch / results[name],
            eager / results[name],
            best_torch / results[name],
            f"{agreement:.3f}" if name == "jax bf16" else "",
          ]
        )


def bench_frontend(cfg, rows):
  import jax
  import scipy.signal

  from vggsound_jax.spectrogram import log_spectrogram

  batch = cfg["frontend_batch"]
  audio = _audio_batch(batch, cfg["clip"])
  fn = jax.jit(log_spectrogram)
  jnp_s = seconds_per_call(lambda: fn(audio).block_until_ready(), repeats=cfg["repeats"])

  def scipy_per_clip():
    for clip in audio:
      x = np.clip(clip / 32768.0, -1, 1)
      _, _, s = scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353)
      s = np.log(s + 1e-7)
      (s - s.mean()) / (s.std() + 1e-9)

  scipy_s = seconds_per_call(scipy_per_clip, repeats=cfg["repeats"])
  rows.append(["jnp log_spectrogram (jit, batched)", batch, batch / jnp_s, scipy_s / jnp_s])
  rows.append(["scipy per clip (original)", batch, batch / scipy_s, 1.0])


def bench_predict(cfg, rows):
  import soundfile as sf
  import torch

  from vggsound_jax.testing import torch_reference

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    audio = _audio_batch(cfg["predict_files"], cfg["clip"])
    files = []
    for i, clip in enumerate(audio):
      files.append(str(tmp / f"clip{i:03d}.wav"))
      sf.write(files[-1], clip, 16000, subtype="PCM_16")
    model = torch_reference.build_torch_model(18, "avgpool", width=cfg["width"])
    torch_reference.randomize_(model, seed=0)
    ckpt = tmp / "vggsound_avgpool.pth.tar"
    torch_reference.save_release_style(model, ckpt, legacy=True)
    subprocess.run(
      [
        sys.executable,
        str(REPO / "converters/pytorch_to_flax.py"),
        "--input",
        str(ckpt),
        "--output",
        str(tmp / "converted"),
      ],
      check=True,
      capture_output=True,
    )
    script = tmp / "original_predict.py"
    script.write_text(
      textwrap.dedent(ORIGINAL_PREDICT.format(depth=18, head="avgpool", width=cfg["width"], clip=cfg["clip"]))
    )

    def run(cmd, env=None):
      start = time.perf_counter()
      subprocess.run(cmd, check=True, capture_output=True, env=env)
      return time.perf_counter() - start

    import os

    env = dict(os.environ, VGGSOUND_JAX_CACHE=str(tmp / "jax_cache"))
    predict = [
      sys.executable,
      str(REPO / "scripts/predict.py"),
      "--checkpoint",
      str(tmp / "converted"),
      "--top_k",
      "1",
    ] + files  # its default batch size
    cold = run(predict, env)
    warm = min(run(predict, env) for _ in range(cfg["repeats"]))
    original = min(run([sys.executable, str(script), str(ckpt)] + files) for _ in range(cfg["repeats"]))
    del torch
    n = len(files)
    rows.append(["original way (scipy + eager PyTorch, batch 32)", n, original, 1.0])
    rows.append(["scripts/predict.py (batch 8), compilation cache warm", n, warm, original / warm])
    rows.append(["scripts/predict.py, first run (compiles)", n, cold, original / cold])


def main(argv):
  del argv
  cfg = {
    "width": 64,
    "clip": 160000,
    "repeats": _REPEATS.value,
    "batch_sizes": [int(b) for b in _BATCH_SIZES.value],
    "torch_compile": _TORCH_COMPILE.value,
    "predict_files": _PREDICT_FILES.value,
    "frontend_batch": 32,
  }
  if _SMOKE.value:
    cfg.update(width=4, clip=16000, repeats=1, batch_sizes=[2], torch_compile=False, predict_files=4, frontend_batch=4)
  clip = f"{cfg['clip'] / 16000:g} s clips"
  print(f"# CPU inference benchmark\n\n{machine()}")
  if "model" in _SECTIONS.value:
    rows = []
    bench_model(cfg, rows)
    print_table(
      f"Model only, ResNet-18 width {cfg['width']}, {clip} (ratios: higher is faster)",
      ["model", "batch", "implementation", "clips/s", "x eager fp32", "x fastest PyTorch", "bf16 top-1 agreement"],
      rows,
    )
  if "frontend" in _SECTIONS.value:
    rows = []
    bench_frontend(cfg, rows)
    print_table(f"Front end, {clip}", ["implementation", "clips", "clips/s", "x scipy"], rows)
  if "predict" in _SECTIONS.value:
    rows = []
    bench_predict(cfg, rows)
    print_table(
      f"Whole-process predict, {clip} in wav files (wall seconds, with start-up)",
      ["way", "files", "seconds", "x original"],
      rows,
    )


if __name__ == "__main__":
  app.run(main)
