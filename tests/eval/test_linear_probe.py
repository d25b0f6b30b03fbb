"""The linear probe: MNIST with a fixed random-init model beats chance widely; C comes from the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.config import DEFAULT_C_GRID, LinearProbeSpec
from eval.linear_probe import run_probe, split_indices


def test_documented_grid():
    assert tuple(10.0**k for k in range(-6, 7)) == DEFAULT_C_GRID
    assert LinearProbeSpec(train="x").c_grid == list(DEFAULT_C_GRID)
    with pytest.raises(ValueError, match="c_grid values must be > 0"):
        LinearProbeSpec(train="x", c_grid=[1.0, 0.0])


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), [10, 20, 30, 2, 1])
    keep, held = split_indices(labels, 0.2, seed=3)
    assert len(set(keep) & set(held)) == 0 and len(keep) + len(held) == len(labels)
    assert sorted(np.bincount(labels[held], minlength=5).tolist()) == sorted([2, 4, 6, 1, 0])
    _, h2 = split_indices(labels, 0.2, seed=3)
    assert np.array_equal(held, h2)
    assert not np.array_equal(held, split_indices(labels, 0.2, seed=4)[1])


def test_given_validation_split_is_used():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] > 0).astype(int)
    x_val = rng.normal(size=(100, 5))
    res = run_probe(
        x[:200], y[:200], x[200:], y[200:], x_val, (x_val[:, 0] > 0).astype(int), c_grid=[1e-6, 1.0]
    )
    assert res.best_c == 1.0 and res.val_accuracy[1.0] > 0.9 > res.val_accuracy[1e-6] - 0.5
    assert res.metrics["top1"] > 0.9
    assert res.metrics["n_train"] == 300  # refit on train + val


@pytest.mark.slow
def test_mnist_probe_on_random_init_features(shared_data):
    from eval.features import evalset_features
    from pipeline.evalsets import open_evalset
    from pipeline.evalsets_spec import EvalSetSpec
    from train.model import build_model
    from train.transforms import eval_transform

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_trained_model: one thread is far faster on a shared 2-core box
    try:
        spec = EvalSetSpec(name="mnist", kind="mnist", path=str(shared_data / "eval" / "mnist"), limit=3000)
        torch.manual_seed(0)
        model = build_model("tiny-vit").eval()  # fixed random init, never trained
        feats = evalset_features(
            model, eval_transform(32), open_evalset(spec), torch.device("cpu"), 500, progress=False
        )
    finally:
        torch.set_num_threads(before)
    x, y = feats.features, feats.labels
    assert x.shape == (3000, 64) and not feats.failed
    res = run_probe(x[:2000], y[:2000], x[2000:], y[2000:], seed=0)  # val carved from the 2000
    assert res.best_c in DEFAULT_C_GRID
    assert set(res.val_accuracy) == set(DEFAULT_C_GRID)
    assert res.metrics["top1"] > 0.5, res.metrics  # chance is 0.1
    # the sweep matters: the most regularised C is far worse than the chosen one
    assert res.val_accuracy[1e-6] < res.val_accuracy[res.best_c] - 0.2
