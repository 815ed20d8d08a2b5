"""Cross-validation over the folds of a labelled-clips data set: fine-tuning or the linear probe.

Fold k's test set is the clips of fold k, its training set every other fold's: a fold is never
on both sides. Each fold has its own directory, WORKDIR/fold_K: fine-tuning trains there as
`vggsound-train` does (checkpoints, a model directory WORKDIR/fold_K/model carrying the data's
class names, eval/test/), so a killed run resumes at the fold and step it reached; a finished
fold is marked by FOLD_RESULT, written last and atomically, and never run again. The summary
(per fold and mean +- std of accuracy and mAP) goes to WORKDIR/summary.json and summary.csv.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from vggsound_jax import evaluation, trainer
from vggsound_jax import metrics as metrics_lib
from vggsound_jax.datasets.labelled import LabelledData
from vggsound_jax.errors import ConfigError
from vggsound_jax.finetune import adopt_architecture
from vggsound_jax.input_pipeline import Data
from vggsound_jax.plots import plot_cross_validation
from vggsound_jax.probe import compute_embeddings, fit_predict

MODES = ("finetune", "probe")
FOLD_DIR = "fold_{}"
FOLD_RESULT = "fold.json"
SUMMARY_JSON, SUMMARY_CSV, SUMMARY_PLOT = "summary.json", "summary.csv", "summary.png"
TEST_SPLIT = "test"
# What the summary reports of each fold: accuracy is top-1 of metrics.compute_metrics.
SUMMARY_METRICS = {"accuracy": "top1", "mAP": "mAP"}


class Subset(Sequence):
  """The elements `indices` of a source, as a source (picklable, for loader workers)."""

  def __init__(self, source: Sequence[dict], indices: np.ndarray) -> None:
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.indices[i])]


def test_folds(config: ml_collections.ConfigDict, data: LabelledData) -> list[int]:
  """The folds `config.crossval.folds` names ("1,3"; empty: all), checked against the data's."""
  present = sorted({int(f) for f in data.folds})
  if len(present) < 2:
    raise ConfigError(
      "data.clips", f"{config.data.clips!r} has {len(present)} fold: cross-validation needs two or more"
    )
  text = str(config.crossval.folds).strip()
  if not text:
    return present
  try:
    asked = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    raise ConfigError("crossval.folds", f"{text!r} is not a comma-separated list of fold numbers") from None
  missing = [f for f in asked if f not in present]
  if missing:
    raise ConfigError(
      "crossval.folds", f"fold {missing[0]} is not in the data (its folds: {', '.join(map(str, present))})"
    )
  return asked


def _write_json(path: Path, value: dict) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(metrics_lib.strict_json(value), indent=2) + "\n")
  os.replace(tmp, path)


def _done(fold_dir: Path) -> dict | None:
  try:
    return json.loads((fold_dir / FOLD_RESULT).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, data: LabelledData, *, mode: str) -> dict:
  """Runs (or resumes) every asked fold in `mode`, writes and returns the summary."""
  if mode not in MODES:
    raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
  workdir = Path(workdir)
  folds = test_folds(config, data)
  if mode == "finetune":
    config = adopt_architecture(config)
  elif not config.init_from:
    raise ConfigError("init_from", "the probe needs a model directory whose embeddings it reads")
  workdir.mkdir(parents=True, exist_ok=True)
  embeddings = None
  results = {}
  for fold in folds:
    fold_dir = workdir / FOLD_DIR.format(fold)
    done = _done(fold_dir)
    if done is not None:
      print(f"fold {fold}: done earlier ({fold_dir / FOLD_RESULT})")
      results[fold] = done
      continue
    fold_dir.mkdir(exist_ok=True)
    train, test = np.flatnonzero(data.folds != fold), np.flatnonzero(data.folds == fold)
    if mode == "finetune":
      metrics = _finetune_fold(config, fold_dir, data, train, test)
    else:
      if embeddings is None:
        embeddings = _embeddings(config, data)
      metrics = _probe_fold(config, fold_dir, data, embeddings, train, test)
    result = {"fold": fold, "train_clips": len(train), "test_clips": len(test)}
    result.update({name: metrics[key] for name, key in SUMMARY_METRICS.items()})
    _write_json(fold_dir / FOLD_RESULT, result)
    print(f"fold {fold}: accuracy {result['accuracy']:.4f}, mAP {result['mAP']:.4f} ({len(test)} test clips)")
    results[fold] = result
  return write_summary(workdir, [results[f] for f in folds], mode=mode, class_names=data.class_names)


