"""The 309 VGGSound class names, in the model's output order.

The original sorts the names it reads from its stat.csv with Python's default `sorted`, so
output index i is the i-th name in that order (docs/original_pipeline.md#labels-and-class-order).
Names are kept verbatim, typos included. Source and licence: data/NOTICE.
"""

from __future__ import annotations

import functools
from importlib import resources

NUM_CLASSES = 309


@functools.cache
def class_names() -> tuple[str, ...]:
  text = resources.files("vggsound_jax").joinpath("data/class_names.txt").read_text("utf-8")
  names = tuple(line for line in text.splitlines() if line)
  assert len(names) == NUM_CLASSES and list(names) == sorted(names), "corrupt class_names.txt"
  return names


def class_index() -> dict[str, int]:
  return {name: i for i, name in enumerate(class_names())}
