"""The linear probe: a model's embeddings of every clip, computed once and cached, and a
scikit-learn classifier per fold on them.

Embeddings come from the fastest backend here (`serving.backends.load_classifier`, OpenVINO on
a CPU) at one clip length for the whole data set, and are cached under
`embedding_cache_dir()` by a key of the model's content, the data set's, the clip length and
the backend, so a second probe of the same pair (other folds, another C) computes none. The
cache file appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from vggsound_jax.audio.decode import to_clip
from vggsound_jax.serving.backends import export_cache_dir, load_classifier
from vggsound_jax.serving.exported import model_hash

EMBEDDINGS_SUBDIR = "embeddings"


def embedding_cache_dir() -> Path:
  """`$VGGSOUND_JAX_CACHE/embeddings`, or ~/.cache/vggsound_jax/embeddings (beside the exports)."""

  return export_cache_dir().parent / EMBEDDINGS_SUBDIR


def cache_key(model_dir: str | os.PathLike, dataset_id: str, num_samples: int, backend: str, precision: str) -> str:

  parts = (model_hash(model_dir), dataset_id, num_samples, backend, precision)
  return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:32]


def compute_embeddings(
  source: Sequence[dict],
  model_dir: str | os.PathLike,
  *,
  dataset_id: str,
  num_samples: int,
  backend: str = "auto",
  batch_size: int = 16,
  cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
  """(len(source), D) float32: the model's embedding of each clip, tiled or cut to `num_samples`.

  Read from the cache when there, else computed (with a progress bar) and cached. `dataset_id`
  names the data set's content (its build fingerprint).
  """

  classifier, _ = load_classifier(model_dir, backend=backend, batch_size=batch_size, num_samples=num_samples)
  key = cache_key(model_dir, dataset_id, num_samples, classifier.backend, classifier.precision)
  path = Path(cache_dir or embedding_cache_dir()) / f"{key}.npy"
  if path.is_file():
    cached = np.load(path)
    if cached.shape == (len(source), classifier.embedding_dim) and np.isfinite(cached).all():
      return cached
  out = np.zeros((len(source), classifier.embedding_dim), np.float32)
  with tqdm(total=len(source), desc=f"embeddings ({classifier.backend})", unit="clip", mininterval=1.0) as progress:
    for start in range(0, len(source), batch_size):
      indices = range(start, min(start + batch_size, len(source)))
      clips = np.stack([to_clip(np.asarray(source[i]["audio"], np.int16), num_samples) for i in indices])
      out[start : start + len(clips)] = classifier(clips)[1]
      progress.update(len(clips))
  if not np.isfinite(out).all():
    raise ValueError(f"{model_dir}: the model gave non-finite embeddings")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    np.save(f, out)
  os.replace(tmp, path)
  return out


def fit_predict(
  embeddings: np.ndarray,
  labels: np.ndarray,
  train: np.ndarray,
  test: np.ndarray,
  num_classes: int,
  probe: ml_collections.ConfigDict,
  seed: int = 0,
) -> np.ndarray:
  """Probabilities (len(test), num_classes) of a logistic regression on standardised embeddings
  fitted on the `train` rows; a class absent from them gets probability 0."""

  classifier = make_pipeline(
    StandardScaler(), LogisticRegression(C=probe.C, max_iter=probe.max_iter, random_state=seed)
  )
  classifier.fit(embeddings[train], labels[train])
  probs = np.zeros((len(test), num_classes), np.float32)
  probs[:, classifier.classes_] = classifier.predict_proba(embeddings[test])
  return probs
