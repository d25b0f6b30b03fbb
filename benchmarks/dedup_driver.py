"""Benchmark of dedup's driver "decide" phase at scale, on synthetic hash files, against the old in-memory driver.

    python benchmarks/dedup_driver.py [--n 2000000] [--shard-size 10000] [--eval 10000]
        [--memory-limit 1GB] [--workdir DIR] [--seed 0] [--reference-eval old|evalviews]

Data (seeded, NumPy-vectorised; its generation is not measured): a run directory with
``hashes/NNNNN.parquet`` files of ``--shard-size`` rows, ``--n`` in all, in the schema
``hash_training_samples`` writes (shard, key, uid, sha256, status, width, height, phash, phash_trim, phash_inner,
trimmed): 1 % of rows ``undecodable: X`` (null sha256 and hashes), 2 % exact copies of an earlier row
(same sha256 and hashes), 1 % near copies (pHash with 1-2 bits flipped, a new sha256), pHash random
64-bit otherwise, ``phash_trim`` equal to ``phash`` for 80 % of rows. One eval set
``evalsets/ev/hashes.parquet`` of ``--eval`` rows with a hash column per default eval view (21),
50 of them planted overlaps (a training row's pHash with 0-3 bits flipped).

Measured, each in its own fresh process (``--impl``; wall time from after the imports, peak RSS of
that process as ``ru_maxrss``; the data is generated in a process of its own too and the parent
holds nothing while they run, since Linux carries ``ru_maxrss`` over fork and exec), the results
saved to ``.npz`` and compared in the parent:
* ``reference``: the driver of 3e74267 — every hash file read whole and concatenated, reason codes,
  eval overlaps by one global search over all training rows (the old ``match_views``: both sides'
  views, ``search_pairs`` indexing the larger side; ``--reference-eval evalviews``: an ``EvalViews``
  index of the eval set probed by all training rows instead), pool near pairs by
  ``search_pairs(ph, ph, pool_tau)`` over every hashed row (later > earlier), exact duplicates by
  ``np.unique`` over the sha256 prefixes as an S32 block, then the identifiers
  (``train.select(["shard", "key", "uid"])``, kept to the end as the old driver kept them) and the
  candidates' shard and key;
* ``webclip``: ``DedupStage.finalize``'s path — ``ShardRows`` and ``PoolIndex`` (DuckDB on local disk,
  ``--memory-limit``) fed a shard at a time, ``exact_duplicates``, ``near_pairs(pool_tau,
  exclude=copies)``; the eval search as ``OverlapSearchStage.process`` per shard (the code of the Ray
  task, run here in a loop in the driver process; on a cluster it runs in workers) and
  ``load_pairs``; then ``ShardRows.take`` of the candidate rows. The DuckDB database and spill
  directory are sampled every 0.1 s for their peak size.
* ``baseline``: a process that only imports the same modules: the RSS both are measured above.

``--cluster M`` plants one image copied M times (one pHash, new bytes each), as the web repeats
popular images: the old search lists M²/2 pairs for it, webclip about M rows.
Both must give the same reason codes, exact copies, near pairs (the old search listed every pair;
webclip lists each later image's closest earlier matches that are the first of their pHash,
``dedup.pool.NEAREST`` at most, so the old pairs are cut to those before comparing; the old search
also listed pairs that touch an exact copy, which the old driver labelled "exact"; those are left
out too; their rows were candidates too), eval view pairs and candidate identifiers (webclip's
candidates looked up among the old ones), or the run fails. The planted copies and overlaps are
checked to be found.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_SET = "ev"
ZOOMS, ANCHORS, SQUARE = (0.95, 0.9), 3, True
PLANTED_EVAL = 50
HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
# categories of generated training rows
ORIGINAL, UNDECODABLE, EXACT, NEAR = 0, 1, 2, 3


# ------------------------------------------------------------------ data
def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _u64(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)


def _strings(block: np.ndarray, valid: np.ndarray | None = None):
    """A pyarrow string array from ``(n, w)`` ASCII bytes (one fixed-width string per row)."""
    import pyarrow as pa

    n, w = block.shape
    offsets = np.arange(n + 1, dtype=np.int32) * w
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(n - valid.sum())
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [bitmap, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(block).tobytes())],
        null_count=nulls,
    )


def _hex(raw: np.ndarray) -> np.ndarray:
    """``(n, k)`` bytes as ``(n, 2k)`` lowercase hex ASCII."""
    out = np.empty((raw.shape[0], 2 * raw.shape[1]), np.uint8)
    out[:, 0::2], out[:, 1::2] = HEX[raw >> 4], HEX[raw & 15]
    return out


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as ``(n, width)`` zero-padded decimal ASCII."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(x, np.int64)[:, None] // powers) % 10 + 48).astype(np.uint8)


def _flip(rng: np.random.Generator, h: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """``h`` with ``nbits`` (0..3 per row) distinct random bits flipped."""
    order = np.argsort(rng.random((len(h), 64)), axis=1)[:, :3].astype(np.uint64)
    masks = np.uint64(1) << order  # (n, 3) distinct bits
    masks[np.arange(3)[None, :] >= nbits[:, None]] = 0
    return h ^ np.bitwise_or.reduce(masks, axis=1)


def generate(
    run_url: str, n: int, shard_size: int, n_eval: int, seed: int, cluster: int = 0
) -> dict[str, np.ndarray]:
    """Write the synthetic hash files; return what was planted (for the checks)."""
    import pyarrow as pa

    from dedup.hashing import view_column
    from dedup.views import eval_views
    from pipeline.rundir import RunDir

    run = RunDir(run_url)
    rng = np.random.default_rng(seed)
    cat = rng.choice(4, n, p=[0.96, 0.01, 0.02, 0.01]).astype(np.int8)
    cat[: min(1000, n)] = ORIGINAL  # copies need earlier originals
    originals = np.flatnonzero(cat == ORIGINAL)
    copies = np.flatnonzero(cat >= EXACT)
    # each copy's source: a uniformly drawn original before it (no copy of a copy)
    src = originals[(rng.random(len(copies)) * np.searchsorted(originals, copies)).astype(np.int64)]
    ph = _u64(rng, n)
    sha = rng.integers(0, 256, (n, 32), np.uint8)
    is_exact = cat[copies] == EXACT
    exact, exact_src = copies[is_exact], src[is_exact]
    near, near_src = copies[~is_exact], src[~is_exact]
    near_bits = rng.integers(1, 3, len(near))
    ph[near] = _flip(rng, ph[near_src], near_bits)
    if cluster:  # one image copied `cluster` times, each copy re-encoded: one pHash, new bytes
        plain = np.setdiff1d(np.flatnonzero(cat[1000:] == ORIGINAL) + 1000, src)  # no copy's source
        members = np.sort(rng.choice(plain, min(cluster, len(plain)), replace=False))
        ph[members] = ph[0] ^ np.uint64(1 << 5)
        near = np.concatenate([near, members])
        near_src = np.concatenate([near_src, np.zeros(len(members), np.int64)])
        near_bits = np.concatenate([near_bits, np.ones(len(members), near_bits.dtype)])
    trim = np.where(rng.random(n) < 0.8, ph, _u64(rng, n))
    inner = _u64(rng, n)  # the centre crop's hash: never the plain one
    ph[exact], trim[exact], sha[exact] = ph[exact_src], trim[exact_src], sha[exact_src]
    ok = cat != UNDECODABLE
    wh = rng.integers(64, 1025, (n, 2)).astype(np.int32)
    uid = rng.integers(0, 256, (n, 16), np.uint8)
    status = np.where(ok, "ok", "undecodable: X")

    n_shards = -(-n // shard_size)
    for s in range(n_shards):
        lo, hi = s * shard_size, min((s + 1) * shard_size, n)
        v = ok[lo:hi]
        mask = ~v
        name = f"{s:05d}"
        table = pa.table(
            {
                "shard": _strings(np.tile(np.frombuffer(name.encode(), np.uint8), (hi - lo, 1))),
                "key": _strings(_digits(np.arange(lo, hi), 10)),
                "uid": _strings(_hex(uid[lo:hi])),
                "sha256": _strings(_hex(sha[lo:hi]), v),
                "status": pa.array(status[lo:hi], pa.string()),
                "width": pa.array(wh[lo:hi, 0], pa.int32(), mask=mask),
                "height": pa.array(wh[lo:hi, 1], pa.int32(), mask=mask),
                "phash": pa.array(ph[lo:hi], pa.uint64(), mask=mask),
                "phash_trim": pa.array(trim[lo:hi], pa.uint64(), mask=mask),
                "phash_inner": pa.array(inner[lo:hi], pa.uint64(), mask=mask),
                "trimmed": pa.array(trim[lo:hi] != ph[lo:hi], pa.bool_(), mask=mask),
            }
        )
        run.write_parquet(f"hashes/{name}.parquet", table)

    # the eval set: random view hashes; trim equals phash for 80 % of rows, square for 30 %
    views = eval_views(ZOOMS, ANCHORS, SQUARE)
    e_ok = rng.random(n_eval) >= 0.005
    hashes = {v.name: _u64(rng, n_eval) for v in views}
    planted_eval = rng.choice(np.flatnonzero(e_ok), min(PLANTED_EVAL, int(e_ok.sum())), replace=False)
    planted_train = rng.choice(np.flatnonzero(ok), len(planted_eval), replace=False)
    planted_bits = rng.integers(0, 4, len(planted_eval))
    hashes["phash"][planted_eval] = _flip(rng, ph[planted_train], planted_bits)
    hashes["trim"] = np.where(rng.random(n_eval) < 0.8, hashes["phash"], hashes["trim"])
    hashes["square"] = np.where(rng.random(n_eval) < 0.3, hashes["phash"], hashes["square"])
    labels = rng.integers(0, 10, n_eval)
    ev = {
        "eval_id": _strings(_digits(np.arange(n_eval), 8)),
        "label": pa.array(labels, pa.int64()),
        "class_name": _strings(_digits(labels, 1)),
        "sha256": _strings(_hex(rng.integers(0, 256, (n_eval, 32), np.uint8)), e_ok),
        "status": pa.array(np.where(e_ok, "ok", "undecodable: X"), pa.string()),
        "extreme_frac": pa.array(rng.random(n_eval).astype(np.float32) * 0.3, pa.float32(), mask=~e_ok),
    }
    for v in views:
        ev[view_column(v.name)] = pa.array(hashes[v.name], pa.uint64(), mask=~e_ok)
    run.write_parquet(f"evalsets/{EVAL_SET}/hashes.parquet", pa.table(ev))
    return {
        "exact": exact,
        "exact_src": exact_src,
        "near": near,
        "near_src": near_src,
        "near_bits": near_bits,
        "eval_train": planted_train,
        "eval_row": planted_eval,
        "eval_bits": planted_bits,
        "ph": ph,
        "ok": ok,
    }


# ------------------------------------------------------------ in the child
#: Every module either implementation uses: the baseline process imports exactly these.
MODULES = (
    "duckdb",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.parquet",
    "dedup.detect",
    "dedup.overlap_search",
    "dedup.pool",
    "dedup.rows",
    "dedup.search",
    "dedup.stage",
    "pipeline.config",
    "pipeline.rundir",
)


def _imports() -> None:
    for name in MODULES:
        importlib.import_module(name)


class _Phases:
    """Wall seconds and peak RSS after each phase."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.items: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.items.append((name, now - self.last, _peak_mib()))
        self.last = now

    @property
    def total(self) -> float:
        return self.last - self.start


