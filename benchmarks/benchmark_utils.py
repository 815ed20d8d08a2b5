"""Shared pieces of the benchmark scripts: timing, the machine's description, the table."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def seconds_per_call(fn, *, repeats: int = 3, warmup: int = 1) -> float:
  """Median wall seconds of `fn()` (which must block until its work is done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import jax

  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (
    f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {devices}; "
    f"python {platform.python_version()}; {datetime.date.today().isoformat()}"
  )


def print_table(title: str, header: list[str], rows: list[list]) -> None:
  cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  print(f"\n## {title}\n")
  for i, row in enumerate(cells):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    if i == 0:
      print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  sys.stdout.flush()
