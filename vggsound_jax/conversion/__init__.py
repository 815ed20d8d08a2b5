"""Importing released checkpoints as model directories: VGGSound's ResNets (models H and I,
`resnet.py`) and VGGish (`vggish.py`), read by `torch_pickle.py`.

Rule: nothing here imports PyTorch, nor runs code from a checkpoint; TensorFlow is imported only
to read Google's VGGish TF checkpoint. The converters never import each other: `convert` below
is the one place that picks one by what the input file holds.
"""

from __future__ import annotations

import os
from pathlib import Path


def convert(input_path: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False) -> dict:
  """Converts one released checkpoint file to a model directory; returns its metadata.

  An existing `output_dir` is replaced only with `overwrite` and only if it is a model
  directory (`vggsound_jax.model_dir.check_target`). Raises TorchCheckpointError,
  ConversionError or ModelCheckpointError (all ValueErrors whose message names the file and
  the problem).
  """
  # On use: the converters import jax and flax.
  from vggsound_jax.conversion import resnet, vggish
  from vggsound_jax.conversion.torch_pickle import load_torch_checkpoint
  from vggsound_jax.model_dir import check_target

  input_path = Path(input_path)
  check_target(output_dir, overwrite=overwrite)  # before the work, and again when writing
  if vggish.checkpoint_kind(input_path) == vggish.TENSORFLOW:
    return vggish.convert(input_path, output_dir, overwrite=overwrite)
  checkpoint = load_torch_checkpoint(input_path)
  if vggish.is_vggish_state_dict(checkpoint):
    return vggish.convert(input_path, output_dir, overwrite=overwrite, checkpoint=checkpoint)
  return resnet.convert(input_path, output_dir, overwrite=overwrite, checkpoint=checkpoint)
