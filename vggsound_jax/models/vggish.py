"""VGGish (Hershey et al., ICASSP 2017; Google's AudioSet release) with a classifier, for rows A-C
(docs/original_pipeline.md#vggish-rows-ac).

The network is Google's `vggish_slim.py`, layer for layer: on a 96 x 64 log-mel patch, six 3 x 3
convolutions (64, 128, 256, 256, 512, 512 channels, stride 1, SAME padding, bias, ReLU) with a
2 x 2 max-pool after the 1st, 2nd, 4th and 6th, then the (6, 4, 512) map flattened in
(height, width, channel) order, two fully connected layers of 4096 with ReLU and the 128-d
embedding `fc2`. Module names are the TF checkpoint's scopes (`conv3_1`, `fc1_2`, ...), so
the converter maps both released forms one to one.

On top, for VGGSound: a clip's patches are embedded one by one, their embeddings pooled over
the clip (`ModelConfig.patch_aggregation`: "mean" or "max") and a linear `classifier` gives
the clip's logits. The VGGSound authors never said how they classified with VGGish; this
head is the project's choice, as is pooling the embeddings (for the default "mean" it is the
same as averaging the patches' logits, Hershey et al.'s clip-level evaluation, because the
classifier is linear). With `num_classes = 0` there is no classifier: a converted release
model, whose outputs are its embeddings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vggsound_jax.audio.vggish_frontend import NUM_MEL_BANDS, PATCH_FRAMES
from vggsound_jax.models.config import VGGISH_EMBEDDING_SIZE, ModelConfig

# (name, channels as a multiple of the config's width, max-pool after it); width 64 is VGGish's.
CONV_LAYERS = (
  ("conv1", 1, True),
  ("conv2", 2, True),
  ("conv3_1", 4, False),
  ("conv3_2", 4, True),
  ("conv4_1", 8, False),
  ("conv4_2", 8, True),
)
HIDDEN_LAYERS = ("fc1_1", "fc1_2")
EMBEDDING_LAYER = "fc2"
EMBEDDING_SIZE = VGGISH_EMBEDDING_SIZE
NUM_POOLS = sum(pool for _, _, pool in CONV_LAYERS)
# Spatial size of the last feature map: 96 x 64 halved four times is 6 x 4.
FINAL_HEIGHT = PATCH_FRAMES >> NUM_POOLS
FINAL_WIDTH = NUM_MEL_BANDS >> NUM_POOLS
PATCH_AGGREGATIONS = ("mean", "max")
# Google's init (vggish_params.INIT_STDDEV): truncated normal weights, zero biases.
INIT_STDDEV = 0.01
_init = nnx.initializers.truncated_normal(stddev=INIT_STDDEV)


class VGGish(nnx.Module):
  """(N, P, 96, 64, 1) log-mel patches -> clip logits (N, num_classes), float32."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
    if config.patch_aggregation not in PATCH_AGGREGATIONS:
      raise ValueError(
        f"unknown patch_aggregation {config.patch_aggregation!r}: expected one of {', '.join(PATCH_AGGREGATIONS)}"
      )
    self.config = config
    dtype = jnp.dtype(config.dtype)
    cin = 1
    for name, multiple, _ in CONV_LAYERS:
      cout = multiple * config.width
      conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", kernel_init=_init, dtype=dtype, rngs=rngs)
      setattr(self, name, conv)
      cin = cout
    features = FINAL_HEIGHT * FINAL_WIDTH * cin
    for name in HIDDEN_LAYERS:
      setattr(self, name, nnx.Linear(features, config.fc_width, kernel_init=_init, dtype=dtype, rngs=rngs))
      features = config.fc_width
    self.fc2 = nnx.Linear(features, EMBEDDING_SIZE, kernel_init=_init, dtype=dtype, rngs=rngs)
    self.classifier = (
      nnx.Linear(EMBEDDING_SIZE, config.num_classes, kernel_init=_init, dtype=dtype, rngs=rngs)
      if config.num_classes
      else None
    )

  def patch_embeddings(self, patches: jax.Array) -> jax.Array:
    """(..., 96, 64, 1) patches -> (..., 128) embeddings, one per patch, as Google's model gives."""
    batch_shape = patches.shape[:-3]
    x = patches.reshape((-1,) + patches.shape[-3:])
    for name, _, pool in CONV_LAYERS:
      x = nnx.relu(getattr(self, name)(x))
      if pool:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)  # NHWC: (height, width, channel) order, as TF's flatten
    for name in HIDDEN_LAYERS:
      x = nnx.relu(getattr(self, name)(x))
    x = self.fc2(x)
    if self.config.embedding_relu:
      x = nnx.relu(x)
    return x.reshape(batch_shape + (EMBEDDING_SIZE,))

  def embed(self, patches: jax.Array) -> jax.Array:
    """(N, P, 96, 64, 1) -> (N, 128): the patches' embeddings pooled over the clip."""
    embeddings = self.patch_embeddings(patches)
    if self.config.patch_aggregation == "max":
      return jnp.max(embeddings, axis=1)
    return jnp.mean(embeddings, axis=1)

  def __call__(self, patches: jax.Array, *, return_embedding: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Logits (N, num_classes) in float32, and the clip embedding (N, 128) too if asked."""
    embedding = self.embed(patches)
    if self.classifier is None:
      logits = jnp.zeros(embedding.shape[:1] + (0,), jnp.float32)
    else:
      logits = self.classifier(embedding).astype(jnp.float32)
    if return_embedding:
      return logits, embedding.astype(jnp.float32)
    return logits
