"""The paper's metrics: mAP, mAUC and d-prime (docs/original_pipeline.md#metrics), plus top-1/top-5.

Per-class AP and AUC are sklearn's `average_precision_score` and `roc_auc_score`, the
definition the original used; d' = sqrt(2) * Phi^-1(mAUC), of the *mean* AUC. A class with no
positive clip in the evaluated set has no AUC: it is left out of both means and counted in
`classes_left_out` (the original's mean would have been NaN). `top1_confusions` counts which
class the top-1 prediction names for each true class, `most_confused` the largest mistakes.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
import sklearn.metrics

SCALAR_KEYS = ("mAP", "mAUC", "d_prime", "top1", "top5", "num_clips", "classes_left_out")


def targets_from_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """int labels (N,) -> one-hot (N, C); multi-hot (N, C) passes through as 0/1."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.eye(num_classes, dtype=np.int64)[labels]
  if labels.ndim == 2 and labels.shape[1] == num_classes:
    return (labels > 0).astype(np.int64)
  raise ValueError(f"labels must be int (N,) or multi-hot (N, {num_classes}), got shape {labels.shape}")


def compute_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
  """Metrics of probabilities (N, C) against int labels (N,) or multi-hot targets (N, C).

  Returns the scalars of SCALAR_KEYS and per-class arrays `ap`, `auc` (NaN where left out)
  and `count` (positives per class). top-k counts a clip as right when any of its positive
  classes is among its k highest probabilities (k = min(k, C)).
  """
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2:
    raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
  n, c = probs.shape
  targets = targets_from_labels(labels, c)
  if targets.shape[0] != n:
    raise ValueError(f"{n} rows of probabilities but {targets.shape[0]} labels")

  count = targets.sum(axis=0)
  ap = np.full(c, np.nan)
  auc = np.full(c, np.nan)
  for k in np.flatnonzero(count > 0):
    ap[k] = sklearn.metrics.average_precision_score(targets[:, k], probs[:, k])
    # A class that is positive on every clip has no negatives, hence no AUC either.
    if count[k] < n:
      auc[k] = sklearn.metrics.roc_auc_score(targets[:, k], probs[:, k])

  kept = count > 0
  m_ap = float(np.mean(ap[kept])) if kept.any() else float("nan")
  m_auc = float(np.nanmean(auc[kept])) if np.isfinite(auc[kept]).any() else float("nan")
  d_prime = float(np.sqrt(2.0) * scipy.stats.norm.ppf(m_auc)) if np.isfinite(m_auc) else float("nan")

  # Ties are broken by class index, as a stable argsort of -p does.
  order = np.argsort(-probs, axis=1, kind="stable")

  def top_k(k: int) -> float:
    hits = np.take_along_axis(targets, order[:, : min(k, c)], axis=1).any(axis=1)
    return float(hits.mean()) if n else float("nan")

  return {
    "mAP": m_ap,
    "mAUC": m_auc,
    "d_prime": d_prime,
    "top1": top_k(1),
    "top5": top_k(5),
    "num_clips": int(n),
    "classes_left_out": int(c - kept.sum()),
    "ap": ap,
    "auc": auc,
    "count": count,
  }


def scalar_metrics(metrics: dict) -> dict:
  """The scalar part of compute_metrics' result."""
  return {k: metrics[k] for k in SCALAR_KEYS}


def strict_json(values: dict) -> dict:
  """NaN and infinity (d' of a perfect mAUC is +inf) become None: null in strict JSON.

  The one representation of scalar metrics wherever they are written or printed.
  """
  return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in values.items()}


def top1_confusions(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(C, C) int64 counts: row = a clip's true class, column = its top-1 class (ties by class
  index, as in top-1 accuracy). A multi-hot clip counts once in the row of each positive class."""
  probs = np.asarray(probs)
  c = probs.shape[1]
  targets = targets_from_labels(labels, c)
  top1 = np.argmax(probs, axis=1)  # the first of equal maxima, as a stable argsort of -p
  counts = np.zeros((c, c), np.int64)
  rows, clips = np.nonzero(targets.T)
  np.add.at(counts, (rows, top1[clips]), 1)
  return counts


def most_confused(confusions: np.ndarray, n: int | None = None) -> list[tuple[int, int, int]]:
  """[(true class, predicted class, count)] of the mistakes (off-diagonal, count > 0) of a
  `top1_confusions` matrix, most frequent first, ties in class order; the first n, or all."""
  off = confusions.copy()
  np.fill_diagonal(off, 0)
  true, predicted = np.nonzero(off)
  order = np.lexsort((predicted, true, -off[true, predicted]))[:n]
  return [(int(true[i]), int(predicted[i]), int(off[true[i], predicted[i]])) for i in order]