def _shards(run) -> list[str]:
    return [Path(p).stem for p in run.glob("hashes/*.parquet")]


def _eval_profile(cfg, ev) -> tuple[str, int]:
    """(profile, tau) of the eval set, as the driver picks them."""
    from dedup.overlap_search import ok_rows

    ev_ok = ok_rows(ev)
    extreme = ev.column("extreme_frac").to_numpy(zero_copy_only=False)
    lineart = bool(ev_ok.any() and np.nanmean(extreme[ev_ok]) >= cfg.dedup.lineart_min_extreme)
    profile, tau, _ = cfg.dedup.thresholds(EVAL_SET, lineart)
    return profile, tau


def _old_match_views(train, train_ok, evals, eval_ok, tau):
    """``dedup.detect.match_views`` as of 3e74267: both sides' views, one ``search_pairs``."""
    from dedup.detect import _searchable
    from dedup.search import search_pairs

    t_rows, t_views, t_hash = _searchable(train, train_ok)
    e_rows, e_views, e_hash = _searchable(evals, eval_ok)
    q, d, dist = search_pairs(t_hash, e_hash, tau)
    tr, er, tv, ev = t_rows[q], e_rows[d], t_views[q], e_views[d]
    order = np.lexsort((ev, tv, dist, er, tr))
    return {
        "train_row": tr[order],
        "eval_row": er[order],
        "train_view": tv[order],
        "eval_view": ev[order],
        "distance": dist[order].astype(np.int16),
    }


