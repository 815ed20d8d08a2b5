"""Shapes and building blocks of the Flax ResNet/NetVLAD (parity with PyTorch: test_converter.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vggsound_jax.models import ModelConfig, build_model
from vggsound_jax.models.netvlad import NetVLAD


def test_spatial_sizes_of_a_10s_spectrogram():
  """docs/original_pipeline.md#network: stem 129x502, max-pool 65x251, stages 65x251, 33x126, 17x63, 9x32."""
  model = build_model(ModelConfig(width=4))
  model.eval()
  x = jax.ShapeDtypeStruct((1, 257, 1004, 1), jnp.float32)
  stem = jax.eval_shape(model.conv1, x)
  assert stem.shape[1:3] == (129, 502)
  pooled = jax.eval_shape(lambda y: nnx.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), stem)
  assert pooled.shape[1:3] == (65, 251)
  assert jax.eval_shape(model.features, x).shape == (1, 9, 32, 32)


@pytest.mark.parametrize(
  "depth,head,dim", [(18, "avgpool", 32), (18, "vlad", 16 * 32), (34, "avgpool", 32), (50, "avgpool", 128)]
)
def test_logits_and_embedding_shapes(depth, head, dim):
  config = ModelConfig(depth=depth, head=head, width=4, num_classes=7)
  assert config.embedding_dim == dim
  model = build_model(config)
  model.eval()
  logits, embedding = nnx.jit(lambda m, x: m(x, return_embedding=True))(model, jnp.ones((2, 257, 64, 1)))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert embedding.shape == (2, dim)


def test_vlad_is_only_for_known_heads():
  with pytest.raises(ValueError, match="unknown head"):
    build_model(ModelConfig(width=4, head="attention"))


def test_netvlad_matches_a_step_by_step_numpy_reference():
  """NetVLAD steps 1-6 of docs/original_pipeline.md#network, written out with loops in float64."""
  k, d = 3, 5
  vlad = NetVLAD(k, d, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  vlad.conv.kernel[...] = jnp.asarray(rng.normal(size=(1, 1, d, k)), jnp.float32)
  vlad.conv.bias[...] = jnp.asarray(rng.normal(size=k), jnp.float32)
  x = rng.normal(size=(2, 3, 4, d)).astype(np.float32)
  out = np.asarray(vlad(jnp.asarray(x)))

  c = np.asarray(vlad.centroids[...], np.float64)
  w = np.asarray(vlad.conv.kernel[...], np.float64)[0, 0]
  b = np.asarray(vlad.conv.bias[...], np.float64)
  for n in range(2):
    desc = x[n].reshape(-1, d).astype(np.float64)
    desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    logits = desc @ w + b
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    v = np.zeros((k, d))
    for p in range(desc.shape[0]):
      for j in range(k):
        v[j] += a[p, j] * (desc[p] - c[j])
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    v = v.reshape(-1)  # cluster-major: index j * d + i
    v /= np.maximum(np.linalg.norm(v), 1e-12)
    np.testing.assert_allclose(out[n], v, atol=1e-5)


def test_netvlad_assignment_conv_is_initialised_from_centroids():
  vlad = NetVLAD(4, 6, rngs=nnx.Rngs(0))
  c = np.asarray(vlad.centroids[...])
  np.testing.assert_allclose(np.asarray(vlad.conv.kernel[...])[0, 0], 200.0 * c.T, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(vlad.conv.bias[...]), -100.0 * np.linalg.norm(c, axis=1), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters():
  model = build_model(ModelConfig(width=4, dtype="bfloat16", head="vlad"))
  model.eval()
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 257, 64, 1)))
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(logits)))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_batchnorm_running_statistics_use_pytorch_momentum():
  model = build_model(ModelConfig(width=4))
  model.train()
  x = jax.random.normal(jax.random.key(0), (4, 65, 32, 1)) * 3.0 + 1.0
  stem = model.conv1(x)
  nnx.jit(lambda m, x: m(x))(model, x)
  batch_mean = np.asarray(jnp.mean(stem, axis=(0, 1, 2)))
  # running = 0.9 * running + 0.1 * batch, from running mean 0.
  np.testing.assert_allclose(np.asarray(model.bn1.mean[...]), 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
