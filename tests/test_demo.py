"""The README's main command, with fewer steps: synthetic data, training, evaluation, files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # processes of their own, training: out of the quick loop

REPO = Path(__file__).resolve().parents[1]


def _script(name, *args, cache):
  env = dict(os.environ, JAX_PLATFORMS="cpu", VGGSOUND_JAX_CACHE=str(cache))
  proc = subprocess.run(
    [sys.executable, str(REPO / "scripts" / name), *map(str, args)],
    env=env,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=400,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_demo_trains_to_high_accuracy_and_evaluate_reproduces_it(tmp_path):
  workdir, data_dir = tmp_path / "demo", tmp_path / "data"
  config = REPO / "configs" / "demo.py"
  overrides = [
    f"--config.data.data_dir={data_dir}",
    "--config.num_train_steps=150",
    "--config.checkpoint.save_interval_steps=50",
  ]
  train = _script("train.py", f"--config={config}", f"--workdir={workdir}", *overrides, cache=tmp_path / "cache")

  metrics = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert metrics["top1"] >= 0.9, metrics
  assert metrics["num_clips"] == 96 and metrics["classes_left_out"] == 0
  assert '"top1"' in train.stdout  # the metrics are printed
  for name in ("predictions.npz", "per_class.csv", "per_class_ap.png"):
    assert (workdir / "eval" / "test" / name).is_file()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["100", "150", "50"]
  assert any(p.name.startswith("events.out.tfevents") for p in workdir.iterdir())

  # The exported model, evaluated on its own, gives the same predictions.
  _script(
    "evaluate.py",
    f"--config={config}",
    f"--checkpoint={workdir / 'model'}",
    f"--workdir={tmp_path / 'again'}",
    *overrides,
    cache=tmp_path / "cache",
  )
  first = np.load(workdir / "eval" / "test" / "predictions.npz")
  second = np.load(tmp_path / "again" / "eval" / "test" / "predictions.npz")
  np.testing.assert_array_equal(first["index"], second["index"])
  np.testing.assert_allclose(first["probs"], second["probs"], rtol=1e-4, atol=1e-6)
