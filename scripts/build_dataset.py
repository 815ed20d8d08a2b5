"""Build the TFDS data set vggsound: the same as `vggsound-build` (vggsound_jax/cli/build.py)."""

from vggsound_jax.cli.build import run

if __name__ == "__main__":
  run()
