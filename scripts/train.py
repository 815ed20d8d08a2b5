"""Train a VGGSound classifier, then evaluate it: the same as `vggsound-train` (vggsound_jax/cli/train.py)."""

from vggsound_jax.cli.train import run

if __name__ == "__main__":
  run()
