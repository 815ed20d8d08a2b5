"""Converting a VGGSound PyTorch checkpoint (models H and I of the release) to a model directory.

The command is `vggsound-convert` (or `python converters/pytorch_to_flax.py`), in
`vggsound_jax/cli/convert.py`.

Reads the file without PyTorch and without running code from it (vggsound_jax.conversion.torch_pickle),
takes `model_state_dict`, infers depth, head and width from the keys, checks every key and
shape against the Flax model of that architecture, and writes it with
`vggsound_jax.model_dir.save_model` (parameters, BatchNorm statistics, architecture, class
names, source file name and sha256). Every failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vggsound_jax import manifest
from vggsound_jax.errors import ConversionError

if TYPE_CHECKING:
  from vggsound_jax.models import ModelConfig, ResNet

# The release wraps the network in a module whose attribute is `audnet` (docs/original_pipeline.md#released-checkpoints);
# `module.` is what nn.DataParallel adds in front.
STATE_DICT_PREFIXES = ("module.", "audnet.")
STATE_DICT_ENTRIES = ("model_state_dict", "state_dict")
IGNORED_SUFFIXES = (".num_batches_tracked",)

# Flax leaf name -> PyTorch parameter / buffer name.
_LEAF_NAMES = {
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
  "centroids": "centroids",
}
# The NetVLAD head: PyTorch calls the layer `avgpool` and its classifier `fc_`.
_VLAD_MODULE = "avgpool"
_VLAD_FC = "fc_"


def extract_state_dict(checkpoint: Any) -> tuple[dict[str, np.ndarray], str]:
  """The model weights of a loaded checkpoint, and the key prefix they had in the file.

  Accepts the release's `{"model_state_dict": ..., ...}` (other entries ignored) or a bare
  state dict. Keys come back without the prefix (`audnet.`), bookkeeping buffers
  (`num_batches_tracked`) dropped. Raises ValueError when there are no weights.
  """
  if isinstance(checkpoint, Mapping):
    for entry in STATE_DICT_ENTRIES:
      if isinstance(checkpoint.get(entry), Mapping):
        checkpoint = checkpoint[entry]
        break
  if (
    not isinstance(checkpoint, Mapping)
    or not checkpoint
    or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in checkpoint.items())
  ):
    found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(f"no model weights: expected 'model_state_dict' or a state dict of tensors, found {found}")
  state, prefixes = {}, []
  for key, value in checkpoint.items():
    if key.endswith(IGNORED_SUFFIXES):
      continue
    stripped = key
    for prefix in STATE_DICT_PREFIXES:
      if stripped.startswith(prefix):
        stripped = stripped[len(prefix) :]
    prefixes.append(key[: len(key) - len(stripped)])
    state[stripped] = value
  return state, max(set(prefixes), key=prefixes.count, default="")


def infer_config(state: Mapping[str, np.ndarray], dtype: str = "float32") -> ModelConfig:
  """The ModelConfig of a prefix-free state dict: depth, head, width, classes, clusters."""
  from vggsound_jax.models import ModelConfig
  from vggsound_jax.models.config import DEPTHS

  if "conv1.weight" not in state:
    raise ValueError("cannot infer the architecture: no 'conv1.weight'")
  blocks = []
  for stage in range(1, 5):
    indices = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.") and k.split(".")[1].isdigit()}
    blocks.append(max(indices) + 1 if indices else 0)
  kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
  depths = [d for d, (k, b) in DEPTHS.items() if k == kind and tuple(b) == tuple(blocks)]
  if not depths:
    raise ValueError(
      f"cannot infer the depth: {kind} blocks per stage {blocks} match none of "
      + ", ".join(f"ResNet-{d} {k} {list(b)}" for d, (k, b) in DEPTHS.items())
    )
  if f"{_VLAD_MODULE}.centroids" in state:
    head, fc = "vlad", _VLAD_FC
  elif "fc.weight" in state:
    head, fc = "avgpool", "fc"
  else:
    raise ValueError(f"cannot infer the head: neither 'fc.weight' (avgpool) nor '{_VLAD_MODULE}.centroids' (NetVLAD)")
  if f"{fc}.weight" not in state:
    raise ValueError(f"cannot infer the number of classes: no '{fc}.weight'")
  fields = dict(
    depth=depths[0],
    head=head,
    width=int(state["conv1.weight"].shape[0]),
    num_classes=int(state[f"{fc}.weight"].shape[0]),
    dtype=dtype,
  )
  if head == "vlad":
    fields["num_clusters"] = int(state[f"{_VLAD_MODULE}.centroids"].shape[0])
  return ModelConfig(**fields)


def torch_key(path: tuple, head: str) -> str:
  """The PyTorch state-dict key (prefix-free) of a Flax state path."""
  names = []
  for i, part in enumerate(path[:-1]):
    if part == "netvlad":
      names.append(_VLAD_MODULE)
    elif part == "fc":
      names.append(_VLAD_FC if head == "vlad" else "fc")
    elif i > 0 and path[i - 1] == "downsample":  # nn.Sequential(conv, bn)
      names.append({"conv": "0", "bn": "1"}[part])
    else:
      names.append(str(part))
  return ".".join(names + [_LEAF_NAMES[path[-1]]])


def to_flax_layout(array: np.ndarray, is_kernel: bool) -> np.ndarray:
  """PyTorch conv (out, in, kh, kw) -> (kh, kw, in, out); linear (out, in) -> (in, out)."""
  if is_kernel and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if is_kernel and array.ndim == 2:
    return array.T
  return array


def torch_shape(flax_shape: tuple[int, ...], is_kernel: bool) -> tuple[int, ...]:
  """The PyTorch shape that `to_flax_layout` turns into `flax_shape`."""
  if is_kernel and len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  if is_kernel and len(flax_shape) == 2:
    return flax_shape[::-1]
  return tuple(flax_shape)


def flax_model_from_state_dict(state_dict: Mapping[str, Any], dtype: str | None = None) -> ResNet:
  """A Flax ResNet (eval mode) holding the weights of a PyTorch state dict or checkpoint dict.

  Raises ValueError listing every missing, unexpected and mis-shaped key, or every tensor
  holding NaN or inf.
  """
  from flax import nnx, traverse_util

  from vggsound_jax.models import build_model

  state, prefix = extract_state_dict(state_dict)
  config = infer_config(state, dtype or "float32")
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  expected = traverse_util.flatten_dict(nnx.to_pure_dict(abstract))
  values, missing, mismatched, non_finite = {}, [], [], []
  used = set()
  for path, leaf in expected.items():
    key = torch_key(path, config.head)
    is_kernel = path[-1] == "kernel"
    want = torch_shape(tuple(leaf.shape), is_kernel)
    if key not in state:
      missing.append(prefix + key)
      continue
    used.add(key)
    array = np.asarray(state[key])
    if array.shape != want:
      mismatched.append(f"{prefix}{key} {tuple(array.shape)} (expected {want})")
      continue
    if np.issubdtype(array.dtype, np.inexact):
      bad = array.size - int(np.count_nonzero(np.isfinite(array)))
      if bad:
        non_finite.append(f"{prefix}{key} ({bad} of {array.size} values)")
    values[path] = to_flax_layout(array.astype(np.float32), is_kernel)
  unexpected = sorted(prefix + key for key in set(state) - used)
  if missing or unexpected or mismatched:
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
      if keys:
        problems.append(f"{what}: " + ", ".join(keys))
    raise ValueError(
      f"state dict does not fit ResNet-{config.depth} {config.head} width {config.width}: " + "; ".join(problems)
    )
  if non_finite:
    # A diverged or damaged source: refused here, where the PyTorch name of the tensor is known.
    raise ValueError("NaN or inf in " + ", ".join(non_finite))
  nnx.replace_by_pure_dict(abstract, traverse_util.unflatten_dict(values))
  model = nnx.merge(graphdef, abstract)
  model.eval()
  return model


def convert(input_path: Path, output_dir: str | os.PathLike, *, overwrite: bool, checkpoint: Any) -> dict:
  """Converts a loaded VGGSound ResNet checkpoint (models H and I) to a model directory; returns
  its metadata. Raises ConversionError or ModelCheckpointError (ValueErrors naming the file)."""
  from vggsound_jax import labels
  from vggsound_jax.model_dir import load_metadata, save_model

  try:
    model = flax_model_from_state_dict(checkpoint)
  except ValueError as e:
    raise ConversionError(input_path, str(e)) from None
  if model.config.num_classes != labels.NUM_CLASSES:
    raise ConversionError(
      input_path, f"the model has {model.config.num_classes} outputs, but VGGSound has {labels.NUM_CLASSES} classes"
    )
  source = {"converter": "vggsound-convert", "file": input_path.name, "sha256": manifest.sha256(input_path)}
  if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("epoch"), int):
    source["epoch"] = checkpoint["epoch"]
  directory = save_model(output_dir, model, class_names=labels.class_names(), source=source, overwrite=overwrite)
  return load_metadata(directory)
