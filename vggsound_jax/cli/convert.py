"""vggsound-convert: a released PyTorch checkpoint (models H and I) -> a model directory.

  vggsound-convert --input vggsound_netvlad.pth.tar --output models/I
  vggsound-convert --input vggish_model.ckpt --output models/vggish   # or vggish-10086976.pth
  python converters/pytorch_to_flax.py --input vggsound_netvlad.pth.tar --output models/I

Every failure is one line on stderr and exit code 1 (`--debug` shows the traceback instead);
library logs are hidden unless `--verbosity` is given. The output is written to a scratch
sibling and renamed into place; `--overwrite` replaces only a model directory this project
wrote, never another directory or file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _one_line(e: Exception) -> str:
  return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="vggsound-convert",
    description="Convert a VGGSound PyTorch checkpoint (.pth.tar) to a vggsound-jax model directory.",
  )
  parser.add_argument(
    "--input",
    required=True,
    help="PyTorch checkpoint (.pth.tar), legacy or zip format; or VGGish's vggish_model.ckpt or vggish-10086976.pth",
  )
  parser.add_argument("--output", required=True, help="model directory to create")
  parser.add_argument(
    "--overwrite", action="store_true", help="replace an existing model directory (never anything else)"
  )
  parser.add_argument(
    "--verbosity", type=int, default=None, help="show library logs (0: INFO and up), as the other commands"
  )
  parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
  args = parser.parse_args(argv)

  # Imported here so that --help stays fast.
  from vggsound_jax.cli.common import quiet_library_logs
  from vggsound_jax.conversion import convert

  quiet_library_logs(verbose=args.verbosity is not None)
  if args.verbosity is not None:
    from absl import logging

    logging.set_verbosity(args.verbosity)  # absl's convention: 0 is INFO, 1 DEBUG
  try:
    metadata = convert(args.input, args.output, overwrite=args.overwrite)
  except Exception as e:  # noqa: BLE001 - one line, never a traceback, unless --debug
    if args.debug:
      raise
    message = (
      _one_line(e) if isinstance(e, (ValueError, OSError)) else f"{args.input}: {type(e).__name__}: {_one_line(e)}"
    )
    print(f"error: {message}", file=sys.stderr)
    return 1
  config = metadata["model_config"]
  print(f"converted {args.input} (sha256 {metadata['source']['sha256'][:12]}...) -> {Path(args.output).absolute()}")
  if config.get("arch") == "vggish":
    print(f"  VGGish, width {config['width']}, fc width {config['fc_width']}, 128-d embeddings, no classifier")
  else:
    print(f"  ResNet-{config['depth']} {config['head']}, width {config['width']}, {config['num_classes']} classes")
  return 0


def run() -> None:
  sys.exit(main())
