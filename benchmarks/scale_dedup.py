"""Scale benchmark of dedup's pool-duplicate search and decisions: the partitioned path against today's single-node one.

    python benchmarks/scale_dedup.py --rows 1000000 [--shard-size 10000] [--cpus 2] [--seed 0]
        [--partition-rows 2000000] [--workdir DIR] [--no-reference]

``measure(n_rows, work_dir, seed)`` is what ``benchmarks/scale.py`` calls for its dedup stage.

Data (seeded, vectorised; its generation is not measured): a run directory with
``hashes/NNNNN.parquet`` of ``--shard-size`` rows each, the columns the dedup tasks write and the
pool search reads (shard, key, uid, status, sha256, phash). Row values are a function of the row
number (splitmix64), so a copy of any earlier row is written without holding the pool: 1 % of rows
``undecodable: synthetic`` (null sha256 and pHash), 2 % exact copies of an earlier row (same sha256
and pHash), 1 % near copies (the pHash with 1 or 2 bits flipped, new bytes), the rest random
64-bit pHashes and random digests. Copies point up to 10⁶ rows back, so most cross shards.

Measured, on the embedded Ray (``--cpus`` CPUs), for what ``DedupStage.finalize`` does with the
pool apart from verifying near pairs on images:

* ``partitioned`` (the stage's default, ``dedup.pool_join: partitioned``):
  :func:`dedup.pool_shuffle.find_pool_duplicates` (the four join sub-stages and
  ``dedup.pool_pairs`` on Ray), ``dedup.pool_verify`` with every near candidate scored as confirmed
  (no images: the thumbnail reads and scores are left out, the rest of the task is the stage's),
  :func:`dedup.pool_pairs.assemble` (``dedup/pool_duplicates.parquet``), then
  :func:`dedup.decide.decide` (the decision tasks and the driver's assembly of
  ``dedup/decisions.parquet``);
* ``reference`` (``--no-reference`` skips it; ``dedup.pool_join: single_node``, the code before issue
  22): every shard's rows through the driver into one DuckDB (:class:`dedup.pool.PoolIndex`),
  ``exact_duplicates``, ``near_pairs``, then the old driver's decisions: an int8 reason per row and
  ``decisions.parquet`` from ``ShardRows.iter_take``.

Reported per path: wall seconds; driver CPU seconds (``time.process_time()`` of this process over
the measured call); worker CPU seconds (``cpu_seconds`` summed over the sub-stages'
``stats/<stage>.json``: the runner records each task's CPU in its Stats); driver peak RSS (VmHWM of
this process, reset before the call through ``/proc/self/clear_refs``); worker peak RSS (the
largest ``peak_rss_mb`` in those stats: the peak of a Ray worker process that ran a task); what was found. Both paths must find the same exact
copies and near pairs, and every planted copy must be found, or the run fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
# run as a script, benchmarks/ comes first on the path, and benchmarks/dedup.py would shadow the package
sys.path.insert(0, str(REPO))

from dedup.decide import ASSEMBLE as DECIDE_ASSEMBLE  # noqa: E402
from dedup.decide import CODE, REASONS, DecideStage, decide, status_codes  # noqa: E402
from dedup.pool import PoolIndex  # noqa: E402
from dedup.pool_pairs import ASSEMBLE as POOL_ASSEMBLE  # noqa: E402
from dedup.pool_pairs import PoolPairs, PoolVerify, assemble, read_pairs  # noqa: E402
from dedup.pool_shuffle import SUB_STAGES, Layout, find_pool_duplicates  # noqa: E402
from dedup.rows import ShardRows, hashes_path  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402

HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
UNDECODABLE, EXACT, NEAR = 0.01, 0.02, 0.01  # fractions of rows
LOOKBACK = 1_000_000  # a copy's original is at most this many rows earlier
TAU = 2  # dedup.pool_tau's default


# ------------------------------------------------------------------ data
def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``x + salt``: a deterministic pseudo-random 64-bit value per row number."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _unit(x: np.ndarray, salt: int) -> np.ndarray:
    return (_mix(x, salt) >> np.uint64(11)).astype(np.float64) / 2.0**53


def _kind(i: np.ndarray, seed: int) -> np.ndarray:
    """0 original, 1 undecodable, 2 exact copy, 3 near copy (before checking the copied row)."""
    u = _unit(i, seed * 16 + 1)
    return np.select([u < EXACT, u < EXACT + NEAR, u < EXACT + NEAR + UNDECODABLE], [2, 3, 1], 0)


def rows_of(i: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Everything about rows ``i``: kind (after copies of non-originals fall back to originals),
    source row, pHash, and the row whose digest it carries."""
    i = np.asarray(i, np.int64)
    kind = _kind(i, seed)
    reach = np.clip(i, 1, LOOKBACK).astype(np.uint64)  # rows before i, up to LOOKBACK
    back = 1 + (_mix(i, seed * 16 + 2) % reach).astype(np.int64)
    src = i - back
    copy = (kind >= 2) & (src >= 0)
    copy[copy] &= _kind(src[copy], seed) == 0  # only an original (hashed, not itself a copy) is copied
    kind = np.where((kind >= 2) & ~copy, 0, kind)
    src = np.where(copy, src, i)
    h = _mix(src, seed * 16 + 3)
    near = kind == 3
    bits = _mix(i, seed * 16 + 4)
    one = np.uint64(1) << (bits & np.uint64(63))
    two = np.uint64(1) << ((bits >> np.uint64(8)) & np.uint64(63))
    second = (bits >> np.uint64(16)) & np.uint64(1) == 1  # half flip one bit, half two (or one, if equal)
    h = np.where(near, h ^ one ^ np.where(second, two, np.uint64(0)), h)
    digest_of = np.where(kind == 2, src, i)  # an exact copy has its original's bytes
    return {"kind": kind, "src": src, "h": h, "digest_of": digest_of}


