"""Models with random parameters drawn by numpy, for tests: no initializer is compiled.

Initialising through JAX compiles every initializer (each shape its own program, or one large
program under jit), which takes many seconds on a small CPU; tests that only need some random
values of the right shapes take them from here instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggsound_jax.models import ModelConfig, build_model


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.1) -> nnx.Module:
  """The model of `config`, every parameter drawn from N(0, std²), in eval mode."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, std, x.shape).astype(x.dtype)), abstract)
  model = nnx.merge(graphdef, state)
  model.eval()
  return model


def with_unit_statistics(model: nnx.Module) -> nnx.Module:
  """`model` with every BatchNorm's running mean 0 and variance 1 (random draws can be negative):
  activations of a random model then neither vanish nor blow up, and its embeddings tell sounds apart."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.BatchNorm):
      module.mean[...], module.var[...] = jnp.zeros_like(module.mean[...]), jnp.ones_like(module.var[...])
  return model
