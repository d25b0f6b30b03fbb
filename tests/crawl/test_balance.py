"""Balancing: identical for any task split and order; kept counts within bounds of min(count, t)."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from crawl.balance import BalanceStage, entry_table, expected_keep, keep_mask
from crawl.uid import draw_thresholds, make_uid, pair_uniform, u64_hex, uid_to_u64
from pipeline.errors import StageFailed
from pipeline.rundir import RunDir
from pipeline.runner import run_stage


def _rows(n: int, n_entries: int, seed: int, max_entries_per_row: int = 3) -> list[dict]:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** 1.1 for i in range(n_entries)]  # a long tail, like real entry counts
    rows = []
    for i in range(n):
        k = rng.randint(1, max_entries_per_row)
        ids = sorted(set(rng.choices(range(n_entries), weights, k=k)))
        url, text = f"https://img.example.org/{i}.jpg", f"caption {i}"
        rows.append({"uid": make_uid(url, text), "url": url, "text": text, "entry_ids": ids})
    return rows


def _write_match(run: RunDir, rows: list[dict], n_parts: int, shuffle_seed: int | None) -> None:
    rows = list(rows)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    schema = pa.schema(
        [
            ("uid", pa.string()),
            ("url", pa.string()),
            ("text", pa.string()),
            ("entry_ids", pa.list_(pa.int32())),
        ]
    )
    for k in range(n_parts):
        part = rows[k::n_parts]
        run.write_parquet(f"match/part-{k:05d}.parquet", pa.Table.from_pylist(part, schema=schema))
    counts = np.bincount([e for r in rows for e in r["entry_ids"]], minlength=0)
    run.write_parquet(
        "match/counts.parquet",
        pa.table(
            {"entry_id": pa.array(range(len(counts)), pa.int32()), "count": pa.array(counts, pa.int64())}
        ),
    )


def _curated(run: RunDir) -> list[tuple]:
    return sorted(
        (r["uid"], tuple(r["entry_ids"]))
        for p in run.glob("curated/part-*.parquet")
        for r in run.read_parquet(p).to_pylist()
    )


def test_same_output_for_any_split_and_order(tmp_path, make_config, ray_local):
    rows = _rows(20_000, 60, seed=1)
    outputs = []
    for name, parts, shuffle in (("one", 1, None), ("four", 4, 7), ("seven", 7, 99)):
        url = str(tmp_path / name) if name == "four" else f"memory://balance-{name}"  # "four": on Ray
        cfg = make_config("balance.t=400", "seed=3", run=url)
        run = RunDir(cfg.run)
        _write_match(run, rows, parts, shuffle)
        stage = BalanceStage(cfg, run)
        stage.count_fan_in = {1: 32, 4: 3, 7: 2}[parts]  # 4 and 7 parts: summed by a tree of sub-stages
        res = run_stage(stage, progress=False)
        assert res.stats.counts["in"] == len(rows)
        assert res.stats.counts["out"] + res.stats.dropped["balanced_out"] == len(rows)
        outputs.append(_curated(run))
        ec = run.read_parquet("balance/entry_counts.parquet")
        assert ec.column_names == ["entry_id", "entry", "count_before", "count_after"]
        kept = np.bincount([e for _, ids in outputs[-1] for e in ids], minlength=ec.num_rows)
        assert ec.column("count_after").to_pylist() == kept.tolist()
        assert not run.glob("_done/balance.counts*") and not run.exists("balance/_counts_reduce")
        assert run.read_bytes("balance/longtail.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert outputs[0] == outputs[1] == outputs[2]
    assert 0 < len(outputs[0]) < len(rows)
    # another seed decides differently
    cfg = make_config("balance.t=400", "seed=4", run="memory://balance-seed4")
    run = RunDir(cfg.run)
    _write_match(run, rows, 1, None)
    run_stage(BalanceStage(cfg, run), progress=False)
    assert _curated(run) != outputs[0]


def test_kept_counts_within_bounds_of_min_count_t():
    # One entry per row: entry e keeps Binomial(count_e, min(1, t / count_e)) rows.
    t = 300
    counts = [50, 299, 300, 301, 600, 1_000, 2_500, 5_000, 12_000]
    ids, uids = [], []
    for e, c in enumerate(counts):
        for i in range(c):
            ids.append([e])
            uids.append(make_uid(f"https://x.org/{e}/{i}.jpg", "t"))
    p = np.array([min(1.0, t / c) for c in counts])
    entry_ids = pa.array(ids, pa.list_(pa.int32()))
    keep = keep_mask(pa.array(uids), entry_ids, entry_table(p, 0))
    kept = np.bincount(np.array([i[0] for i in ids])[keep], minlength=len(counts))
    for e, c in enumerate(counts):
        if c <= t:
            assert kept[e] == c  # p = 1: everything is kept
        else:
            sd = math.sqrt(c * p[e] * (1 - p[e]))
            assert abs(kept[e] - t) <= 5 * sd, (c, kept[e])
    assert abs(expected_keep(entry_ids, p) - sum(min(c, t) for c in counts)) < 1e-6


def test_multi_entry_rows_keep_probability():
    # A row with entries of p = 0.5 and 0.2 is kept with probability 1 - 0.5 * 0.8 = 0.6.
    n = 40_000
    uids = pa.array([make_uid(f"https://x.org/{i}", "c") for i in range(n)])
    keep = keep_mask(
        uids, pa.array([[0, 1]] * n, pa.list_(pa.int32())), entry_table(np.array([0.5, 0.2]), 11)
    )
    assert abs(keep.mean() - 0.6) < 5 * math.sqrt(0.6 * 0.4 / n)
    assert abs(expected_keep(pa.array([[0, 1]], pa.list_(pa.int32())), np.array([0.5, 0.2])) - 0.6) < 1e-12


def _plain_keep(uids: list[str], ids: list[list[int]], p: np.ndarray, seed: int) -> np.ndarray:
    """The definition, pair by pair: kept iff some entry's draw u(uid, entry, seed) < p[entry]."""
    u64 = uid_to_u64(pa.array(uids))
    return np.array(
        [
            any(pair_uniform(u64[r : r + 1], np.array([e]), seed)[0] < p[e] for e in row)
            for r, row in enumerate(ids)
        ]
    )