def _finetune_fold(config, fold_dir: Path, data: LabelledData, train: np.ndarray, test: np.ndarray) -> dict:  # noqa: ANN001

  fold_data = Data(data.class_names, Subset(data.source, train), {TEST_SPLIT: Subset(data.source, test)})
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.splits = (TEST_SPLIT,)
  results = trainer.train_and_evaluate(config, fold_dir, data=fold_data)
  if "preempted" in results:
    raise KeyboardInterrupt  # saved: the same command resumes here
  return results[TEST_SPLIT]


def probe_num_samples(config: ml_collections.ConfigDict, data: LabelledData) -> int:
  """The clip length the probe embeds: `probe.num_samples`, or 0 for the data's longest clip."""
  if config.probe.num_samples > 0:
    return int(config.probe.num_samples)
  return data.longest


def _embeddings(config: ml_collections.ConfigDict, data: LabelledData) -> np.ndarray:

  return compute_embeddings(
    data.source,
    os.path.expanduser(config.init_from),
    dataset_id=data.dataset_id,
    num_samples=probe_num_samples(config, data),
    backend=config.probe.backend,
    batch_size=config.probe.batch_size,
  )


def _probe_fold(
  config: ml_collections.ConfigDict,
  fold_dir: Path,
  data: LabelledData,
  embeddings: np.ndarray,
  train: np.ndarray,
  test: np.ndarray,
) -> dict:

  probs = fit_predict(embeddings, data.labels, train, test, len(data.class_names), config.probe, seed=config.seed)
  predictions = {"index": test, "probs": probs, "labels": data.labels[test]}
  return evaluation.write_results(fold_dir / "eval" / TEST_SPLIT, predictions, data.class_names)


def write_summary(workdir: Path, results: list[dict], *, mode: str, class_names: Sequence[str]) -> dict:
  """summary.json, summary.csv (a row per fold, then mean and std) and the table printed."""
  summary = {"mode": mode, "num_classes": len(class_names), "folds": results}
  for name in SUMMARY_METRICS:
    values = np.array([r[name] if r[name] is not None else np.nan for r in results], np.float64)
    summary[f"mean_{name}"] = float(np.mean(values))
    summary[f"std_{name}"] = float(np.std(values))  # population std over the folds, as papers report
  _write_json(workdir / SUMMARY_JSON, summary)
  tmp = workdir / f".{SUMMARY_CSV}.tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["fold", "accuracy", "mAP", "test_clips"])
    for r in results:
      writer.writerow([r["fold"], _fmt(r["accuracy"]), _fmt(r["mAP"]), r["test_clips"]])
    writer.writerow(["mean", _fmt(summary["mean_accuracy"]), _fmt(summary["mean_mAP"]), ""])
    writer.writerow(["std", _fmt(summary["std_accuracy"]), _fmt(summary["std_mAP"]), ""])
  os.replace(tmp, workdir / SUMMARY_CSV)
  _plot(workdir, results)
  print(format_table(summary))
  return summary


def _plot(workdir: Path, results: list[dict]) -> None:
  """summary.png: the accuracy of each fold."""
  folds = [f"fold {r['fold']}" for r in results]
  plot_cross_validation(folds, [r["accuracy"] for r in results], workdir / SUMMARY_PLOT)


def _fmt(x: float | None) -> str:
  return "" if x is None or not np.isfinite(x) else f"{x:.4f}"


def format_table(summary: dict) -> str:
  lines = [f"cross-validation ({summary['mode']}, {summary['num_classes']} classes)", "fold  accuracy  mAP     clips"]
  for r in summary["folds"]:
    lines.append(f"{r['fold']:>4}  {_fmt(r['accuracy']):>8}  {_fmt(r['mAP']):>6}  {r['test_clips']:>5}")
  lines.append(
    f"mean  {summary['mean_accuracy']:.4f} +- {summary['std_accuracy']:.4f}  mAP {summary['mean_mAP']:.4f}"
    f" +- {summary['std_mAP']:.4f}"
  )
  return "\n".join(lines)
