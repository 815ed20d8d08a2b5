"""VGGish's released weights (Google's TF1 checkpoint, or torchvggish's state dict read without
PyTorch) to a model directory without classifier; Google's PCA post-processing of embeddings.

Every weight is checked by name and shape; widths are inferred from the shapes, so reduced test
models convert too. TensorFlow is imported only to read the TF checkpoint. The two forms and
their layouts: docs/original_pipeline.md#vggish-rows-ac.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from vggsound_jax import manifest
from vggsound_jax.audio.vggish_frontend import log_mel_patches
from vggsound_jax.conversion.torch_pickle import load_torch_checkpoint
from vggsound_jax.errors import ConversionError, PathError
from vggsound_jax.models import ModelConfig, VGGish, build_model
from vggsound_jax.models.vggish import CONV_LAYERS, EMBEDDING_LAYER, EMBEDDING_SIZE, HIDDEN_LAYERS

PYTORCH = "pytorch"
TENSORFLOW = "tensorflow"
TF_SCOPE = "vggish"
TF_LEAVES = {"kernel": "weights", "bias": "biases"}
TORCH_LEAVES = {"kernel": "weight", "bias": "bias"}
# torchvggish's nn.Sequential indices: `features` holds conv, ReLU (and max-pool) per layer,
# `embeddings` holds Linear, ReLU per layer.
TORCH_FEATURES = "features"
TORCH_EMBEDDINGS = "embeddings"
# The first bytes of a PyTorch file: a zip archive, or the legacy format's first pickle.
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")

# Google's vggish_postprocess.py and vggish_params.py.
PCA_EIGEN_VECTORS = "pca_eigen_vectors"
PCA_MEANS = "pca_means"
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0
QUANTIZE_LEVELS = 255.0


def layer_names() -> tuple[str, ...]:
  """Every weighted layer of VGGish, input to embedding."""
  return tuple(name for name, _, _ in CONV_LAYERS) + HIDDEN_LAYERS + (EMBEDDING_LAYER,)


def tf_name(layer: str, leaf: str) -> str:
  """The TF variable of a Flax leaf: conv3_1/kernel -> vggish/conv3/conv3_1/weights."""
  group = layer.split("_")[0]
  scope = f"{TF_SCOPE}/{group}/{layer}" if "_" in layer else f"{TF_SCOPE}/{layer}"
  return f"{scope}/{TF_LEAVES[leaf]}"


def torch_names() -> dict[str, str]:
  """Flax layer -> torchvggish key prefix: conv1 -> features.0, ..., fc2 -> embeddings.4."""
  names, index = {}, 0
  for name, _, pool in CONV_LAYERS:
    names[name] = f"{TORCH_FEATURES}.{index}"
    index += 3 if pool else 2
  for i, name in enumerate(HIDDEN_LAYERS + (EMBEDDING_LAYER,)):
    names[name] = f"{TORCH_EMBEDDINGS}.{2 * i}"
  return names


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def arrays_from_state_dict(state_dict: Mapping[str, Any]) -> dict[tuple[str, str], np.ndarray]:
  """{(layer, leaf): array in Flax layout} from torchvggish's state dict.

  Raises ValueError naming every missing and unexpected key.
  """
  if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
    state_dict = state_dict["state_dict"]
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"expected a state dict of tensors, found a {type(state_dict).__name__}")
  arrays, missing, used = {}, [], set()
  for layer, prefix in torch_names().items():
    for leaf, torch_leaf in TORCH_LEAVES.items():
      key = f"{prefix}.{torch_leaf}"
      if key not in state_dict:
        missing.append(key)
        continue
      used.add(key)
      arrays[layer, leaf] = _to_flax(np.asarray(state_dict[key]))
  unexpected = sorted(set(map(str, state_dict)) - used)
  _raise_problems(missing, unexpected)
  return arrays


def arrays_from_tf_checkpoint(path: str | os.PathLike) -> dict[tuple[str, str], np.ndarray]:
  """{(layer, leaf): array} from Google's TF1 checkpoint (V1 file or V2 prefix).

  Variables outside the `vggish/` scope (global_step) and optimizer slots are ignored;
  raises ValueError naming every missing and unexpected VGGish variable.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # only this path needs TensorFlow

  try:
    reader = tf.train.load_checkpoint(os.fspath(path))
  except Exception as e:  # TF raises several kinds; the caller needs one line
    raise ValueError(f"not a TensorFlow checkpoint ({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
  available = reader.get_variable_to_shape_map()
  arrays, missing, used = {}, [], set()
  for layer in layer_names():
    for leaf in TF_LEAVES:
      name = tf_name(layer, leaf)
      if name not in available:
        missing.append(name)
        continue
      used.add(name)
      arrays[layer, leaf] = np.asarray(reader.get_tensor(name))
  scoped = {n for n in available if n.startswith(TF_SCOPE + "/") and n.rsplit("/", 1)[-1] not in ("Adam", "Adam_1")}
  _raise_problems(missing, sorted(scoped - used))
  return arrays


def _raise_problems(missing: list[str], unexpected: list[str]) -> None:
  problems = [f"{what}: {', '.join(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
  if problems:
    raise ValueError("not VGGish weights: " + "; ".join(problems))


def infer_config(arrays: Mapping[tuple[str, str], np.ndarray], *, embedding_relu: bool = True) -> ModelConfig:
  """The ModelConfig (VGGish, no classifier) of Flax-layout arrays: width and fc width from shapes."""
  conv1 = arrays["conv1", "kernel"]
  if conv1.ndim != 4:
    raise ValueError(f"conv1 kernel has shape {conv1.shape}, expected (3, 3, 1, width)")
  hidden = arrays[HIDDEN_LAYERS[0], "kernel"]
  if hidden.ndim != 2:
    raise ValueError(f"{HIDDEN_LAYERS[0]} kernel has shape {hidden.shape}, expected (features, fc_width)")
  return ModelConfig(
    arch="vggish",
    num_classes=0,
    width=int(conv1.shape[-1]),
    fc_width=int(hidden.shape[-1]),
    embedding_relu=embedding_relu,
  )


def model_from_arrays(
  arrays: Mapping[tuple[str, str], np.ndarray], *, embedding_relu: bool = True, dtype: str = "float32"
) -> VGGish:
  """A VGGish (eval mode, no classifier) holding `arrays`; raises ValueError naming every
  array of the wrong shape or with NaN or inf."""

  config = dataclasses.replace(infer_config(arrays, embedding_relu=embedding_relu), dtype=dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  values, mismatched, non_finite = {}, [], []
  for layer in layer_names():
    for leaf in TF_LEAVES:
      want = tuple(getattr(getattr(abstract, layer), leaf).shape)
      array = arrays[layer, leaf]
      if tuple(array.shape) != want:
        mismatched.append(f"{layer}.{leaf} {tuple(array.shape)} (expected {want})")
        continue
      if not np.isfinite(array).all():
        non_finite.append(f"{layer}.{leaf}")
      values.setdefault(layer, {})[leaf] = np.asarray(array, np.float32)
  if mismatched:
    raise ValueError(
      f"weights do not fit VGGish width {config.width}, fc width {config.fc_width}: " + ", ".join(mismatched)
    )
  if non_finite:
    raise ValueError("NaN or inf in " + ", ".join(non_finite))
  nnx.replace_by_pure_dict(abstract, values)
  model = nnx.merge(graphdef, abstract)
  model.eval()
  return model


def checkpoint_kind(path: str | os.PathLike) -> str | None:
  """PYTORCH, TENSORFLOW, or None for a file that is neither (cheap: reads a few bytes)."""
  path = Path(path)
  if Path(f"{path}.index").is_file():
    return TENSORFLOW  # V2: the user gives the prefix
  if not path.is_file():
    return None
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(TORCH_MAGICS):
    return PYTORCH
  return TENSORFLOW if path.suffix == ".ckpt" or path.name.endswith(".ckpt.index") else None


def is_vggish_state_dict(checkpoint: Any) -> bool:
  """Whether a loaded PyTorch checkpoint has torchvggish's keys (else: a VGGSound ResNet)."""
  if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
    checkpoint = checkpoint["state_dict"]
  return isinstance(checkpoint, Mapping) and f"{TORCH_FEATURES}.0.weight" in checkpoint


def convert(
  input_path: str | os.PathLike,
  output_dir: str | os.PathLike,
  *,
  overwrite: bool = False,
  embedding_relu: bool = True,
  checkpoint: Any = None,
) -> dict:
  """Converts released VGGish weights (TF1 checkpoint or torchvggish .pth) to a model directory.

  `checkpoint`: the PyTorch file already loaded, if the caller has read it. Returns the
  directory's metadata. Raises ConversionError, TorchCheckpointError or ModelCheckpointError
  (ValueErrors naming the file and the problem).
  """
  from vggsound_jax.model_dir import check_target, load_metadata, save_model

  input_path = Path(input_path)
  check_target(output_dir, overwrite=overwrite)
  kind = TENSORFLOW if checkpoint is None and checkpoint_kind(input_path) == TENSORFLOW else PYTORCH
  try:
    if kind == TENSORFLOW:
      arrays = arrays_from_tf_checkpoint(input_path)
    else:
      arrays = arrays_from_state_dict(load_torch_checkpoint(input_path) if checkpoint is None else checkpoint)
    model = model_from_arrays(arrays, embedding_relu=embedding_relu)
  except ValueError as e:
    if isinstance(e, PathError):
      raise
    raise ConversionError(input_path, str(e)) from None
  # A V2 checkpoint is a prefix: its .index holds a checksum of every tensor, so its sha256
  # identifies the weights.
  digest_of = input_path if input_path.is_file() else Path(f"{input_path}.index")
  source = {
    "converter": "vggsound-convert",
    "file": digest_of.name,
    "format": kind,
    "sha256": manifest.sha256(digest_of),
  }
  directory = save_model(output_dir, model, class_names=[], source=source, overwrite=overwrite)
  return load_metadata(directory)


# ----------------------------------------------------------------------------- post-processing


class Postprocessor:
  """Google's PCA (with whitening), clipping to [-2, 2] and 8-bit quantisation of embeddings.

  `rounding`: "truncate" casts to uint8 as Google's `vggish_postprocess.py` does (and as
  AudioSet's released features were made); "round" rounds to nearest, as torchvggish does.
  """

  def __init__(self, eigen_vectors: np.ndarray, means: np.ndarray, *, rounding: str = "truncate") -> None:
    eigen_vectors = np.asarray(eigen_vectors, np.float64)
    means = np.asarray(means, np.float64).reshape(-1)
    if eigen_vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (EMBEDDING_SIZE,):
      raise ValueError(
        f"PCA parameters of shapes {eigen_vectors.shape} and {means.shape},"
        f" expected ({EMBEDDING_SIZE}, {EMBEDDING_SIZE}) and ({EMBEDDING_SIZE},)"
      )
    if rounding not in ("truncate", "round"):
      raise ValueError(f"rounding {rounding!r}: expected 'truncate' or 'round'")
    self.eigen_vectors, self.means, self.rounding = eigen_vectors, means, rounding

  @classmethod
  def from_npz(cls, path: str | os.PathLike, *, rounding: str = "truncate") -> Postprocessor:
    """From `vggish_pca_params.npz` (arrays `pca_eigen_vectors`, `pca_means`)."""
    try:
      with np.load(path) as params:
        return cls(params[PCA_EIGEN_VECTORS], params[PCA_MEANS], rounding=rounding)
    except (OSError, KeyError, ValueError) as e:
      raise PathError(path, f"not VGGish PCA parameters ({type(e).__name__}: {e})") from None

  def __call__(self, embeddings: np.ndarray) -> np.ndarray:
    """(..., 128) float embeddings -> (..., 128) uint8."""
    pca = (np.asarray(embeddings, np.float64) - self.means) @ self.eigen_vectors.T
    scaled = (np.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX) - QUANTIZE_MIN) * (
      QUANTIZE_LEVELS / (QUANTIZE_MAX - QUANTIZE_MIN)
    )
    return (np.round(scaled) if self.rounding == "round" else scaled).astype(np.uint8)


# Compiled once per input shape, for exports of many clips.
_patch_embeddings = nnx.jit(lambda model, patches: model.patch_embeddings(patches))


def export_embeddings(
  model: VGGish, audio: np.ndarray | jax.Array, postprocessor: Postprocessor | None = None
) -> np.ndarray:
  """int16 waveforms (N, T) -> per-patch embeddings (N, P, 128): float32, or uint8 after
  `postprocessor` (AudioSet's released format: one 128-byte vector per 0.96 s)."""
  patches = log_mel_patches(jax.numpy.asarray(audio)).astype(model.config.dtype)
  embeddings = np.asarray(_patch_embeddings(model, patches), np.float32)
  return embeddings if postprocessor is None else postprocessor(embeddings)