def test_shortcut_for_sure_entries_decides_like_the_definition():
    rng = random.Random(5)
    n_entries = 40
    p = np.array([1.0 if e % 3 == 0 else rng.choice([0.0, 0.05, 0.5, 0.999]) for e in range(n_entries)])
    ids = [sorted(rng.sample(range(n_entries), rng.randint(0, 4))) for _ in range(3_000)]
    uids = [make_uid(f"https://x.org/{i}", "c") for i in range(len(ids))]
    want = _plain_keep(uids, ids, p, seed=9)
    arr = pa.array(ids, pa.list_(pa.int32()))
    assert (keep_mask(pa.array(uids), arr, entry_table(p, 9)) == want).all()
    no_sure = np.minimum(p, 0.9)  # no row can take the shortcut: every pair is drawn
    assert (
        keep_mask(pa.array(uids), arr, entry_table(no_sure, 9)) == _plain_keep(uids, ids, no_sure, seed=9)
    ).all()
    # a slice of the arrays (offsets not starting at 0) decides the same for its rows
    sliced = keep_mask(pa.array(uids).slice(100, 500), arr.slice(100, 500), entry_table(p, 9))
    assert (sliced == want[100:600]).all()
    assert 0 < want.sum() < len(ids)
    # foreign uids (32 non-hex characters, other lengths) are drawn on their hashed value, row by row
    odd = list(uids)
    for i in range(0, len(odd), 7):
        odd[i] = ("g" * 32) if i % 2 else f"x{i}"
    got = keep_mask(pa.array(odd), arr, entry_table(no_sure, 9))  # not all 32 long: uid_to_u64 first
    assert (got == _plain_keep(odd, ids, no_sure, seed=9)).all()
    # all 32 long, some not hex: the kernel reads the hex ones and leaves the others to their hash
    thirty_two = [("g" * 16 + u[16:]) if i % 5 == 0 else u for i, u in enumerate(uids)]
    got = keep_mask(pa.array(thirty_two), arr, entry_table(no_sure, 9))
    assert (got == _plain_keep(thirty_two, ids, no_sure, seed=9)).all()


def test_entry_id_outside_the_probabilities_is_a_clear_error():
    # The compiled pass has no bounds checks: an id the counts never saw must be reported, not read.
    uids = pa.array([make_uid(f"https://x.org/{i}", "c") for i in range(3)])
    for bad in (7, -1):
        ids = pa.array([[0], [1, bad], [2]], pa.list_(pa.int32()))
        with pytest.raises(ValueError, match=rf"row 1 holds entry_id {bad}, outside the 3 entries"):
            keep_mask(uids, ids, entry_table(np.array([0.5, 0.5, 0.5]), 0))
    assert keep_mask(
        uids.slice(0, 0), pa.array([], pa.list_(pa.int32())), entry_table(np.ones(3), 0)
    ).shape == (0,)


def test_integer_thresholds_equal_float_comparison():
    rng = np.random.default_rng(1)
    p = np.concatenate(([0.0, 1.0, 0.5, 0.1, 1 / 3, 2.0**-53, 1 - 2.0**-53], rng.random(1000)))
    thr = draw_thresholds(p)
    for q, t in zip(p, thr, strict=True):
        draws = np.array([0, 1, 2**52, 2**53 - 1], np.uint64)
        near = np.array([max(int(t) - 1, 0), int(t), min(int(t) + 1, 2**53 - 1)], np.uint64)
        for d in np.concatenate((draws, near)):
            assert (d < t) == (float(d) / 2**53 < q), (q, d)


