"""The CLIP linear probe on fixed features: L-BFGS logistic regression, C swept on a validation split.

Protocol (CLIP paper, appendix A.3): fit scikit-learn ``LogisticRegression(solver="lbfgs")`` on the
image encoder's features; choose the L2 strength on a validation split (carved from the training
split when none is given); refit on train + validation with the chosen C; report on test.

Features are standardised with the training split's mean and standard deviation first: L-BFGS then
converges in far fewer iterations and the C grid means the same thing for every model.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from eval.config import DEFAULT_C_GRID


@dataclass
class ProbeResult:
    """What a probe produced: the chosen C, validation accuracy per C, test predictions and metrics."""

    best_c: float
    val_accuracy: dict[float, float]
    test_pred: np.ndarray
    test_scores: np.ndarray
    classes: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded split of ``range(len(labels))`` into (kept, held_out); held_out ≈ ``fraction``.

    Each class gives ``round(fraction * count)`` items (at least one when it has two or more), so
    rare classes stay in both parts. Deterministic for a seed; both parts sorted.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        take = round(fraction * len(idx))
        if len(idx) >= 2:
            take = min(max(take, 1), len(idx) - 1)
        else:
            take = 0
        held.append(idx[:take])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0  # constant features stay constant instead of dividing by zero
    return mean, std


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # Tiny C on standardised features converges fine; large C may stop at max_iter, which is the
        # documented budget, not an error worth a wall of warnings.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def run_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    c_grid: tuple[float, ...] | list[float] = DEFAULT_C_GRID,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """Sweep C on validation, refit on train+val with the best C, predict test.

    Without ``x_val`` a stratified ``val_fraction`` of the training split is held out for the sweep.
    Ties in validation accuracy go to the smaller C (the stronger regulariser).
    """
    if len(c_grid) == 0:
        raise ValueError("c_grid is empty; give at least one C")
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if x_val is None:
        keep, held = split_indices(y_train, val_fraction, seed)
        x_fit, y_fit, x_v, y_v = x_train[keep], y_train[keep], x_train[held], y_train[held]
    else:
        x_fit, y_fit = x_train, y_train
        x_v, y_v = np.asarray(x_val, dtype=np.float64), np.asarray(y_val)
    if len(np.unique(y_fit)) < 2:
        raise ValueError("the probe's training split has fewer than two classes; give more training images")

    with _blas_threads(x_train.size):
        return _sweep_and_refit(x_fit, y_fit, x_v, y_v, x_test, y_test, c_grid, max_iter, seed)


#: Below this many feature values a fit is small enough that BLAS threads cost more than they give
#: (and on a shared machine spinning threads slow it down many times); above it all cores are used.
SMALL_PROBLEM = 5_000_000


@contextlib.contextmanager
def _blas_threads(n_values: int):
    if n_values >= SMALL_PROBLEM:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _sweep_and_refit(x_fit, y_fit, x_v, y_v, x_test, y_test, c_grid, max_iter: int, seed: int) -> ProbeResult:
    from eval.metrics import classification_metrics

    mean, std = _standardiser(x_fit)
    val_acc: dict[float, float] = {}
    for c in sorted(float(c) for c in c_grid):
        clf = _fit((x_fit - mean) / std, y_fit, c, max_iter, seed)
        val_acc[c] = float((clf.predict((x_v - mean) / std) == y_v).mean()) if len(y_v) else float("nan")
    best_c = max(val_acc, key=lambda c: (val_acc[c], -c))

    # Refit on train + validation, standardised with their joint statistics.
    x_all = np.concatenate([x_fit, x_v]) if len(y_v) else x_fit
    y_all = np.concatenate([y_fit, y_v]) if len(y_v) else y_fit
    mean, std = _standardiser(x_all)
    clf = _fit((x_all - mean) / std, y_all, best_c, max_iter, seed)
    scores = clf.predict_proba((x_test - mean) / std)
    classes = clf.classes_
    # Scores cover only classes seen in training; spread them onto the full label range for top-k.
    n_cls = int(max(classes.max(), y_test.max() if len(y_test) else 0)) + 1
    full = np.full((len(x_test), n_cls), -1.0)
    full[:, classes] = scores
    pred = classes[scores.argmax(axis=1)]
    metrics = classification_metrics(y_test, full)
    metrics["best_c"] = best_c
    metrics["val_top1"] = val_acc[best_c]
    metrics["n_train"] = float(len(y_all))
    return ProbeResult(best_c, val_acc, pred, full, classes, metrics)
