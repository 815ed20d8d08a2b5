"""A model's variables as one pytree, apart from its static structure.

Everywhere the project holds a model's variables (the train state, the eval step, the
model directory on disk) they have the one shape `ModelState`:
`{"params": nnx.State, "batch_stats": nnx.State}`, the trainable parameters and the
BatchNorm running statistics. `split_model` and `merge_model` go between it and a module.
"""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx

from vggsound_jax.models.config import ModelConfig
from vggsound_jax.models.factory import Network, build_model

ModelState = dict  # {"params": nnx.State, "batch_stats": nnx.State}


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, ModelState]:
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
  return graphdef, {"params": params, "batch_stats": batch_stats}


def merge_model(graphdef: nnx.GraphDef, state: ModelState) -> Network:
  return nnx.merge(graphdef, state["params"], state["batch_stats"])


class GraphDefs(NamedTuple):
  """The static structure of a model in train mode (batch statistics) and eval mode (running)."""

  train: nnx.GraphDef
  eval: nnx.GraphDef


def graphdefs(config: ModelConfig) -> GraphDefs:
  abstract = nnx.eval_shape(lambda: build_model(config))  # shapes only: no random init
  abstract.train()
  train = nnx.graphdef(abstract)
  abstract.eval()
  return GraphDefs(train, nnx.graphdef(abstract))


def abstract_model_state(config: ModelConfig) -> ModelState:
  """The shapes and dtypes of a model's state, for restoring into."""
  return split_model(nnx.eval_shape(lambda: build_model(config)))[1]
