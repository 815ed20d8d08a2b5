"""Export a model directory to its ONNX graph: the same as `vggsound-export` (vggsound_jax/cli/export.py)."""

from vggsound_jax.cli.export import run

if __name__ == "__main__":
  run()