def _hex_block(words: list[np.ndarray]) -> np.ndarray:
    raw = np.stack(words, axis=1).astype(">u8").view(np.uint8).reshape(len(words[0]), -1)
    out = np.empty((raw.shape[0], 2 * raw.shape[1]), np.uint8)
    out[:, 0::2], out[:, 1::2] = HEX[raw >> 4], HEX[raw & 15]
    return out


def _strings(block: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A string array from ``(n, w)`` ASCII bytes, null where not ``valid``."""
    n, w = block.shape
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [bitmap, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * w), pa.py_buffer(block.tobytes())],
        null_count=0 if valid is None else int(n - valid.sum()),
    )


def generate(run: RunDir, n_rows: int, shard_size: int, seed: int) -> list[str]:
    """Write ``hashes/NNNNN.parquet`` for ``n_rows`` rows; returns the shard names."""
    shards = []
    for k, start in enumerate(range(0, n_rows, shard_size)):
        i = np.arange(start, min(start + shard_size, n_rows), dtype=np.int64)
        r = rows_of(i, seed)
        ok = r["kind"] != 1
        d = r["digest_of"]
        sha = _strings(_hex_block([_mix(d, seed * 16 + 5 + w) for w in range(4)]), ok)
        name = f"{k:05d}"
        run.write_parquet(
            hashes_path(name),
            pa.table(
                {
                    "shard": pa.array(np.full(len(i), name)),
                    "key": _strings(_hex_block([i.astype(np.uint64)])),
                    "uid": _strings(_hex_block([_mix(i, seed * 16 + 9), _mix(i, seed * 16 + 10)])),
                    "status": pa.array(np.where(ok, "ok", "undecodable: synthetic")),
                    "sha256": sha,
                    "phash": pa.array(r["h"], pa.uint64(), mask=~ok),
                }
            ),
        )
        shards.append(name)
    return shards


def planted(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact copy rows, their originals, near copy rows' (row, original) pairs)."""
    r = rows_of(np.arange(n_rows, dtype=np.int64), seed)
    exact = np.flatnonzero(r["kind"] == 2)
    near = np.flatnonzero(r["kind"] == 3)
    return exact, r["src"][exact], np.stack([near, r["src"][near]], axis=1)


# ------------------------------------------------------------------ measuring
def _reset_peak() -> bool:
    """Reset this process's VmHWM (Linux): False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(run: RunDir, cpus: int | None, partition_rows: int, join: str):
    sets = [f"dedup.pool_tau={TAU}", f"dedup.pool_partition_rows={partition_rows}", f"dedup.pool_join={join}"]
    return load_config(None, [*([f"ray.num_cpus={cpus}"] if cpus else []), *sets], run.url)


#: The Ray sub-stages of the partitioned path, in order.
STAGES = (*SUB_STAGES, PoolPairs.name, PoolVerify.name, POOL_ASSEMBLE, DecideStage.name, DECIDE_ASSEMBLE)


def _worker_costs(run: RunDir) -> tuple[float, float]:
    """(CPU seconds summed over the partitioned path's tasks, the largest peak RSS of a process that
    ran one, MB): each sub-stage's ``stats/<stage>.json`` (``Stats.cpu_seconds``, ``Stats.peak_rss_mb``,
    recorded by the runner per task)."""
    stats = [run.read_json(run.stats_path(name)) for name in STAGES if run.exists(run.stats_path(name))]
    return sum(s.get("cpu_seconds", 0.0) for s in stats), max(
        (s.get("peak_rss_mb", 0.0) for s in stats), default=0.0
    )


class ScoredByRows(PoolVerify):
    """``dedup.pool_verify`` without images (the synthetic pool has none): every near pair scores 1,
    as if confirmed; the rest of the task (its part of ``pool_duplicates``, its flags) is the stage's."""

    def scores(self, near: pa.Table) -> np.ndarray:
        return np.ones(near.num_rows, np.float32)


