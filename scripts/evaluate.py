"""Evaluate a trained run or a model directory: the same as `vggsound-evaluate` (vggsound_jax/cli/evaluate.py)."""

from vggsound_jax.cli.evaluate import run

if __name__ == "__main__":
  run()
