"""JAX/Flax reimplementation of the VGGSound audio classifier.

`vggsound_jax.Tagger` tags audio files and waveforms (vggsound_jax/serving/tagger.py).
"""

from typing import Any


def __getattr__(name: str) -> Any:
  # Lazily, so that `import vggsound_jax.labels` (and every command's --help) stays light.
  if name == "Tagger":
    from vggsound_jax.serving.tagger import Tagger

    return Tagger
  raise AttributeError(f"module 'vggsound_jax' has no attribute {name!r}")
