"""The benchmark scripts start and print their tables (tiny shapes; no figure is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes of their own, training: out of the quick loop

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
  "command,expected",
  [
    (["benchmark_inference.py", "--smoke"], ["## Model only", "## Front end", "## Whole-process predict"]),
    (["benchmark_train.py", "--smoke", "--dtypes=float32", "--heads=vlad"], ["## Train step", "r18 vlad"]),
    (["benchmark_memory.py", "--smoke"], ["## Peak RSS of evaluation", "streaming growth"]),
    (
      [
        "benchmark_data.py",
        "--num_clips=4",
        "--format=wav",
        "--build_workers=1",
        "--loader_workers=0",
        "--batches=2",
        "--batch_size=2",
      ],
      ["clips/s"],
    ),
    (
      ["benchmark_probe.py", "--num_clips=100", "--seconds=1", "--width=8", "--build_workers=1"],
      ["## 5-fold linear probe", "probe total"],
    ),
    (
      ["decoding_agreement.py", "--seconds=0.3", "--timing_seconds=1", "--timing_repeats=1"],
      ["## Agreement with the ffmpeg command line"],
    ),
  ],
)
def test_benchmark_runs(command, expected, tmp_path):
  result = subprocess.run(
    [sys.executable, str(BENCHMARKS / command[0]), *command[1:]],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for text in expected:
    assert text in result.stdout, result.stdout
