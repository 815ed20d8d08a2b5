"""VGGSounder scores (Zverev et al., ICCV 2025): test predictions against the audible labels of
the re-annotated VGGSound test set, with the metrics its authors report (docs/training.md).

Invariants: the numbers equal those of the `vggsounder` package's benchmark function on the same
predictions (ties in the top k: the lower model index wins); classes are matched to model
outputs by name, clips by id; clips on one side only are counted, never an error.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import sklearn.metrics

from vggsound_jax import labels
from vggsound_jax.errors import ConfigError

ANNOTATION_RESOURCE = "data/vggsounder.csv.gz"
ANNOTATION_SOURCE = "vggsounder 1.0, vggsounder/data/vggsounder+background-music.csv"
RESULT_NAME = "vggsounder.json"
# The VGGSound split VGGSounder re-annotates.
SPLIT = "test"
TOP_K = (1, 3, 5, 10)
# Modality codes of labels that can be heard: audible only, and audible and visible.
AUDIBLE = ("A", "AV")
_TRUE = "true"


@dataclasses.dataclass(frozen=True)
class Annotation:
  """VGGSounder's labels, one row per annotated clip, classes in model order."""

  clip_ids: tuple[str, ...]
  audible: np.ndarray  # (N, num classes) bool: the clip's labels marked A or AV
  background_music: np.ndarray  # (N,) bool
  static_image: np.ndarray  # (N,) bool
  voice_over: np.ndarray  # (N,) bool


def parse_annotation(text: str, class_names: Sequence[str]) -> Annotation:
  """Reads VGGSounder's csv (`video_id,label,modality,background_music,static_image,voice_over`,
  one row per label); a clip's meta-labels are those of its first row, as in the package."""
  index = {name: i for i, name in enumerate(class_names)}
  rows: dict[str, list[dict[str, str]]] = {}
  for row in csv.DictReader(io.StringIO(text, newline="")):
    rows.setdefault(row["video_id"], []).append(row)
  audible = np.zeros((len(rows), len(class_names)), bool)
  meta = np.zeros((len(rows), 3), bool)
  for i, clip_rows in enumerate(rows.values()):
    first = clip_rows[0]
    meta[i] = [first[key].lower() == _TRUE for key in ("background_music", "static_image", "voice_over")]
    for row in clip_rows:
      if row["label"] not in index:
        raise ValueError(f"VGGSounder annotation: unknown class {row['label']!r} (clip {row['video_id']})")
      if row["modality"].upper() in AUDIBLE:
        audible[i, index[row["label"]]] = True
  return Annotation(tuple(rows), audible, meta[:, 0], meta[:, 1], meta[:, 2])


@functools.cache
def load_annotation() -> Annotation:
  """The annotation shipped with the package, in model order."""
  data = resources.files("vggsound_jax").joinpath(ANNOTATION_RESOURCE).read_bytes()
  return parse_annotation(gzip.decompress(data).decode("utf-8"), labels.class_names())


def check_config(config: Any) -> None:
  """Raises ConfigError if `config.eval.vggsounder` cannot work for this config."""
  if config.data.config == "synthetic":
    raise ConfigError("eval.vggsounder", "needs VGGSound's 309 classes; data.config is 'synthetic'")
  if SPLIT not in config.eval.splits:
    raise ConfigError(
      "eval.vggsounder", f"scores the {SPLIT!r} split, which eval.splits {tuple(config.eval.splits)} lacks"
    )


