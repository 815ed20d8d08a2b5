"""compute_metrics against sklearn and scipy called directly (docs/original_pipeline.md#metrics)."""

import numpy as np
import pytest
import scipy.special
import scipy.stats
import sklearn.metrics

from vggsound_jax.metrics import compute_metrics


def _random_probs(rng, n, c):
  return scipy.special.softmax(rng.normal(size=(n, c)) * 2.0, axis=1)


def _reference(probs, targets):
  """Per-class sklearn over the classes with positives, d' from scipy's normal quantile."""
  kept = [k for k in range(targets.shape[1]) if targets[:, k].any()]
  aps = [sklearn.metrics.average_precision_score(targets[:, k], probs[:, k]) for k in kept]
  aucs = [sklearn.metrics.roc_auc_score(targets[:, k], probs[:, k]) for k in kept]
  m_auc = np.mean(aucs)
  return np.mean(aps), m_auc, np.sqrt(2) * scipy.stats.norm.ppf(m_auc), len(kept)


def test_int_labels_match_sklearn_and_scipy():
  rng = np.random.default_rng(0)
  n, c = 200, 7
  labels = rng.integers(0, c, n)
  probs = _random_probs(rng, n, c)
  probs[np.arange(n), labels] += 0.3 * rng.random(n)  # better than chance, not perfect
  m = compute_metrics(probs, labels)
  m_ap, m_auc, d_prime, kept = _reference(probs, np.eye(c)[labels])
  assert m["mAP"] == pytest.approx(m_ap, abs=1e-12)
  assert m["mAUC"] == pytest.approx(m_auc, abs=1e-12)
  assert m["d_prime"] == pytest.approx(d_prime, abs=1e-12)
  assert m["top1"] == pytest.approx(sklearn.metrics.top_k_accuracy_score(labels, probs, k=1))
  assert m["top5"] == pytest.approx(sklearn.metrics.top_k_accuracy_score(labels, probs, k=5, labels=np.arange(c)))
  assert m["num_clips"] == n and m["classes_left_out"] == 0 and kept == c
  assert m["ap"].shape == m["auc"].shape == m["count"].shape == (c,)
  np.testing.assert_array_equal(m["count"], np.bincount(labels, minlength=c))


def test_class_without_positives_is_left_out_and_counted():
  rng = np.random.default_rng(1)
  n, c = 120, 6
  labels = rng.choice([0, 1, 3, 5], n)  # classes 2 and 4 never occur
  probs = _random_probs(rng, n, c)
  m = compute_metrics(probs, labels)
  assert m["classes_left_out"] == 2
  assert np.isnan(m["ap"][[2, 4]]).all() and np.isnan(m["auc"][[2, 4]]).all()
  m_ap, m_auc, d_prime, kept = _reference(probs, np.eye(c)[labels])
  assert kept == 4
  assert m["mAP"] == pytest.approx(m_ap, abs=1e-12)
  assert m["mAUC"] == pytest.approx(m_auc, abs=1e-12)
  assert m["d_prime"] == pytest.approx(d_prime, abs=1e-12)
  assert np.isfinite([m["mAP"], m["mAUC"], m["d_prime"]]).all()


def test_multi_hot_labels():
  rng = np.random.default_rng(2)
  n, c = 150, 5
  targets = (rng.random((n, c)) < 0.3).astype(int)
  targets[:, 4] = 0  # no positives: left out
  probs = rng.random((n, c))
  m = compute_metrics(probs, targets)
  m_ap, m_auc, d_prime, kept = _reference(probs, targets)
  assert m["classes_left_out"] == c - kept == 1
  assert m["mAP"] == pytest.approx(m_ap, abs=1e-12)
  assert m["mAUC"] == pytest.approx(m_auc, abs=1e-12)
  assert m["d_prime"] == pytest.approx(d_prime, abs=1e-12)
  # top-1 is right when the best class is one of the clip's positives.
  assert m["top1"] == pytest.approx(np.mean(targets[np.arange(n), probs.argmax(1)] > 0))
  top5_hit = np.take_along_axis(targets, np.argsort(-probs, 1)[:, :5], 1).any(1)
  assert m["top5"] == pytest.approx(top5_hit.mean())


def test_perfect_predictions():
  labels = np.array([0, 1, 2, 1, 0])
  m = compute_metrics(np.eye(3)[labels] * 0.9 + 0.05, labels)
  assert m["mAP"] == 1.0 and m["mAUC"] == 1.0 and m["top1"] == 1.0
  assert m["d_prime"] == np.inf  # sqrt(2) * Phi^-1(1)


def test_bad_shapes_are_reported():
  with pytest.raises(ValueError, match="labels"):
    compute_metrics(np.ones((4, 3)), np.ones((4, 2)))
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    compute_metrics(np.ones((2, 3)), np.array([0, 3]))
