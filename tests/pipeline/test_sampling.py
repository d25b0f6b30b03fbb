"""The seeded, class-stratified sample behind `limit` and `eval_limit`."""

from __future__ import annotations

import numpy as np

from pipeline.sampling import class_allocation, random_sample, stratified_sample


def test_proportional_shares_with_every_class_present():
    labels = np.repeat([0, 1, 2, 3], [700, 200, 90, 10])  # sorted by class, unbalanced
    idx = stratified_sample(labels, 100, seed=3)
    counts = np.bincount(labels[idx], minlength=4)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and (np.diff(idx) > 0).all()
    assert counts.sum() == 100 and (counts >= 1).all()
    assert abs(counts[0] - 70) <= 1 and abs(counts[1] - 20) <= 1 and abs(counts[2] - 9) <= 1


def test_deterministic_per_seed_and_all_when_n_covers_the_set():
    labels = np.arange(50) % 5
    assert stratified_sample(labels, 20, 0).tolist() == stratified_sample(labels, 20, 0).tolist()
    assert stratified_sample(labels, 20, 0).tolist() != stratified_sample(labels, 20, 1).tolist()
    assert stratified_sample(labels, 50, 0).tolist() == list(range(50))
    assert stratified_sample(labels, 500, 0).tolist() == list(range(50))


def test_fewer_images_than_classes_gives_one_per_class_drawn():
    alloc = class_allocation(np.array([5, 5, 5, 5]), 2, np.random.default_rng(0))
    assert alloc.sum() == 2 and set(alloc.tolist()) <= {0, 1}


def test_random_sample_for_sets_without_classes():
    idx = random_sample(100, 10, seed=0)
    assert len(idx) == 10 and (np.diff(idx) > 0).all() and idx.tolist() != list(range(10))
    assert random_sample(5, 10, seed=0).tolist() == list(range(5))