def measure(
    n_rows: int,
    work_dir: Path,
    seed: int = 0,
    *,
    shard_size: int = 10_000,
    cpus: int | None = None,
    partition_rows: int = 2_000_000,
) -> dict:
    """Generate ``n_rows`` synthetic hash rows under ``work_dir`` and run the partitioned pool
    search and decisions on the embedded Ray; returns the figures in the module docstring
    (``found_exact``: exact copies found, ``found_near``: near pairs found). The generated run
    directory is removed after."""
    out, _, run = _run_partitioned(n_rows, Path(work_dir), seed, shard_size, cpus, partition_rows)
    shutil.rmtree(run.url, ignore_errors=True)
    return out


def _run_partitioned(
    n_rows: int, work_dir: Path, seed: int, shard_size: int, cpus: int | None, partition_rows: int
):
    """(figures, PoolResult, RunDir) of one measured partitioned run on freshly generated data."""
    run = RunDir(str(work_dir / f"dedup-{n_rows}-{seed}"))
    shutil.rmtree(run.url, ignore_errors=True)
    shards = generate(run, n_rows, shard_size, seed)
    cfg = _config(run, cpus, partition_rows, "partitioned")
    _ensure_ray(cfg)
    out = _measured(lambda: _partitioned(cfg, run, shards))
    res = out.pop("result")
    cpu, peak = _worker_costs(run)
    copy, first, near = read_pairs(run, res.layout)  # after the clock: for the checks only
    figures = {
        "stage": "dedup",
        "rows": n_rows,
        **out,
        "worker_cpu_s": round(cpu, 2),
        "worker_peak_rss_mb": round(peak, 1),
        "found_exact": len(copy),
        "found_near": len(near),
        "tasks": {name: len(run.done_tasks(name) - {"_stage"}) for name in STAGES},
    }
    return figures, (copy, first, near), run


def _ensure_ray(cfg) -> None:
    """Start the embedded Ray before the clock starts (as the stage finds it started)."""
    from pipeline.runner import ensure_ray

    ensure_ray(cfg.ray.address, cfg.ray.num_cpus)


def _measured(fn) -> dict:
    _reset_peak()
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return {
        "wall_s": round(time.perf_counter() - wall, 2),
        "driver_cpu_s": round(time.process_time() - cpu, 2),
        "driver_peak_rss_mb": round(_peak_mb(), 1),
        "result": result,
    }


def _partitioned(cfg, run: RunDir, shards: list[str]):
    """The stage's partitioned path, but for the thumbnails (every near candidate confirmed)."""
    from pipeline.runner import run_stage

    rows = ShardRows(run, shards)
    res = find_pool_duplicates(cfg, run, shards, rows.offsets, progress=False)
    run_stage(ScoredByRows(cfg, run, res.layout), progress=False, force=True)
    assemble(cfg, run, res.layout)  # dedup/pool_duplicates.parquet
    decide(cfg, run, res.layout, {}, cfg.dedup.exact_dups, progress=False, near_files=True)
    return res