def _top_k_scores(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  n = len(probs)
  positives = int(targets.sum())
  # A stable sort of -p: of tied scores, the lower class index comes first.
  order = np.argsort(-probs, axis=1, kind="stable")
  scores = {}
  for k in TOP_K:
    hits = np.take_along_axis(targets, order[:, :k], axis=1).sum(axis=1)
    right = int(hits.sum())
    scores[f"hit_rate@{k}"] = float(np.mean(hits > 0))
    scores[f"precision@{k}"] = right / (n * k)
    scores[f"recall@{k}"] = right / positives
    scores[f"f1@{k}"] = 2 * right / (n * k + positives)
  return scores


def _auc_scores(probs: np.ndarray, targets: np.ndarray) -> tuple[dict[str, float], int]:
  """Per-class ROC-AUC and average precision, averaged over the classes with both positive
  and negative clips (the others have no ROC-AUC, and the package leaves out both)."""
  roc, pr = [], []
  for c in range(targets.shape[1]):
    positives = int(targets[:, c].sum())
    if 0 < positives < len(targets):
      roc.append(sklearn.metrics.roc_auc_score(targets[:, c], probs[:, c]))
      pr.append(sklearn.metrics.average_precision_score(targets[:, c], probs[:, c]))
  nan = float("nan")
  return {"auc_roc": float(np.mean(roc)) if roc else nan, "auc_pr": float(np.mean(pr)) if pr else nan}, len(roc)


def score(
  probs: np.ndarray,
  clip_ids: Sequence[str],
  *,
  include_background_music: bool = False,
  annotation: Annotation | None = None,
) -> dict[str, Any]:
  """VGGSounder scores of predictions against the audible labels.

  `probs` (N, C): scores in model order (`vggsound_jax.labels`), `clip_ids` (N,) their clips.
  Returns {"metrics": {name: value}, "clips": {what: count}, "classes_in_auc": int, "settings"}.
  With no clip to score, the metrics are NaN.
  """
  annotation = annotation or load_annotation()
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or probs.shape[1] != annotation.audible.shape[1] or len(probs) != len(clip_ids):
    raise ValueError(
      f"VGGSounder scores need (N, {annotation.audible.shape[1]}) scores and N clip ids,"
      f" got {probs.shape} and {len(clip_ids)}"
    )
  row_of = {clip: i for i, clip in enumerate(annotation.clip_ids)}
  scored = annotation.audible.any(axis=1)
  if not include_background_music:
    scored &= ~annotation.background_music
  counts = {"predicted": len(clip_ids), "not_in_annotation": 0, "background_music_left_out": 0, "no_audible_label": 0}
  kept_predictions, kept_rows = [], []
  for j, clip in enumerate(clip_ids):
    i = row_of.get(str(clip))
    if i is None:
      counts["not_in_annotation"] += 1
    elif scored[i]:
      kept_predictions.append(j)
      kept_rows.append(i)
    elif annotation.background_music[i] and not include_background_music:
      counts["background_music_left_out"] += 1
    else:
      counts["no_audible_label"] += 1
  counts["scored"] = len(kept_rows)
  counts["annotated_without_prediction"] = int(scored.sum()) - len(set(kept_rows))

  if kept_rows:
    p, targets = probs[kept_predictions], annotation.audible[kept_rows].astype(np.int64)
    metrics = _top_k_scores(p, targets)
    auc, classes = _auc_scores(p, targets)
    metrics.update(auc)
  else:
    metrics = {f"{m}@{k}": float("nan") for k in TOP_K for m in ("hit_rate", "precision", "recall", "f1")}
    metrics.update(auc_roc=float("nan"), auc_pr=float("nan"))
    classes = 0
  return {
    "metrics": metrics,
    "clips": counts,
    "classes_in_auc": classes,
    "settings": {
      "labels": "audible (A and AV)",
      "background_music": "included" if include_background_music else "left out",
      "annotation": ANNOTATION_SOURCE,
    },
  }


def _strict(value: Any) -> Any:
  """NaN and infinity as null (strict JSON), as metrics.json writes them."""
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def write_results(
  out_dir: str | os.PathLike, probs: np.ndarray, clip_ids: Sequence[str] | None, class_names: Sequence[str]
) -> dict[str, Any]:
  """Scores a split's predictions and writes them to OUT_DIR/vggsounder.json; returns the result."""
  out_dir = Path(out_dir)
  if tuple(class_names) != labels.class_names():
    raise ValueError(f"{out_dir}: VGGSounder scores need the {labels.NUM_CLASSES} VGGSound classes in model order")
  if clip_ids is None:
    raise ValueError(f"{out_dir}: VGGSounder scores need clip ids, and the data has none")
  result = score(probs, clip_ids)
  path = out_dir / RESULT_NAME
  tmp = path.with_name(f".{RESULT_NAME}.tmp")
  tmp.write_text(json.dumps(_strict(result), indent=2) + "\n")
  os.replace(tmp, path)
  return result


def read_results(out_dir: str | os.PathLike) -> dict[str, Any]:
  with open(Path(out_dir, RESULT_NAME), encoding="utf-8") as f:
    return json.load(f)


def format_results(result: dict[str, Any]) -> str:
  """The printed summary: one line of counts, then the scores per k and the AUCs."""

  def fmt(x: float | None) -> str:
    return "  n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"

  clips, m = result["clips"], result["metrics"]
  lines = [
    f"vggsounder ({result['settings']['labels']}, background music {result['settings']['background_music']}):"
    f" {clips['scored']} of {clips['predicted']} clips scored; {clips['not_in_annotation']} not annotated,"
    f" {clips['background_music_left_out']} with background music, {clips['no_audible_label']} with no audible"
    f" label; {clips['annotated_without_prediction']} annotated clips without a prediction",
    "   k  hit_rate  precision  recall     f1",
  ]
  for k in TOP_K:
    lines.append(
      f"  {k:2d}     {fmt(m[f'hit_rate@{k}'])}      {fmt(m[f'precision@{k}'])}   {fmt(m[f'recall@{k}'])}"
      f"  {fmt(m[f'f1@{k}'])}"
    )
  lines.append(
    f"  ROC-AUC {fmt(m['auc_roc'])}  PR-AUC {fmt(m['auc_pr'])} (mean over {result['classes_in_auc']} classes)"
  )
  return "\n".join(lines)
