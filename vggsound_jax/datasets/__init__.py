"""Data sets: the TFDS builder `vggsound` (configs full, common, synthetic).

Importing this package registers the builder with TFDS, so that
`tfds build vggsound --imports vggsound_jax.datasets` and `tfds.builder("vggsound/...")`
find it. Importing it does not import TensorFlow.
"""

from vggsound_jax.datasets.vggsound import Vggsound, build

__all__ = ["Vggsound", "build"]
