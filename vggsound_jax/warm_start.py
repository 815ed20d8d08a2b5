"""Starting a run from the parameters of a model directory (`config.init_from`).

Rows A and B fine-tune VGGish from its released weights: convert them once
(`vggsound-convert --input vggish_model.ckpt --output models/vggish`), and the run starts from
that directory instead of a random init. Every array of the directory must exist in the run's
model with the same shape; the run's arrays the directory lacks (a converted VGGish has no
classifier) keep their random init, and the command says which. The optimizer state is
untouched: it starts at zero whatever the parameters are.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

from vggsound_jax.errors import ConfigError
from vggsound_jax.model_dir import load_model
from vggsound_jax.models import ModelState, split_model

FIELD = "init_from"


def _path(path: tuple) -> str:
  return ".".join(map(str, path))


def _placed_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """`value` as a global array with the sharding and dtype of `like` (any number of processes:
  each process fills only its own shards, from its own copy of the directory)."""
  value = np.asarray(value, like.dtype)
  return jax.make_array_from_callback(like.shape, like.sharding, lambda index: value[index])


def load_into(
  model_state: ModelState, source: ModelState, directory: str | os.PathLike, *, new_head: str | None = None
) -> tuple[ModelState, list[str]]:
  """`model_state` with every array of `source` put in its place; also the paths left as they were.

  `new_head`: the name of a module of `source` not to load (the classifier layer of a model of
  other classes, `config.finetune.new_head`). Raises ConfigError (config.init_from) naming the
  arrays of `source` the model lacks or whose shape differs.
  """
  result, kept = {}, []
  for kind, target in model_state.items():
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(target))
    given = traverse_util.flatten_dict(nnx.to_pure_dict(source.get(kind, {})))
    given = {p: v for p, v in given.items() if str(p[0]) != new_head}
    unknown = [_path(p) for p in given if p not in flat]
    mismatched = [
      f"{_path(p)} {tuple(v.shape)} (the run's: {tuple(flat[p].shape)})"
      for p, v in given.items()
      if p in flat and tuple(v.shape) != tuple(flat[p].shape)
    ]
    if unknown or mismatched:
      problems = [
        f"{what}: {', '.join(items)}"
        for what, items in (("not in the model", unknown), ("wrong shape", mismatched))
        if items
      ]
      hint = "" if new_head else "; for a classifier of other classes set finetune.new_head=True"
      raise ConfigError(FIELD, f"{directory}: does not fit this run's model ({'; '.join(problems)}){hint}")
    kept += [f"{kind}.{_path(p)}" for p in flat if p not in given]
    flat.update({p: _placed_like(v, flat[p]) for p, v in given.items()})
    result[kind] = jax.tree.map(lambda x: x, target)  # a copy: `model_state` stays as it was
    nnx.replace_by_pure_dict(result[kind], traverse_util.unflatten_dict(flat))
  return result, kept


def init_from_model_dir(
  state: dict[str, Any], directory: str | os.PathLike, *, new_head: str | None = None
) -> dict[str, Any]:
  """The train state with its model's parameters (and statistics) from a model directory.

  `directory` empty: `state` unchanged. `new_head`: see `load_into`. Raises ConfigError when the directory's model does not
  fit the run's, ModelCheckpointError when it is not a readable model directory.
  """
  if not directory:
    return state

  model, _ = load_model(os.path.expanduser(os.fspath(directory)))
  model_state, kept = load_into(state["model"], split_model(model)[1], directory, new_head=new_head)
  if len(kept) == len(jax.tree.leaves(model_state)):
    raise ConfigError(FIELD, f"{directory}: shares no parameter with this run's model")
  if jax.process_index() == 0:
    note = f"; left at their initial values: {', '.join(kept)}" if kept else ""
    print(f"initialised the model from {directory}{note}", file=sys.stderr)
  return dict(state, model=model_state)