def run_reference(run_url: str, args) -> tuple[dict, dict]:
    """The 3e74267 driver, up to the candidates' identifiers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from dedup.detect import EvalViews, match_views
    from dedup.hashing import view_column
    from dedup.search import search_pairs
    from dedup.stage import CODE
    from dedup.views import TRAIN_VIEWS, eval_views
    from pipeline.config import load_config
    from pipeline.rundir import RunDir

    def u64(col):
        return col.fill_null(0).to_numpy().astype(np.uint64)

    ph_ = _Phases()
    run = RunDir(run_url)
    cfg = load_config(None, [], run.url)
    train = pa.concat_tables([run.read_parquet(f"hashes/{s}.parquet") for s in _shards(run)])
    n = train.num_rows
    status = train.column("status")
    hashed = pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False)
    no_image = pc.fill_null(pc.equal(status, "no_image"), False).to_numpy(zero_copy_only=False)
    reason = np.where(hashed, 0, np.where(no_image, CODE["no_image"], CODE["undecodable"])).astype(np.int8)
    ok = reason == 0
    train_hashes = {v.name: u64(train.column(view_column(v.name))) for v in TRAIN_VIEWS}
    views = eval_views(ZOOMS, ANCHORS, SQUARE)
    ph_.mark("read + concat every hash file, reason codes")

    ev = run.read_parquet(f"evalsets/{EVAL_SET}/hashes.parquet")
    ev_ok = np.array([s == "ok" for s in ev.column("status").to_pylist()], bool)
    _, tau = _eval_profile(cfg, ev)
    evals = {v.name: u64(ev.column(view_column(v.name))) for v in views}
    if args.reference_eval == "old":
        pairs = _old_match_views(train_hashes, ok, evals, ev_ok, tau)
    else:
        pairs = match_views(train_hashes, ok, EvalViews.build(evals, ev_ok, tau))
    needed: set[int] = set()
    needed.update(int(r) for r in np.unique(pairs["train_row"]))
    ph_.mark(f"eval search, one global search (tau {tau}, {args.reference_eval})")

    idx = np.flatnonzero(ok)
    ph = train_hashes["phash"]
    q, d, dist = search_pairs(ph[idx], ph[idx], cfg.dedup.pool_tau)
    later = q > d
    near = np.stack([idx[q[later]], idx[d[later]], dist[later]], axis=1)
    needed.update(int(r) for r in near[:, :2].ravel())
    ph_.mark(f"pool near pairs, search_pairs (tau {cfg.dedup.pool_tau})")

    sha = train.column("sha256")
    rows = np.flatnonzero(ok & sha.is_valid().to_numpy(zero_copy_only=False))
    hexes = sha.take(pa.array(rows)).combine_chunks().cast(pa.binary(64))
    block = np.frombuffer(hexes.buffers()[1], np.uint8, count=len(hexes) * 64, offset=hexes.offset * 64)
    digests = np.ascontiguousarray(block.reshape(-1, 64)[:, :32]).view("S32").ravel()
    first = np.zeros(len(rows), bool)
    first[np.unique(digests, return_index=True)[1]] = True
    exact_copy = rows[~first]
    reason[exact_copy] = CODE["exact_dup"]
    del sha, hexes, block, digests
    del status
    train = train.select(["shard", "key", "uid"])  # the old driver kept these to the end
    ph_.mark("exact duplicates, np.unique over S32 digests")

    cand = train.select(["shard", "key"]).take(pa.array(sorted(needed), pa.int64()))
    ph_.mark("candidates' identifiers (take from the held table)")
    result = {
        "reason": reason,
        "exact_copy": exact_copy,
        "near": near.astype(np.int64),
        **{f"eval_{k}": np.asarray(v, np.int64) for k, v in pairs.items()},
        "cand_shard": np.array(cand.column("shard").to_pylist()),
        "cand_key": np.array(cand.column("key").to_pylist()),
    }
    info = {"n": n, "phases": ph_.items, "wall_s": ph_.total, "peak_mib": _peak_mib(), "kept": train.num_rows}
    return result, info


class _DirPeak(threading.Thread):
    """Samples the size of the DuckDB database file(s) and the spill directory under ``root``."""

    def __init__(self, root: Path, every: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.db = self.spill = 0
        self.stop = threading.Event()

    @staticmethod
    def _size(path: Path) -> int:
        total = 0
        for dirpath, _, files in os.walk(path):
            for f in files:
                with contextlib.suppress(FileNotFoundError):  # a spill file removed meanwhile
                    total += os.stat(os.path.join(dirpath, f)).st_size
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            db = sum(p.stat().st_size for p in self.root.glob("pool.duckdb*") if p.is_file())
            self.db = max(self.db, db)
            self.spill = max(self.spill, self._size(self.root / "spill"))
            self.stop.wait(self.every)


def run_webclip(run_url: str, args) -> tuple[dict, dict]:
    """``DedupStage.finalize`` (HEAD) up to the candidates' identifiers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dedup.overlap_search import OverlapSearchStage, SetSearch, hash_columns, load_pairs
    from dedup.pool import PoolIndex
    from dedup.rows import ShardRows
    from dedup.stage import CODE, _status_codes
    from dedup.views import TRAIN_VIEWS, eval_views
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    ph_ = _Phases()
    run = RunDir(run_url)
    cfg = load_config(None, [], run.url)
    pool_dir = Path(args.pool_dir)
    watch = _DirPeak(pool_dir)
    rows = ShardRows(run, _shards(run))
    n = rows.n
    reason = np.zeros(n, np.int8)
    with PoolIndex(str(pool_dir), args.memory_limit) as pool:
        watch.start()
        for i, table in rows.iter_tables(["status", "sha256", "phash"]):
            lo, hi = int(rows.offsets[i]), int(rows.offsets[i + 1])
            reason[lo:hi] = _status_codes(table.column("status"))
            pool.add(
                lo, reason[lo:hi] == 0, table.column("sha256"), hash_columns(table, TRAIN_VIEWS[:1])["phash"]
            )
        ph_.mark("pool index: a shard at a time into DuckDB, reason codes")
        exact_copy, exact_first = pool.exact_duplicates()
        reason[exact_copy] = CODE["exact_dup"]
        ph_.mark("exact duplicates, DuckDB join")
        near = pool.near_pairs(cfg.dedup.pool_tau, exclude=exact_copy)
        ph_.mark(f"pool near pairs, DuckDB joins (tau {cfg.dedup.pool_tau})")
    watch.stop.set()
    watch.join()

    views = eval_views(ZOOMS, ANCHORS, SQUARE)
    rel = f"evalsets/{EVAL_SET}/hashes.parquet"
    data = run.read_bytes(rel)
    ev = pq.read_table(pa.BufferReader(data))
    _, tau = _eval_profile(cfg, ev)
    search = SetSearch(EVAL_SET, tau, hashlib.sha256(data).hexdigest()[:16])
    stage = OverlapSearchStage(cfg, run, rows.shards, [search], views)
    stats = Stats()
    for task in stage.tasks():  # on a cluster: one Ray task per shard, in workers
        stage.process(task, stats)
    ph_.mark(f"eval search: OverlapSearchStage.process per shard, in-process loop (tau {tau})")
    pairs = load_pairs(run, rows.shards, rows.offsets, [EVAL_SET])[EVAL_SET]
    ph_.mark("load_pairs (the driver collects every shard's pairs)")

    needed = np.unique(np.concatenate([pairs["train_row"], near[:, :2].ravel()])).astype(np.int64)
    cand = rows.take(needed)
    ph_.mark("candidates' identifiers (ShardRows.take)")
    result = {
        "reason": reason,
        "exact_copy": exact_copy,
        "exact_first": exact_first,
        "near": near,
        **{f"eval_{k}": np.asarray(v, np.int64) for k, v in pairs.items()},
        "cand_shard": np.array(cand.column("shard").to_pylist()),
        "cand_key": np.array(cand.column("key").to_pylist()),
    }
    driver_s = sum(s for name, s, _ in ph_.items if not name.startswith("eval search"))
    info = {
        "n": n,
        "phases": ph_.items,
        "wall_s": ph_.total,
        "driver_s": driver_s,
        "peak_mib": _peak_mib(),
        "db_peak": watch.db,
        "spill_peak": watch.spill,
    }
    return result, info


