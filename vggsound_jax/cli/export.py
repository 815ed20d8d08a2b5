"""vggsound-export: a model directory -> its ONNX graph, front end included (vggsound_jax/serving/exported.py, graph.py).

  vggsound-export --checkpoint models/H --output models/H.export [--precision fp32|bf16] [--num_samples 160000]
  vggsound-export --checkpoint models/H --output H.onnx --format onnx

`--format directory` (the default) writes an exported directory that `vggsound-predict --checkpoint
models/H.export` (or `load_classifier`) runs with OpenVINO, needing only openvino and numpy;
`--format onnx` writes one standalone .onnx (int16 audio in, probabilities and embeddings out,
dynamic batch) with the model's metadata in its metadata_props, for ONNX Runtime or any other ONNX
runtime. Both are written to a scratch sibling and renamed into place; `--overwrite` replaces
only what vggsound-export wrote. Every failure is one line on stderr and exit code 1 (`--debug`
shows the traceback instead).
"""

from __future__ import annotations

from absl import app, flags

from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.cli import common
from vggsound_jax.serving import exported

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (vggsound-convert or training output).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to create (--format directory), or a *.onnx file (onnx).")
_FORMAT = flags.DEFINE_enum(
  "format",
  "directory",
  list(exported.FORMATS),
  "directory: an exported directory for vggsound-predict (OpenVINO); onnx: one standalone .onnx file.",
)
_PRECISION = flags.DEFINE_enum(
  "precision",
  exported.DEFAULT_PRECISION,
  list(exported.PRECISIONS),
  "Inference precision recorded with the export (vggsound-predict's default for it; the graph is fp32 "
  "either way): bf16 is the fast path on a CPU with bf16 arithmetic.",
)
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", CLIP_SAMPLES, "Samples per clip the graph takes (16 kHz; default 10 s).", lower_bound=1
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export (never anything else).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metadata = exported.export_model(
    _CHECKPOINT.value,
    _OUTPUT.value,
    precision=_PRECISION.value,
    num_samples=_NUM_SAMPLES.value,
    overwrite=_OVERWRITE.value,
    format=_FORMAT.value,
  )
  config = metadata["model_config"]
  print(
    f"exported {_CHECKPOINT.value} -> {_OUTPUT.value} ({_FORMAT.value}): ResNet-{config['depth']} {config['head']}, "
    f"{len(metadata['class_names'])} classes, clips of {metadata['num_samples']} samples, {metadata['precision']}"
  )


def run() -> None:
  flags.mark_flags_as_required(["checkpoint", "output"])
  common.run_app(main)
