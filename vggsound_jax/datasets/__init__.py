"""Data sets: the TFDS builders `vggsound` (configs full, common, synthetic) and `audioset`
(config common: AudioSet segments of the classes shared with VGGSound, for row A).

Importing this package registers the builders with TFDS, so that
`tfds build vggsound --imports vggsound_jax.datasets` and `tfds.builder("vggsound/...")`
find them. Importing it does not import TensorFlow.
"""

from vggsound_jax.datasets.audioset import Audioset
from vggsound_jax.datasets.vggsound import Vggsound

# Not `build`: that name is the module of the shared build machinery (datasets/build.py).
__all__ = ["Audioset", "Vggsound"]
