"""NetVLAD pooling (Arandjelovic et al.), as the VGGSound release uses it (docs/original_pipeline.md#network)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# The original initialises the assignment conv from the centroids with this sharpness.
ASSIGNMENT_ALPHA = 100.0
# PyTorch's F.normalize divides by max(||v||, 1e-12).
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, NORM_EPS)


class NetVLAD(nnx.Module):
  """(N, H, W, D) descriptors -> (N, K * D) VLAD vector, cluster-major, L2-normalised."""

  def __init__(self, num_clusters: int, dim: int, *, dtype: jnp.dtype | str | None = None, rngs: nnx.Rngs) -> None:
    centroids = jax.random.uniform(rngs.params(), (num_clusters, dim))
    self.centroids = nnx.Param(centroids)
    # The 1x1 assignment conv is its own parameter, only initialised from the centroids.
    self.conv = nnx.Conv(dim, num_clusters, (1, 1), dtype=dtype, rngs=rngs)
    self.conv.kernel[...] = (2.0 * ASSIGNMENT_ALPHA * centroids).T.reshape(1, 1, dim, num_clusters)
    self.conv.bias[...] = -ASSIGNMENT_ALPHA * jnp.linalg.norm(centroids, axis=1)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, _, _, d = x.shape
    x = l2_normalize(x, axis=-1)
    assignment = jax.nn.softmax(self.conv(x).astype(jnp.float32), axis=-1)  # (N, H, W, K)
    x = x.reshape(n, -1, d).astype(jnp.float32)
    assignment = assignment.reshape(n, -1, assignment.shape[-1])
    # sum_p a_k(p) (x_p - c_k) = sum_p a_k(p) x_p - c_k sum_p a_k(p)
    vlad = jnp.einsum("npk,npd->nkd", assignment, x)
    vlad = vlad - self.centroids[...][None] * jnp.sum(assignment, axis=1)[..., None]
    vlad = l2_normalize(vlad, axis=-1)  # intra-normalisation, per cluster
    return l2_normalize(vlad.reshape(n, -1), axis=-1)