def _hwm_mib() -> float:
    """VmHWM: the peak RSS of this process's own address space (not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    out = Path(args.out)
    if args.impl == "generate":
        t0 = time.perf_counter()
        planted = generate(args.run, args.n, args.shard_size, args.eval, args.seed, args.cluster)
        np.savez(out.with_suffix(".npz"), **planted)
        out.with_suffix(".json").write_text(json.dumps({"generate_s": time.perf_counter() - t0}))
        return
    t0 = time.perf_counter()
    _imports()
    import_s = time.perf_counter() - t0
    if args.impl == "baseline":
        info = {"peak_mib": _peak_mib()}
    else:
        fn = run_reference if args.impl == "reference" else run_webclip
        result, info = fn(args.run, args)
        np.savez(out.with_suffix(".npz"), **result)
    info.update(import_s=import_s, hwm_mib=_hwm_mib())
    out.with_suffix(".json").write_text(json.dumps(info))


# ------------------------------------------------------------- in the parent
# The parent stays small (NumPy only, nothing loaded while children run): Linux carries a
# process's peak RSS (ru_maxrss) across fork and exec, so a child's figure is at least its parent's.
def _spawn(impl: str, run_url: str, work: Path, args) -> dict:
    out = work / f"result-{impl}"
    cmd = [sys.executable, __file__, "--impl", impl, "--run", run_url, "--out", str(out)]
    cmd += ["--n", str(args.n), "--shard-size", str(args.shard_size), "--eval", str(args.eval)]
    cmd += ["--seed", str(args.seed), "--memory-limit", args.memory_limit, "--cluster", str(args.cluster)]
    cmd += ["--pool-dir", str(work / "pool_index"), "--reference-eval", args.reference_eval]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"--impl {impl} failed with exit status {proc.returncode}")
    return json.loads(out.with_suffix(".json").read_text())


def _load(work: Path, impl: str) -> dict[str, np.ndarray]:
    with np.load(work / f"result-{impl}.npz") as z:
        return {k: z[k] for k in z.files}


def _same(name: str, a: np.ndarray, b: np.ndarray) -> None:
    if a.shape == b.shape and np.array_equal(a, b):
        return
    msg = f"{name} differ: reference {a.shape}, webclip {b.shape}"
    if a.ndim == b.ndim and len(a) and len(b):
        k = min(len(a), len(b))
        diff = np.flatnonzero(np.any((a[:k] != b[:k]).reshape(k, -1), axis=1)) if k else []
        if len(diff):
            i = int(diff[0])
            msg += f"; first difference at {i}: reference {a[i]}, webclip {b[i]}"
    raise AssertionError(msg)


def _nearest_firsts(pairs: np.ndarray, planted: dict, excluded: np.ndarray) -> np.ndarray:
    """The old search's every pair, cut to what webclip lists since it stopped listing every pair of
    a cluster: per later row, earlier rows that are the first of their pHash, NEAREST closest."""
    from dedup.pool import NEAREST

    rows = np.setdiff1d(np.flatnonzero(planted["ok"]), excluded)
    _, first_at = np.unique(planted["ph"][rows], return_index=True)
    keep = pairs[np.isin(pairs[:, 1], rows[first_at])]
    keep = keep[np.lexsort((keep[:, 1], keep[:, 2], keep[:, 0]))]
    rank = np.arange(len(keep)) - np.searchsorted(keep[:, 0], keep[:, 0])
    keep = keep[rank < NEAREST]
    return keep[np.lexsort((keep[:, 1], keep[:, 0]))]


def compare(ref: dict, web: dict, planted: dict) -> tuple[int, int]:
    """Assert both implementations agree and found what was planted; returns (raw old near pairs, touching copies)."""
    _same("reason codes", ref["reason"], web["reason"])
    _same("exact-duplicate copies", ref["exact_copy"], web["exact_copy"])
    raw = ref["near"]
    copies = web["exact_copy"]
    touch = np.isin(raw[:, 0], copies) | np.isin(raw[:, 1], copies)
    _same("near pairs (later, earlier, distance)", _nearest_firsts(raw[~touch], planted, copies), web["near"])
    for k in ("train_row", "eval_row", "train_view", "eval_view", "distance"):
        _same(f"eval view pairs ({k})", ref[f"eval_{k}"], web[f"eval_{k}"])
    # The old driver's candidates also held the rows of near pairs touching an exact copy (it
    # verified those pairs too): compare the identifiers of webclip's candidates, found among them.
    ref_needed = np.unique(np.concatenate([ref["eval_train_row"], raw[:, :2].ravel()]))
    web_needed = np.unique(np.concatenate([web["eval_train_row"], web["near"][:, :2].ravel()]))
    assert len(ref_needed) == len(ref["cand_key"]) and len(web_needed) == len(web["cand_key"])
    pos = np.searchsorted(ref_needed, web_needed)
    assert np.array_equal(ref_needed[np.minimum(pos, len(ref_needed) - 1)], web_needed), "candidate rows"
    _same("candidates' shard", ref["cand_shard"][pos], web["cand_shard"])
    _same("candidates' key", ref["cand_key"][pos], web["cand_key"])
    assert np.array_equal(web["cand_key"], np.char.zfill(web_needed.astype(str), 10)), (
        "keys are not the rows'"
    )

    # what was planted is found
    order = np.argsort(planted["exact"])
    assert np.array_equal(web["exact_copy"], planted["exact"][order]), "exact copies are not the planted ones"
    assert np.array_equal(web["exact_first"], planted["exact_src"][order]), "exact copies' first copies"
    near = web["near"]
    found = {(int(a), int(b)): int(c) for a, b, c in near}
    for a, b, bits in zip(planted["near"], planted["near_src"], planted["near_bits"], strict=True):
        assert found.get((int(a), int(b))) == int(bits), f"planted near pair ({a}, {b}) not found"
    ph = planted["ph"]
    assert np.all(np.bitwise_count(ph[near[:, 0]] ^ ph[near[:, 1]]) == near[:, 2]), "near pair distances"
    ev = {
        (int(t), int(e), int(d))
        for t, e, tv, evv, d in zip(
            web["eval_train_row"],
            web["eval_eval_row"],
            web["eval_train_view"],
            web["eval_eval_view"],
            web["eval_distance"],
            strict=True,
        )
        if tv == 0 and evv == 0
    }
    for t, e, bits in zip(planted["eval_train"], planted["eval_row"], planted["eval_bits"], strict=True):
        assert (int(t), int(e), int(bits)) in ev, f"planted eval overlap ({t}, {e}) not found"
    return len(raw), int(touch.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="training samples (rows of all hash files)")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--eval", type=int, default=10_000, help="rows of the eval set")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB's memory limit (PoolIndex)")
    ap.add_argument("--workdir", help="where the run directory goes (default: a temporary one, removed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cluster", type=int, default=0, help="plant one image copied this many times (one pHash, new bytes)"
    )
    ap.add_argument(
        "--reference-eval",
        choices=("old", "evalviews"),
        default="old",
        help="the reference's eval search: 3e74267's match_views (search_pairs, larger side indexed) "
        "or an EvalViews index probed by all training rows",
    )
    ap.add_argument(
        "--impl", choices=("generate", "baseline", "reference", "webclip"), help=argparse.SUPPRESS
    )
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--pool-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        child(args)
        return

    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"nproc: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}")
    owned = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="webclip-bench-dedup-driver-") if owned else args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    try:
        shutil.rmtree(run_dir, ignore_errors=True)
        gen = _spawn("generate", str(run_dir), work, args)
        size = sum(p.stat().st_size for p in (run_dir / "hashes").glob("*.parquet"))
        n_shards = len(list((run_dir / "hashes").glob("*.parquet")))
        print(
            f"generated {args.n:,} training rows in {n_shards:,} hash files ({size / 2**20:,.0f} MiB), "
            f"{args.eval:,} eval rows x 21 views, seed {args.seed} ({gen['generate_s']:.1f}s, not measured)"
        )
        results = {}
        for impl in ("baseline", "reference", "webclip"):
            shutil.rmtree(run_dir / "dedup", ignore_errors=True)
            results[impl] = _spawn(impl, str(run_dir), work, args)
        ref, web = results["reference"], results["webclip"]
        ref["result"], web["result"] = _load(work, "reference"), _load(work, "webclip")
        planted = _load(work, "generate")
        raw, touching = compare(ref["result"], web["result"], planted)
        print(
            "results identical: reason codes, exact-duplicate copies, near pairs, eval view pairs, "
            "candidates' shard/key (and the planted copies and overlaps are all found)"
        )
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)

    base = results["baseline"]["peak_mib"]
    n = args.n
    print(
        f"\nbaseline (a process importing the same modules): peak RSS {base:,.0f} MiB; "
        f"DuckDB memory_limit {args.memory_limit}\n"
    )
    head = f"{'implementation':34}{'samples/s':>11}{'wall s':>8}{'peak RSS MiB':>14}{'B/sample':>10}"
    print(head + f"{'exact':>9}{'near pairs':>12}{'eval view pairs':>17}{'candidates':>12}")
    for label, r in (
        (f"reference (3e74267, eval {args.reference_eval})", ref),
        ("webclip (HEAD), eval in-process", web),
    ):
        res = r["result"]
        near = len(res["near"]) if r is web else len(res["near"]) - touching
        print(
            f"{label:34}{n / r['wall_s']:>11,.0f}{r['wall_s']:>8.1f}{r['peak_mib']:>14,.0f}"
            f"{(r['peak_mib'] - base) * 2**20 / n:>10,.0f}"
            f"{len(res['exact_copy']):>9,}{near:>12,}{len(res['eval_train_row']):>17,}{len(res['cand_key']):>12,}"
        )
    print(
        f"webclip without its eval search (on a cluster that runs in Ray workers): "
        f"{n / web['driver_s']:,.0f} samples/s ({web['driver_s']:.1f} s of driver work)"
    )
    print(
        f"the reference's search also listed {touching:,} near pairs touching an exact copy "
        f"({raw:,} in all; the old driver labelled them 'exact'); they are left out of its count and comparison, "
        "their rows are among its candidates"
    )
    print(
        f"DuckDB (webclip): database file peak {web['db_peak'] / 2**20:,.1f} MiB, spill directory peak "
        f"{web['spill_peak'] / 2**20:,.1f} MiB (sampled every 0.1 s)"
    )
    gap = max(abs(r["peak_mib"] - r["hwm_mib"]) for r in results.values())
    print(f"peak RSS is ru_maxrss; VmHWM of each process agrees within {gap:,.0f} MiB")
    for label, r in (("reference", ref), ("webclip", web)):
        print(f"\n{label} phases (wall s, peak RSS MiB so far):")
        for name, s, peak in r["phases"]:
            print(f"  {name:80}{s:>8.1f}{peak:>10,.0f}")


if __name__ == "__main__":
    main()
