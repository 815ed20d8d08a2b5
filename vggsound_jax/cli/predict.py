"""vggsound-predict: classify audio or video files with a converted or trained model.

  vggsound-predict --checkpoint DIR [--top_k 5] [--batch_size 8] [--output preds.npz] FILE...

Prints the top-k classes of every file. A file that cannot be read is reported with the reason
and skipped; the others are still classified, and the exit code is 1 if any failed.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from absl import app, flags

from vggsound_jax.cli import common

if TYPE_CHECKING:
  import numpy as np

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (converter or training output).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per file.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Clips per forward pass.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Optional .npz with files, probs, embeddings, class_names.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the checkpoint's).")
_DECODE_THREADS = flags.DEFINE_integer("decode_threads", min(8, os.cpu_count() or 1), "Files decoded in parallel.")


def _batches(items: Iterable, size: int) -> Iterator[list]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def main(argv: list[str]) -> None:
  files = argv[1:]
  if not files:
    raise app.UsageError("give at least one FILE to classify")

  # Imported here so that --help stays fast.
  import numpy as np

  from vggsound_jax.audio import AudioDecodeError, load_clip
  from vggsound_jax.inference import Classifier, enable_compilation_cache
  from vggsound_jax.model_dir import load_model

  enable_compilation_cache()
  try:
    model, metadata = load_model(_CHECKPOINT.value, dtype=_DTYPE.value)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  class_names = list(metadata["class_names"])
  classifier = Classifier(model, _BATCH_SIZE.value)
  top_k = min(_TOP_K.value, len(class_names))

  def decode(path: str) -> tuple[str, np.ndarray | None, str | None]:
    try:
      return path, load_clip(path), None
    except AudioDecodeError as e:
      return path, None, e.problem

  done_files, all_probs, all_embeddings, failures = [], [], [], []
  # Decoding runs ahead in threads (PyAV and libsndfile release the GIL) while the model runs.
  with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS.value) as pool:
    for batch in _batches(pool.map(decode, files), _BATCH_SIZE.value):
      for path, _, reason in batch:
        if reason is not None:
          failures.append(path)
          print(f"error: {path}: {reason}", file=sys.stderr)
      good = [(path, clip) for path, clip, reason in batch if reason is None]
      if not good:
        continue
      probs, embeddings = classifier(np.stack([clip for _, clip in good]))
      for (path, _), p in zip(good, probs):
        print(path)
        for i in np.argsort(-p)[:top_k]:
          print(f"  {p[i]:.4f}  {class_names[i]}")
      done_files.extend(path for path, _ in good)
      all_probs.append(probs)
      all_embeddings.append(embeddings)

  if _OUTPUT.value:
    empty = np.zeros((0, len(class_names)), np.float32)
    np.savez(
      _OUTPUT.value,
      files=np.array(done_files, dtype=str),
      probs=np.concatenate(all_probs).astype(np.float32) if all_probs else empty,
      embeddings=(
        np.concatenate(all_embeddings).astype(np.float32)
        if all_embeddings
        else np.zeros((0, model.config.embedding_dim), np.float32)
      ),
      class_names=np.array(class_names, dtype=str),
    )
    print(f"wrote {_OUTPUT.value}")
  if failures:
    print(f"{len(failures)} of {len(files)} files could not be read", file=sys.stderr)
    sys.exit(1)


def run() -> None:
  flags.mark_flag_as_required("checkpoint")
  common.run_app(main)
