"""Count reduction as a tree of sub-stages: the same totals as a serial add-up, resumable, cleaned up."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from crawl import count_reduce
from crawl.count_reduce import add_counts, reduce_counts, sparse_counts
from pipeline.errors import StageFailed
from pipeline.rundir import RunDir
from pipeline.stage import Stage


class _Parent(Stage):
    name = "counting"


def _write_parts(run: RunDir, n_parts: int, n_entries: int, seed: int) -> list[str]:
    """Sparse count files like match tasks write: a long tail, each part holding a random subset."""
    rng = np.random.default_rng(seed)
    files = []
    for k in range(n_parts):
        dense = rng.zipf(1.3, n_entries).astype(np.int64) * (rng.random(n_entries) < 0.3)
        rel = f"counting/_counts/part-{k:05d}.parquet"
        run.write_parquet(rel, sparse_counts(dense))
        files.append(rel)
    return files


def _reference(run: RunDir, files: list[str], size: int) -> np.ndarray:
    """Today's driver loop: np.add.at per part."""
    total = np.zeros(size, np.int64)
    for rel in files:
        t = run.read_parquet(rel)
        np.add.at(total, t.column("entry_id").to_numpy(), t.column("count").to_numpy())
    return total


@pytest.mark.parametrize("fan_in", [2, 3, 50])
def test_tree_equals_serial_sum_in_process(make_config, fan_in):
    cfg = make_config(run=f"memory://count-reduce-{fan_in}")
    run = RunDir(cfg.run)
    files = _write_parts(run, 11, 300, seed=fan_in)
    parent = _Parent(cfg, run)
    got = reduce_counts(parent, files, 300, fan_in)
    assert got.dtype == np.int64 and np.array_equal(got, _reference(run, files, 300))
    levels = {2: 3, 3: 2, 50: 0}[fan_in]  # 11 → 6 → 3 → 2 files with fan-in 2, 11 → 4 → 2 with 3
    assert run.glob("_done/counting.counts*") == [f"_done/counting.counts{i}" for i in range(1, levels + 1)]
    count_reduce.cleanup(run, "counting")
    assert not run.glob("_done/counting.counts*") and not run.exists("counting/_counts_reduce")


def test_tree_on_ray_resumes_after_a_failed_group(tmp_path, make_config, ray_local):
    cfg = make_config("ray.task_retries=0")
    run = RunDir(cfg.run)
    files = _write_parts(run, 9, 500, seed=5)
    good = run.read_bytes(files[4])
    bad = pa.table({"entry_id": pa.array([7, 3], pa.int32()), "count": pa.array([1, 1], pa.int64())})
    run.write_parquet(files[4], bad)  # not ascending: its group's task fails, the others finish
    parent = _Parent(cfg, run)
    with pytest.raises(StageFailed):
        reduce_counts(parent, files, 500, fan_in=3)
    failed = run.read_json("_failed/counting.counts1/g00001.json")["error"]
    assert "strictly ascending" in failed and "part-00004.parquet" in failed
    assert run.done_tasks("counting.counts1") == {"g00000", "g00002"}
    run.write_bytes(files[4], good)
    got = reduce_counts(parent, files, 500, fan_in=3)  # reruns group 1 only, then the driver sums 3
    assert np.array_equal(got, _reference(run, files, 500))
    # a task of the parent stage that rewrites part counts makes what is left stale
    count_reduce.invalidate(run, "counting")
    assert not run.glob("_done/counting.counts*") and not run.exists("counting/_counts_reduce")


def test_other_files_start_the_reduction_over(make_config):
    cfg = make_config(run="memory://count-reduce-layout")
    run = RunDir(cfg.run)
    files = _write_parts(run, 5, 100, seed=1)
    parent = _Parent(cfg, run)
    reduce_counts(parent, files, 100, fan_in=2)
    # the same work dir, other inputs (no cleanup in between): old group sums must not be reused
    got = reduce_counts(parent, files[1:], 100, fan_in=2)
    assert np.array_equal(got, _reference(run, files[1:], 100))


def test_add_counts_grows_and_names_a_bad_file():
    total = add_counts(np.zeros(2, np.int64), sparse_counts(np.array([0, 3, 0, 0, 9])), "a.parquet")
    assert total.tolist() == [0, 3, 0, 0, 9]
    dup = pa.table({"entry_id": pa.array([1, 1], pa.int32()), "count": pa.array([2, 2], pa.int64())})
    with pytest.raises(ValueError, match=r"x/part-1\.parquet: entry_id must be non-negative and strictly"):
        add_counts(total, dup, "x/part-1.parquet")
