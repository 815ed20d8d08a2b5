"""Classify audio or video files: the same as `vggsound-predict` (vggsound_jax/cli/predict.py)."""

from vggsound_jax.cli.predict import run

if __name__ == "__main__":
  run()
