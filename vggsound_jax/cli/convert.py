"""vggsound-convert: a released PyTorch checkpoint (models H and I) -> a model directory.

  vggsound-convert --input vggsound_netvlad.pth.tar --output models/I
  python converters/pytorch_to_flax.py --input vggsound_netvlad.pth.tar --output models/I

Every failure is one line on stderr and exit code 1.
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
  parser.add_argument("--input", required=True, help="PyTorch checkpoint (.pth.tar), legacy or zip format")
  parser.add_argument("--output", required=True, help="model directory to create")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
  args = parser.parse_args(argv)
  if Path(args.output).exists() and not args.overwrite:
    print(f"error: {args.output}: already exists (pass --overwrite to replace it)", file=sys.stderr)
    return 1

  from vggsound_jax.pytorch_conversion import convert  # noqa: PLC0415 - keeps --help fast

  try:
    metadata = convert(args.input, args.output, overwrite=args.overwrite)
  except (ValueError, OSError) as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 1
  except Exception as e:  # noqa: BLE001 - still one line, never a traceback
    print(f"error: {args.input}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
    return 1
  config = metadata["model_config"]
  print(f"converted {args.input} (sha256 {metadata['source']['sha256'][:12]}...) -> {Path(args.output).absolute()}")
  print(f"  ResNet-{config['depth']} {config['head']}, width {config['width']}, {config['num_classes']} classes")
  return 0


def run() -> None:
  sys.exit(main())
