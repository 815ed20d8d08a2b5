"""vggsound-export: a model directory -> an OpenVINO graph for fast CPU inference (vggsound_jax/serving/exported.py).

  vggsound-export --checkpoint models/H --output models/H.openvino [--precision fp32|bf16] [--num_samples 160000]

The output runs with `vggsound-predict --checkpoint models/H.openvino` (or `runtime.load_classifier`)
and needs only openvino and numpy. It is written to a scratch sibling and renamed into place;
`--overwrite` replaces only a directory vggsound-export wrote. Every failure is one line on stderr
and exit code 1 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

from absl import app, flags

from vggsound_jax.audio.decode import CLIP_SAMPLES
from vggsound_jax.cli import common
from vggsound_jax.serving import exported

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (vggsound-convert or training output).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to create with the exported model.")
_PRECISION = flags.DEFINE_enum(
  "precision", "fp32", list(exported.PRECISIONS), "Inference precision the runtime compiles the graph for."
)
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", CLIP_SAMPLES, "Samples per clip the graph takes (16 kHz; default 10 s).", lower_bound=1
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing exported model (never anything else).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metadata = exported.export_model(
    _CHECKPOINT.value,
    _OUTPUT.value,
    precision=_PRECISION.value,
    num_samples=_NUM_SAMPLES.value,
    overwrite=_OVERWRITE.value,
  )
  config = metadata["model_config"]
  print(
    f"exported {_CHECKPOINT.value} -> {_OUTPUT.value}: ResNet-{config['depth']} {config['head']}, "
    f"{len(metadata['class_names'])} classes, clips of {metadata['num_samples']} samples, {metadata['precision']}"
  )


def run() -> None:
  flags.mark_flags_as_required(["checkpoint", "output"])
  common.run_app(main)
