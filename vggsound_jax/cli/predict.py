"""vggsound-predict: tag audio or video files of any length with a converted, trained or exported model.

  vggsound-predict --checkpoint DIR [--top_k 5] [--window 10] [--hop 10] [--backend auto]
                   [--precision fp32|bf16]
                   [--output preds.{npz,csv,jsonl}] [--plot DIR [--plot_classes 10]] FILE...

Prints the top-k classes of every file: of its one window for a clip of up to 10 s (exactly the
original's prediction), or of the mean over its windows for a longer recording, with each
window's top class. Windows and summaries: vggsound_jax/serving/tagger.py; results files:
vggsound_jax/serving/prediction_files.py. A file that cannot be read (or whose outputs are not finite) is
reported with the reason and skipped; the others are still tagged, and the exit code is 1 if
any failed. Any file name works, also one that is not valid UTF-8.

`--output` is checked before any work and written as results come, to `OUTPUT.partial`, renamed
to OUTPUT at the end: a killed run keeps every result so far. Memory stays flat in the number
and the length of files: decoding streams each file a few windows ahead of the model.

`--plot DIR` writes one picture per file as it is tagged, DIR/NAME.png (`plots.timeline_paths`,
checked before any work): the recording's spectrogram above the probabilities over time of its
top classes (`plots.timeline_figure`), the same size and memory for a clip and for hours.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from absl import app, flags

from vggsound_jax.cli import common
from vggsound_jax.serving import exported

if TYPE_CHECKING:
  from vggsound_jax.serving.prediction_files import _Arrays, _Rows
  from vggsound_jax.serving.tagger import Tags

_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "Model directory (converter or training output), or an exported model (vggsound-export)."
)
_TOP_K = flags.DEFINE_integer(
  "top_k", 5, "How many classes to print (and write to .csv/.jsonl) per file or window.", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Windows per forward pass.", lower_bound=1)
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "Optional results file, written as it goes; its extension picks the format: .npz (probabilities and "
  "embeddings per file and per window), .csv (one row per window, then the mean and max rows of the file) or "
  ".jsonl (one line per file with its windows).",
)
_WINDOW = flags.DEFINE_float("window", 10.0, "Seconds the model sees at once.")
_HOP = flags.DEFINE_float("hop", None, "Seconds from one window to the next (default: --window, no overlap).")
_BACKEND = flags.DEFINE_string(
  "backend", "auto", "Inference backend: auto (the fastest available on this machine), jax, openvino."
)
_PRECISION = flags.DEFINE_enum(
  "precision",
  None,
  list(exported.PRECISIONS),
  "Inference precision (default: the model's, or the export's): bf16 is the fast path on a CPU with bf16 "
  "arithmetic (AVX-512 BF16 or AMX); on one without, it runs fp32 and says so.",
)
_PLOT = flags.DEFINE_string(
  "plot",
  None,
  "Optional folder for one timeline picture per file, NAME.png: the recording's spectrogram above the "
  "probabilities over time of the --plot_classes classes with the highest maximum over windows.",
)
_PLOT_CLASSES = flags.DEFINE_integer(
  "plot_classes", 10, "Classes (rows) in each --plot picture (the picture keeps at most 40).", lower_bound=1
)
_DECODE_THREADS = flags.DEFINE_integer("decode_threads", None, "Files decoded in parallel (default: up to 8).")


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(seconds, 60)
  return f"{int(minutes)}:{seconds:05.2f}"


def _print(tags: Tags, top_k: int) -> None:
  print(tags.source)
  windows = len(tags.starts)
  if windows > 1 and tags.class_names:
    for start, end, probs in zip(tags.starts, tags.ends, tags.window_probs):
      ((label, prob),) = tags.top(1, probs)
      print(f"  [{_clock(start)}-{_clock(end)}] {prob:.4f}  {label}")
    print(f"  mean over {windows} windows of {_clock(tags.duration)}:")
  for label, prob in tags.top(top_k):
    print(f"  {prob:.4f}  {label}")


def _console_safe() -> None:
  """Names that are not valid UTF-8 (or not valid in the console's encoding) print escaped."""
  for stream in (sys.stdout, sys.stderr):
    if hasattr(stream, "reconfigure"):
      stream.reconfigure(errors="backslashreplace")


def main(argv: list[str]) -> None:
  files = argv[1:]
  if not files:
    raise app.UsageError("give at least one FILE to classify")
  _console_safe()
  writer = None
  if _OUTPUT.value:
    from vggsound_jax.serving.prediction_files import open_output  # imports numpy: keep --help fast

    writer = open_output(_OUTPUT.value, _TOP_K.value)
  pictures = None
  if _PLOT.value:
    from vggsound_jax.plots import timeline_paths

    pictures = timeline_paths(_PLOT.value, files)
  try:
    failed = _tag(files, writer, pictures)
  except BaseException:
    if writer is not None:
      if writer.count:
        print(f"stopped: the {writer.count} results so far are kept in {writer.partial}", file=sys.stderr)
      else:
        writer.discard()
    raise
  if writer is not None:
    writer.finish()
    print(f"wrote {writer.output}")
  if failed:
    print(f"{failed} of {len(files)} files could not be classified", file=sys.stderr)
    sys.exit(1)


def _tag(files: Sequence[str], writer: _Rows | _Arrays | None, pictures: Sequence[Path] | None) -> int:
  """Tags `files`, printing, writing and plotting as it goes; returns how many failed."""
  from vggsound_jax.serving.tagger import Tagger  # keeps --help fast

  tagger = Tagger(
    _CHECKPOINT.value,
    backend=_BACKEND.value,
    batch_size=_BATCH_SIZE.value,
    window=_WINDOW.value,
    hop=_HOP.value,
    precision=_PRECISION.value,
    decode_threads=_DECODE_THREADS.value,
    spectrogram=pictures is not None,
  )
  if tagger.backend == "jax":  # JAX compiles on the first call; the other backends never import it
    from vggsound_jax.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
  if writer is not None:
    writer.begin(tagger.class_names, tagger.embedding_dim)
  failed, done = 0, []
  for i, result in enumerate(tagger.tag_files(files, errors="return")):
    if isinstance(result, Exception):
      failed += 1
      print(f"error: {result}", file=sys.stderr)
      continue
    _print(result, _TOP_K.value)
    if pictures is not None:
      print(f"  timeline: {result.plot(pictures[i], k=_PLOT_CLASSES.value)}")
    done.append(result)
    if writer is not None and len(done) >= _BATCH_SIZE.value:
      writer.write(done)
      done = []
  if writer is not None and done:
    writer.write(done)
  return failed


def run() -> None:
  flags.mark_flag_as_required("checkpoint")
  common.run_app(main)
