"""The baselines every reported accuracy stands beside, computed from the labels actually evaluated.

An accuracy alone says little: 14 % on ten balanced classes is above chance, 14 % on a subset that
holds one class is far below what "always answer that class" gets. So each classification result
carries:

* ``chance_top1``: the expected top-1 of a guess drawn from the evaluated label distribution,
  Σ pᵢ² (1/K on K balanced classes, 1.0 on a single class);
* ``majority_top1``: the top-1 of always answering the most frequent evaluated class, max pᵢ;
* ``n_classes_present``: classes among the evaluated images, beside ``n_classes_in_set``, the classes
  among all the set's records; fewer present than in the set is a warning.
"""

from __future__ import annotations

import numpy as np


def label_baselines(labels: np.ndarray, set_labels: np.ndarray | None = None) -> dict[str, float]:
    """``chance_top1``, ``majority_top1``, ``n_classes_present`` (and ``n_classes_in_set`` when given)."""
    labels = np.asarray(labels)
    out: dict[str, float] = {}
    if len(labels):
        _, counts = np.unique(labels, return_counts=True)
        p = counts / counts.sum()
        out.update(
            chance_top1=float((p**2).sum()),
            majority_top1=float(p.max()),
            n_classes_present=float(len(counts)),
        )
    else:
        out.update(chance_top1=float("nan"), majority_top1=float("nan"), n_classes_present=0.0)
    if set_labels is not None:
        out["n_classes_in_set"] = float(len(np.unique(np.asarray(set_labels))))
    return out


def class_warning(dataset: str, metrics: dict[str, float]) -> str | None:
    """A warning when the evaluated images hold fewer classes than the set, else None."""
    present = int(metrics.get("n_classes_present", 0))
    in_set = metrics.get("n_classes_in_set")
    if in_set is None or present >= int(in_set):
        return None
    return (
        f"{dataset}: only {present} of the set's {int(in_set)} classes were evaluated; the accuracy does "
        f"not describe the set (majority-class rate {metrics['majority_top1']:.1%}, chance "
        f"{metrics['chance_top1']:.1%}); raise `limit` or remove it"
    )


def describe(metrics: dict[str, float]) -> str:
    """``top-1 42.0 % (chance 10.0 %, majority 10.0 %, 10 classes)`` for console lines and summaries."""
    text = f"top-1 {metrics['top1']:.1%} (chance {metrics['chance_top1']:.1%}, majority {metrics['majority_top1']:.1%}"
    present = int(metrics.get("n_classes_present", 0))
    in_set = metrics.get("n_classes_in_set")
    if in_set is not None and present < int(in_set):
        return text + f", {present} of {int(in_set)} classes)"
    return text + f", {present} classes)"
