"""Evaluation over the device mesh, and the files it leaves in WORKDIR/eval/<split>/.

`evaluate` is what `vggsound-evaluate` runs: the model of a run's checkpoint (no optimizer
state is read) or of a model directory, over every split of `config.eval.splits`. The
training loop calls `evaluate_splits` with the model it holds.

The eval loader pads its last batch and marks real examples with `mask`; predictions are
kept only where the mask is set, and every example index must appear exactly once.

Files written per split:
- `predictions.npz`: `index` (position in the split), `clip_id` (when the data has them),
  `probs` (N, C) float32 softmax probabilities, `labels` (N,);
- `metrics.json`: mAP, mAUC, d_prime, top1, top5, num_clips, classes_left_out
  (docs/original_pipeline.md#metrics),
  strict JSON: a value that is not finite (d' of a perfect mAUC is +inf) is written as null;
- `per_class.csv`: class, ap, auc, count; `per_class_ap.png`: the per-class APs, sorted, the
  best and the worst classes named;
- `confusions.csv`: true_class, predicted_class, count, share (of the true class's clips): every
  top-1 mistake, most frequent first; `confusions.png`: the most frequent ones;
- optionally `clips/<clip_id>.npy`, one (C,) probability vector per clip, the layout the
  original release's test script writes.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from vggsound_jax import checkpoints, default_config, distributed, input_pipeline, plots
from vggsound_jax import metrics as metrics_lib
from vggsound_jax import sharding as sharding_lib
from vggsound_jax import vggsounder as vggsounder_lib
from vggsound_jax.model_dir import load_model
from vggsound_jax.models import ModelConfig, ModelState, forward, graphdefs, merge_model, split_model

# Batch entries that go to the device; anything else (e.g. clip_id strings) stays on the host.
_DEVICE_KEYS = ("audio", "label", "mask", "index")


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh) -> Callable:
  """The jitted `eval_step(model_state, batch) -> {probs, label, mask, index}`.

  `graphdef` is the model's eval-mode structure, `model_state` its `ModelState`. Outputs are
  replicated, so every process sees all of them.
  """

  def eval_step(model_state: ModelState, batch: dict) -> dict:
    probs, _ = forward(merge_model(graphdef, model_state), batch["audio"])
    return {"probs": probs, "label": batch["label"], "mask": batch["mask"], "index": batch["index"]}

  replicated = sharding_lib.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(replicated, sharding_lib.batch_sharding(mesh)), out_shardings=replicated)


def predict(
  eval_step: Callable, model_state: ModelState, batches: Iterable[dict], mesh: Mesh, *, description: str = "eval"
) -> dict:
  """Runs the eval step over all batches; returns unpadded `probs`, `labels`, `index`.

  Rows come back sorted by example index, on every process; `clip_id` is included when the
  batches carry it (each process reads its own rows' ids, and they are gathered).
  """

  probs, labels, indices, local_ids = [], [], [], []
  for batch in tqdm.tqdm(
    batches, desc=description, unit="batch", leave=False, disable=not sharding_lib.is_main_process()
  ):
    out = eval_step(model_state, sharding_lib.shard_batch({k: batch[k] for k in _DEVICE_KEYS}, mesh))
    mask = np.asarray(out["mask"], bool)
    probs.append(np.asarray(out["probs"], np.float32)[mask])
    labels.append(np.asarray(out["label"])[mask])
    indices.append(np.asarray(out["index"])[mask])
    if "clip_id" in batch:
      local_ids.append((np.asarray(batch["index"]), np.asarray(batch["clip_id"])))
  if not probs:
    raise ValueError("the evaluation split has no examples")
  index = np.concatenate(indices)
  unique, counts = np.unique(index, return_counts=True)
  if (counts > 1).any():
    raise ValueError(f"examples counted more than once: indices {unique[counts > 1][:10].tolist()}")
  order = np.argsort(index, kind="stable")
  result = {"probs": np.concatenate(probs)[order], "labels": np.concatenate(labels)[order], "index": index[order]}
  clip_ids = _gather_clip_ids(local_ids) if local_ids else {}
  if any(clip_ids.values()):  # sources without clip ids give empty ones
    result["clip_id"] = np.asarray([clip_ids[i] for i in result["index"]])
  return result


_CLIP_ID_BYTES = 64  # YouTube id, "_", six digits: 18 bytes; room for other naming schemes


def _gather_clip_ids(local: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, str]:
  """{example index: clip id} over every process: ids are host strings, so they travel as bytes."""
  index = np.concatenate([i for i, _ in local]).astype(np.int64)
  ids = np.concatenate([c for _, c in local])
  encoded = np.zeros((len(ids), _CLIP_ID_BYTES), np.uint8)
  for row, clip_id in enumerate(ids):
    data = clip_id if isinstance(clip_id, bytes) else str(clip_id).encode()
    encoded[row, : min(len(data), _CLIP_ID_BYTES)] = np.frombuffer(data[:_CLIP_ID_BYTES], np.uint8)
  if jax.process_count() > 1:  # every process has as many rows (padding included)
    index = np.asarray(multihost_utils.process_allgather(index)).reshape(-1)
    encoded = np.asarray(multihost_utils.process_allgather(encoded)).reshape(-1, _CLIP_ID_BYTES)
  return {int(i): bytes(e).rstrip(b"\0").decode() for i, e in zip(index, encoded) if i >= 0}


def compute_split_metrics(predictions: dict) -> dict:
  """The scalar metrics of one split's predictions."""
  return metrics_lib.scalar_metrics(metrics_lib.compute_metrics(predictions["probs"], predictions["labels"]))


def write_results(
  out_dir: str | os.PathLike,
  predictions: dict,
  class_names: Sequence[str],
  *,
  export_clip_npy: bool = False,
  vggsounder: bool = False,
) -> dict:
  """Writes predictions, metrics and per-class results; returns the scalar metrics.

  `vggsounder`: also the VGGSounder scores of the predictions, `vggsounder.json`.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  probs, labels = predictions["probs"], predictions["labels"]
  if probs.shape[1] != len(class_names):
    raise ValueError(f"{out_dir}: {probs.shape[1]} model outputs but {len(class_names)} class names")
  clip_ids = predictions.get("clip_id")

  full = metrics_lib.compute_metrics(probs, labels)
  scalars = metrics_lib.scalar_metrics(full)

  arrays = {
    "index": predictions["index"],
    "probs": probs,
    "labels": labels,
    "class_names": np.asarray(class_names, dtype=str),
  }
  if clip_ids is not None:
    arrays["clip_id"] = np.asarray(clip_ids, dtype=str)
  np.savez(out_dir / "predictions.npz", **arrays)
  (out_dir / "metrics.json").write_text(json.dumps(metrics_lib.strict_json(scalars), indent=2) + "\n")
  with open(out_dir / "per_class.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["class", "ap", "auc", "count"])
    for name, ap, auc, count in zip(class_names, full["ap"], full["auc"], full["count"]):
      writer.writerow([name, _fmt(ap), _fmt(auc), int(count)])
  plots.plot_per_class_ap(out_dir / "per_class_ap.png", class_names, full["ap"], scalars["mAP"])
  confusions = metrics_lib.top1_confusions(probs, labels)
  write_confusions(out_dir / "confusions.csv", confusions, class_names)
  plots.plot_confusions(out_dir / "confusions.png", confusions, class_names)

  if export_clip_npy:
    if clip_ids is None:
      raise ValueError(f"{out_dir}: export_clip_npy needs clip ids, and the data has none")
    clip_dir = out_dir / "clips"
    clip_dir.mkdir(exist_ok=True)
    for clip_id, p in zip(clip_ids, probs):
      np.save(clip_dir / f"{clip_id}.npy", p.astype(np.float32))
  if vggsounder:
    vggsounder_lib.write_results(out_dir, probs, clip_ids, class_names)
  return scalars


def _fmt(x: float) -> str:
  return "" if not np.isfinite(x) else f"{x:.6f}"


def write_confusions(path: str | os.PathLike, confusions: np.ndarray, class_names: Sequence[str]) -> None:
  """Every top-1 mistake of a `metrics.top1_confusions` matrix as csv rows, most frequent first."""
  clips = confusions.sum(axis=1)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["true_class", "predicted_class", "count", "share"])
    for true, predicted, count in metrics_lib.most_confused(confusions):
      writer.writerow([class_names[true], class_names[predicted], count, f"{count / clips[true]:.6f}"])


# ----------------------------------------------------------------------------- orchestration


def evaluate_splits(
  config: ml_collections.ConfigDict,
  data: input_pipeline.Data,
  graphdef: nnx.GraphDef,
  model_state: ModelState,
  mesh: Mesh,
  workdir: str | os.PathLike,
  *,
  write_files: bool,
  writer: Any = None,
  step: int = 0,
) -> dict[str, dict]:
  """Every split of `data.eval`: {split: scalar metrics}; files in WORKDIR/eval/<split>/ too
  with `write_files`, and TensorBoard scalars when given a `writer`."""
  eval_step = make_eval_step(graphdef, mesh)
  rows = sharding_lib.process_rows(mesh, config.eval.batch_size)
  results = {}
  for split, source in data.eval.items():
    batches = input_pipeline.eval_iterator(config, source, rows)
    predictions = predict(eval_step, model_state, batches, mesh, description=f"eval {split}")
    if write_files and sharding_lib.is_main_process():
      metrics = write_results(
        Path(workdir) / "eval" / split,
        predictions,
        data.class_names,
        export_clip_npy=config.eval.export_clip_npy,
        vggsounder=config.eval.vggsounder and split == vggsounder_lib.SPLIT,
      )
    else:
      metrics = compute_split_metrics(predictions)
    results[split] = metrics
    if writer:
      for key, value in metrics.items():
        if np.isfinite(value):
          writer.add_scalar(f"eval_{split}/{key}", value, step)
      writer.flush()
  return results


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  checkpoint: str | os.PathLike | None = None,
  step: int | None = None,
  data: input_pipeline.Data | None = None,
) -> dict[str, dict]:
  """Evaluates a model directory (`checkpoint`) or a run's checkpoint (latest, or `step`).

  Writes WORKDIR/eval/<split>/ and returns {split: scalar metrics}.
  """
  default_config.validate(config)
  mesh = sharding_lib.make_mesh()
  distributed.check_same_config(config.to_json_best_effort(sort_keys=True))
  sharding_lib.check_batch_size("eval.batch_size", config.eval.batch_size, mesh)
  distributed.check_shared_directory(workdir)
  data = data or input_pipeline.load_data(config, train=False)
  if checkpoint is not None:
    model, metadata = load_model(checkpoint, dtype=config.model.dtype)
    if tuple(metadata["class_names"]) != tuple(data.class_names):
      raise ValueError(
        f"{checkpoint}: the model's {len(metadata['class_names'])} classes are not the data's "
        f"{len(data.class_names)} classes (data config {config.data.config!r})"
      )
    graphdef, model_state = split_model(model)  # load_model returns it in eval mode
  else:
    model_cfg = ModelConfig.from_config(config.model, len(data.class_names))
    manager = checkpoints.checkpoint_manager(workdir, read_only=True)
    model_state = checkpoints.restore_model_state(manager, model_cfg, mesh, step=step)
    graphdef = graphdefs(model_cfg).eval
  model_state = jax.device_put(model_state, sharding_lib.replicated(mesh))
  return evaluate_splits(config, data, graphdef, model_state, mesh, workdir, write_files=True)


def format_results(split: str, metrics: dict, reported: ml_collections.ConfigDict | None = None) -> str:
  """The printed summary of one split: strict JSON, then the paper's figures beside ours."""
  lines = [f"{split}: {json.dumps(metrics_lib.strict_json(metrics))}"]
  if reported:
    row = reported.get("row", "")
    for key in ("mAP", "mAUC", "d_prime"):
      if key in reported:
        lines.append(f"  {key:8s} measured {metrics[key]:.3f}   paper (row {row}) {reported[key]:.3f}")
  return "\n".join(lines)
