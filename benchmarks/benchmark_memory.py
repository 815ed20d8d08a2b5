"""Peak memory of CPU evaluation over a long stream of clips: it must stay flat.

  python benchmarks/benchmark_memory.py                      # 256, 1024 and 4096 clips
  python benchmarks/benchmark_memory.py --smoke

Each length runs in a fresh process (the real eval loader, eval step and metrics over a source
that makes its clips on demand, so the data itself takes no memory) and reports its peak RSS.
What may grow is only the kept predictions: N x 309 float32, 1.2 kB a clip.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np
from absl import app, flags
from benchmark_utils import machine, print_table

_SMOKE = flags.DEFINE_bool("smoke", False, "Short stream, tiny model.")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "4096"], "Numbers of clips.")
_WIDTH = flags.DEFINE_integer("width", 16, "ResNet-18 width (64 is the paper's; memory is what counts here).")
_CHILD = flags.DEFINE_integer("child", 0, "Internal: run one evaluation of this many clips.")
_BATCH = 32
NUM_CLASSES = 309


class GeneratedClips:
  """A random-access source whose clips are made on demand: the stream costs no memory."""

  def __init__(self, length: int, num_samples: int):
    self.length, self.num_samples = length, num_samples

  def __len__(self):
    return self.length

  def __getitem__(self, index):
    rng = np.random.default_rng(index)
    audio = rng.integers(-4000, 4000, self.num_samples, dtype=np.int16)
    return {"audio": audio, "label": index % NUM_CLASSES}

  def __repr__(self):
    return f"GeneratedClips({self.length}, {self.num_samples})"


def child(length: int, width: int, num_samples: int) -> dict:
  import jax

  from vggsound_jax import evaluation, input_pipeline, metrics, sharding
  from vggsound_jax.models import ModelConfig, build_model, split_model

  mesh = sharding.make_mesh()
  model = build_model(ModelConfig(width=width))
  model.eval()
  graphdef, state = split_model(model)
  eval_step = evaluation.make_eval_step(graphdef, mesh)
  batches = input_pipeline.eval_batches(
    GeneratedClips(length, num_samples),
    global_batch_size=_BATCH,
    rows=sharding.process_rows(mesh, _BATCH),
    num_samples=num_samples,
  )
  predictions = evaluation.predict(eval_step, jax.device_put(state, sharding.replicated(mesh)), batches, mesh)
  streaming_peak = _peak_rss_mb()
  scores = metrics.compute_metrics(predictions["probs"], predictions["labels"])
  return {
    "clips": len(predictions["probs"]),
    "top1": scores["top1"],
    "streaming_peak_mb": streaming_peak,
    "peak_rss_mb": _peak_rss_mb(),
  }


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  num_samples = 16000 if _SMOKE.value else 160000
  width = 4 if _SMOKE.value else _WIDTH.value
  if _CHILD.value:
    print(json.dumps(child(_CHILD.value, width, num_samples)))
    return
  lengths = [64, 128] if _SMOKE.value else [int(n) for n in _LENGTHS.value]
  print(f"# Evaluation memory benchmark\n\n{machine()}")
  rows = []
  for n in lengths:
    cmd = [sys.executable, __file__, f"--child={n}", f"--width={width}"] + (["--smoke"] if _SMOKE.value else [])
    out = (
      subprocess.run(cmd, check=True, capture_output=True, text=True, encoding="utf-8").stdout.strip().splitlines()[-1]
    )
    result = json.loads(out)
    rows.append([n, result["clips"], result["streaming_peak_mb"], result["peak_rss_mb"], n * NUM_CLASSES * 4 / 2**20])
  growth = (rows[-1][2] - rows[-2][2]) / (lengths[-1] - lengths[-2]) * 1024
  print_table(
    f"Peak RSS of evaluation, ResNet-18 width {width}, {num_samples / 16000:g} s clips, batch {_BATCH}",
    [
      "clips in stream",
      "clips evaluated",
      "peak RSS, streaming (MB)",
      "peak RSS, with metrics (MB)",
      "predictions kept (MB)",
    ],
    rows,
  )
  print(
    f"\nstreaming growth between the two longest streams: {growth:.2f} kB per clip "
    f"(the kept predictions alone are {NUM_CLASSES * 4 / 1024:.2f} kB)"
  )


if __name__ == "__main__":
  app.run(main)
