"""The pool's cross-file shuffle: merge levels keep its file opens linear, and its result unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from crawl import pool_dedup
from crawl.extract import ExtractStage
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from tests.crawl.test_extract import _first_occurrences, _overlapping_pools


class _CountingFS:
    """An fsspec filesystem behind a proxy that records every ``open`` (path, mode)."""

    def __init__(self, fs):
        self._fs = fs
        self.opens: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name != "open":
            return attr

        def open_(path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
            self.opens.append((path, mode))
            return attr(path, mode, *args, **kwargs)

        return open_

    def shuffle_opens(self, side: str, level: int | None = None, mode: str = "rb") -> list[str]:
        """Shuffle files of ``side`` (at ``level``, or any) opened in ``mode``; a write's temporary name counts."""
        where = f"/pool/_dedup/{side}/" + (f"{level}/" if level is not None else "")
        return [p for p, m in self.opens if where in p and m == mode]


def _extract(tmp_path, make_config, fan_in: int) -> tuple[Any, RunDir, _CountingFS]:
    """The pool of ``_overlapping_pools`` in 40 parts of 50 rows, uids in 50 buckets of ~40: G=40, B=50.
    On memory:// every task runs in this process, through ``run.fs``, so every open is seen."""
    url = f"memory://pool-dedup-{tmp_path.name}-{fan_in}"
    cfg = make_config(
        f"extract.inputs=[{{path: '{tmp_path}/pool-*.jsonl', kind: jsonl}}]",
        "extract.rows_per_part=50",
        "extract.dedup_bucket_rows=40",
        f"extract.dedup_fan_in={fan_in}",
        run=url,
    )
    run = RunDir(url)
    fs = run.fs = _CountingFS(run.fs)
    return run_stage(ExtractStage(cfg, run), progress=False), run, fs


def test_merge_levels_give_the_same_pool_with_linear_file_opens(tmp_path, make_config):
    files = _overlapping_pools(tmp_path, n_files=5, rows=400)
    first = _first_occurrences(files)
    runs = {fan_in: _extract(tmp_path, make_config, fan_in) for fan_in in (1024, 5, 2)}

    # today's layout (fan-in above G and B: no merge level) and the merged ones keep the same rows, in
    # the same parts, byte for byte: the first occurrence of each pair in part order
    pools = {}
    for fan_in, (result, run, _) in runs.items():
        pools[fan_in] = {p: run.read_bytes(p) for p in run.glob("pool/part-*.parquet")}
        got = {(r["url"], r["text"]) for p in pools[fan_in] for r in run.read_parquet(p).to_pylist()}
        assert got == set(first) and result.stats.counts["pool_rows"] == len(first)
        assert not run.exists("pool/_dedup")
    assert len(pools[1024]) == 40
    assert pools[5] == pools[1024] and pools[2] == pools[1024]
    assert runs[5][0].stats.dropped == runs[2][0].stats.dropped == runs[1024][0].stats.dropped

    _, _, flat = runs[1024]
    groups, buckets = len(flat.shuffle_opens("uids", 0, "wb")), len(flat.shuffle_opens("drops", 0, "wb"))
    assert (groups, buckets) == (40, 50)
    # without merges every bucket task opens every group's file, and every group task every bucket's
    assert len(flat.shuffle_opens("uids")) == len(flat.shuffle_opens("drops")) == groups * buckets

    for fan_in in (5, 2):
        _, run, fs = runs[fan_in]
        uids, drops = pool_dedup.file_counts(groups, fan_in), pool_dedup.file_counts(buckets, fan_in)
        assert uids[-1] <= fan_in and drops[-1] <= fan_in and len(uids) > 2
        for side, counts in (("uids", uids), ("drops", drops)):
            for level, n in enumerate(counts):
                assert len(fs.shuffle_opens(side, level, "wb")) == n  # each file written once
                if level:  # and each file below read once, by the merge above it
                    assert len(fs.shuffle_opens(side, level - 1)) == counts[level - 1]
            assert run.exists(f"stats/extract.{side}_merge{len(counts) - 1}.json")
        # bucket tasks open the last uid level's files, group tasks the last drops level's
        assert len(fs.shuffle_opens("uids", len(uids) - 1)) == buckets * uids[-1]
        assert len(fs.shuffle_opens("drops", len(drops) - 1)) == groups * drops[-1]
        reads = len(fs.shuffle_opens("uids")) + len(fs.shuffle_opens("drops"))
        assert reads == sum(uids[:-1]) + sum(drops[:-1]) + buckets * uids[-1] + groups * drops[-1]
        assert reads <= 2 * fan_in * (groups + buckets)  # linear in G + B, against G x B above


@pytest.mark.parametrize(("n", "fan_in", "counts"), [
    (1, 32, [1]), (32, 32, [32]), (33, 32, [33, 2]), (1000, 32, [1000, 32]), (1025, 32, [1025, 33, 2]),
    (40, 2, [40, 20, 10, 5, 3, 2]), (0, 4, [1]),
])
def test_file_counts_per_level(n, fan_in, counts):
    assert pool_dedup.file_counts(n, fan_in) == counts


def test_merge_keyed_concatenates_each_key_in_input_order(tmp_path):
    import pyarrow as pa

    run = RunDir(str(tmp_path / "r"))
    pool_dedup.write_keyed(run, "a.parquet", pa.table({"uid": ["a1", "a3"], "part": pa.array([0, 0], pa.int32()),
                                                       "k": [1, 3]}), "k")
    pool_dedup.write_keyed(run, "b.parquet", pa.table({"uid": ["b0", "b3", "b3x"],
                                                       "part": pa.array([1, 1, 1], pa.int32()), "k": [0, 3, 3]}), "k")
    pool_dedup.write_keyed(run, "e.parquet", pa.table({"uid": pa.array([], pa.string()),
                                                       "part": pa.array([], pa.int32()), "k": pa.array([], pa.int64())}), "k")
    assert pool_dedup.merge_keyed(run, ["a.parquet", "e.parquet", "b.parquet"], "m.parquet") == 5
    got = {k: pool_dedup.read_keyed(run, "m.parquet", k) for k in range(5)}
    assert {k: t.column("uid").to_pylist() for k, t in got.items() if t is not None} == {
        0: ["b0"], 1: ["a1"], 3: ["a3", "b3", "b3x"]}
    assert got[2] is None and got[4] is None