def _reference(cfg, run: RunDir, shards: list[str]):
    """Today's path before issue 22: PoolIndex on the driver, an int8 reason per row, decisions from it."""
    import pyarrow.parquet as pq

    from dedup.clean import DECISIONS, DECISIONS_SCHEMA

    rows = ShardRows(run, shards)
    reason = np.zeros(rows.n, np.int8)
    with PoolIndex() as pool:
        for i, t in rows.iter_tables(["status", "sha256", "phash"]):
            lo, hi = int(rows.offsets[i]), int(rows.offsets[i + 1])
            reason[lo:hi] = status_codes(t.column("status"))
            pool.add(lo, reason[lo:hi] == 0, t.column("sha256"), t.column("phash").fill_null(0).to_numpy())
        copy, first = pool.exact_duplicates()
        reason[copy] = CODE["exact_dup"]
        near = pool.near_pairs(TAU, exclude=copy)
    later = near[:, 0]
    reason[later[reason[later] == 0]] = CODE["near_dup"]
    flagged = np.flatnonzero(reason)
    names = np.array([None, *REASONS], dtype=object)
    with run.open_atomic(DECISIONS) as fh, pq.ParquetWriter(fh, DECISIONS_SCHEMA, compression="zstd") as w:
        start = 0
        for ids in rows.iter_take(flagged, ("shard", "key", "uid")):
            codes = reason[flagged[start : start + ids.num_rows]]
            start += ids.num_rows
            w.write_table(
                pa.table(
                    {
                        **{c: ids.column(c) for c in ("shard", "key", "uid")},
                        "reason": pa.array(names[codes], pa.string()),
                        "removed": pa.array(np.ones(len(codes), bool)),
                    },
                    schema=DECISIONS_SCHEMA,
                )
            )
    return Layout.plan(shards, rows.offsets, 1, None), copy, first, near


def _check(n_rows: int, seed: int, res, ref) -> dict:
    """Both paths agree, and every planted copy is found; returns the planted counts."""
    exact, original, near = planted(n_rows, seed)
    res_copy, res_first, res_near = res
    assert np.array_equal(np.sort(res_copy), exact), "planted exact copies not all found"
    order = np.argsort(res_copy)
    assert np.array_equal(res_first[order], original), "an exact copy was matched to another first copy"
    found = set(map(tuple, res_near[:, :2].tolist()))
    missed = [p for p in map(tuple, near.tolist()) if p not in found]
    assert not missed, f"{len(missed)} planted near copies not found, e.g. {missed[:3]}"
    if ref is not None:
        _, copy, first, ref_near = ref
        assert np.array_equal(copy, res_copy) and np.array_equal(first, res_first)
        assert np.array_equal(ref_near, res_near), "partitioned and single-node near pairs differ"
    return {"planted_exact": len(exact), "planted_near": len(near)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    ap.add_argument("--partition-rows", type=int, default=2_000_000, help="dedup.pool_partition_rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-reference", action="store_true", help="skip the single-node reference")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="webclip-scale-dedup-"))
    print(
        f"[scale_dedup] {args.rows:,} rows in shards of {args.shard_size:,}, {args.cpus} CPUs, under {work}",
        file=sys.stderr,
    )
    t = time.perf_counter()
    out, res, run = _run_partitioned(
        args.rows, work, args.seed, args.shard_size, args.cpus, args.partition_rows
    )
    print(
        f"[scale_dedup] partitioned done ({time.perf_counter() - t:.0f} s with generation)", file=sys.stderr
    )
    report = {"partitioned": out}
    ref = None
    if not args.no_reference:
        shards = sorted(p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in run.glob("hashes/*.parquet"))
        cfg = _config(run, args.cpus, args.partition_rows, "single_node")
        ref_out = _measured(lambda: _reference(cfg, run, shards))
        ref = ref_out.pop("result")
        ref_out.update(
            stage="dedup (single-node reference)",
            rows=args.rows,
            worker_cpu_s=0.0,
            found_exact=len(ref[1]),
            found_near=len(ref[3]),
        )
        report["reference"] = ref_out
    report["planted"] = _check(args.rows, args.seed, res, ref)
    report["same_results"] = ref is not None
    shutil.rmtree(run.url, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
