"""Converts a VGGSound PyTorch checkpoint to a model directory: the same as `vggsound-convert`.

  python converters/pytorch_to_flax.py --input vggsound_netvlad.pth.tar --output models/I

The conversion itself is `vggsound_jax.conversion.resnet`.
"""

from vggsound_jax.cli.convert import run

if __name__ == "__main__":
  run()