def test_uid_to_u64_is_the_first_16_hex_digits_and_hashes_foreign_uids():
    rng = random.Random(3)
    hexes = ["".join(rng.choice("0123456789abcdef") for _ in range(32)) for _ in range(500)]
    hexes += [h.upper() for h in hexes[:50]] + ["f" * 32, "0" * 32]
    got = uid_to_u64(pa.array(hexes))
    assert got.dtype == np.uint64 and got.tolist() == [int(h[:16], 16) for h in hexes]
    # a slice of a larger array (non-zero offset) reads its own rows
    assert uid_to_u64(pa.array(hexes).slice(7, 20)).tolist() == [int(h[:16], 16) for h in hexes[7:27]]
    # a foreign uid (non-hex, another length, null) is hashed; the others of its batch are still
    # read, so no uid's value depends on its batch (balancing decides the same for any task split)
    foreign = [hexes[0], "g" * 32, hexes[1], "abc", None, "0" * 40, hexes[2]]
    a, b = uid_to_u64(pa.array(foreign)), uid_to_u64(pa.array(foreign[::-1]))
    assert a.tolist() == b.tolist()[::-1]
    assert [a[0], a[2], a[6]] == [int(h[:16], 16) for h in hexes[:3]]
    assert a[1] == xxhash.xxh3_64_intdigest(b"g" * 32) and a[3] == xxhash.xxh3_64_intdigest(b"abc")
    assert a[5] == xxhash.xxh3_64_intdigest(b"0" * 40) and a[4] == xxhash.xxh3_64_intdigest(b"")
    assert uid_to_u64(pa.array([None, "x"])).tolist() == [xxhash.xxh3_64_intdigest(s) for s in (b"", b"x")]
    # u64_hex writes the digits uid_to_u64 reads back (how balancing draws rows by a hashed uid)
    values = np.array([0, 1, 2**64 - 1, *got[:50]], np.uint64)
    digits = [bytes(row).decode() + "0" * 16 for row in u64_hex(values)]
    assert uid_to_u64(pa.array(digits)).tolist() == values.tolist()


def test_estimate_reads_rows_of_sampled_parts_only(make_config, capsys, monkeypatch):
    from crawl import balance_estimate
    from crawl.balance import entry_probabilities

    rows = _rows(6_000, 60, seed=2)
    cfg = make_config("balance.t=150", run="memory://balance-estimate")
    run = RunDir(cfg.run)
    _write_match(run, rows, 10, shuffle_seed=5)
    p = entry_probabilities(run.read_parquet("match/counts.parquet"), 150)
    parts = run.glob("match/part-*.parquet")
    per_part = {f: expected_keep(run.read_parquet(f).column("entry_ids"), p) for f in parts}
    exact = sum(per_part.values())
    assert 0.2 * len(rows) < exact < 0.8 * len(rows)  # a t that balancing bites at

    stage = BalanceStage(cfg, run)
    stage.check()  # 10 parts, no more than SAMPLE_PARTS: every part, the exact figure
    assert f"expected curated size ≈ {exact:,.0f} rows\n" in capsys.readouterr().err
    assert stage._estimate == pytest.approx(exact, rel=1e-12)

    read: list[str] = []
    real_read = RunDir.read_parquet

    def spy(self, rel, columns=None, filters=None):
        read.append(rel)
        return real_read(self, rel, columns, filters)

    monkeypatch.setattr(balance_estimate, "SAMPLE_PARTS", 3)
    monkeypatch.setattr(RunDir, "read_parquet", spy)
    stage = BalanceStage(cfg, run)
    stage.check()
    sample = [parts[0], parts[3], parts[6]]
    assert [r for r in read if r.startswith("match/part-")] == sample
    rows_sampled = sum(run.parquet_rows(f) for f in sample)
    scaled = sum(per_part[f] for f in sample) * len(rows) / rows_sampled  # matched rows from footers
    assert stage._estimate == pytest.approx(scaled, rel=1e-12)
    assert stage._estimate == pytest.approx(exact, rel=0.05)
    assert f"from {rows_sampled:,} rows of 3 of the 10 parts" in capsys.readouterr().err
    # match's recorded row count, when there is one, instead of the footers
    run.write_json("stats/match.json", {"stage": "match", "counts": {"matched": 2 * len(rows)}})
    stage = BalanceStage(cfg, run)
    stage.check()
    assert stage._estimate == pytest.approx(2 * scaled, rel=1e-12)


def test_unreadable_part_skips_the_estimate_and_fails_its_task(make_config, capsys):
    rows = _rows(300, 20, seed=4)
    cfg = make_config("balance.t=20", "ray.task_retries=0", run="memory://balance-unreadable")
    run = RunDir(cfg.run)
    _write_match(run, rows, 3, shuffle_seed=None)
    run.write_bytes("match/part-00001.parquet", b"not parquet")
    stage = BalanceStage(cfg, run)
    stage.check()  # the forecast is given up, not the check
    assert "no estimate of the curated size (" in capsys.readouterr().err
    with pytest.raises(StageFailed) as failed:
        run_stage(stage, progress=False, checked=True)
    assert set(failed.value.failures) == {"part-00001"}
