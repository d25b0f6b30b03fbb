"""Metrics agree with scikit-learn on random predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

from eval.metrics import best_positive_rank, classification_metrics, recall_at_k, topk_indices


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 500, 12
    labels = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), labels] += rng.normal(1.0, 1.0, n)  # better than chance, not perfect
    m = classification_metrics(labels, scores)
    assert m["top1"] == pytest.approx(accuracy_score(labels, scores.argmax(1)), abs=1e-12)
    assert m["top5"] == pytest.approx(
        top_k_accuracy_score(labels, scores, k=5, labels=np.arange(c)), abs=1e-12
    )
    assert m["mean_per_class_recall"] == pytest.approx(
        balanced_accuracy_score(labels, scores.argmax(1)), abs=1e-12
    )
    assert 0.1 < m["top1"] < m["top5"] < 1.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_per_class_recall_ignores_absent_classes_like_sklearn():
    labels = np.array([0, 0, 0, 2, 2, 5])
    preds = np.array([0, 1, 0, 2, 0, 5])
    scores = np.eye(6)[preds]
    m = classification_metrics(labels, scores)
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, preds))


def test_topk_is_best_first_and_deterministic_on_ties():
    scores = np.array([[0.1, 0.9, 0.9, 0.3], [1.0, 1.0, 1.0, 1.0]])
    assert topk_indices(scores, 3).tolist() == [[1, 2, 3], [0, 1, 2]]


def test_recall_at_k_multiple_positives():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(40, 100))
    positives = [rng.choice(100, size=rng.integers(1, 5), replace=False) for _ in range(40)]
    r = recall_at_k(sim, positives, (1, 5, 10))
    # brute force: sort each row, see whether any positive is among the first k
    order = np.argsort(-sim, axis=1)
    for k in (1, 5, 10):
        expect = np.mean([len(set(order[i, :k]) & set(positives[i].tolist())) > 0 for i in range(40)])
        assert r[k] == pytest.approx(expect)
    assert r[1] <= r[5] <= r[10]
    ranks = best_positive_rank(sim, positives)
    assert ranks.min() >= 0 and ranks.max() < 100
