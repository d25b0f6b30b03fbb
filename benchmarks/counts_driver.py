"""Driver CPU of match's and balance's once-per-stage work: count sums and the curated-size estimate.

    python benchmarks/counts_driver.py --rows 1000000 --rows-per-part 10000 [--work DIR] [--t 200]
    python benchmarks/counts_driver.py ... --sums-only 10   # the count sums alone, on 10 × the parts

Builds (once, in ``--work``) a pool of real captions recombined (CC3M/COCO, seeded, as
``benchmarks/match.py``) against ``benchmarks/match.py``'s 500k-entry vocabulary, runs the match
tasks and then, timed in this process (CPU seconds of the driver, which a loaded machine does not
inflate the way it does wall time):

* ``MatchStage.finalize``: the global per-entry counts from the parts' sparse count files;
* ``BalanceStage.check``: the expected curated size printed before balancing;
* ``BalanceStage.finalize``: the per-entry counts after balancing.

The balance tasks run between them, untimed. Ray is started (embedded, ``--num-cpus``) before any
timing, so its start-up is not charged to a stage; work the stages hand to Ray tasks is the workers'
(their summed task seconds are printed from the sub-stages' stats). Run it with ``PYTHONPATH``
pointing at another checkout to measure that code on the same pool: the digests of
``match/counts.parquet`` and ``balance/entry_counts.parquet`` printed at the end must agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ off the path (Ray workers get the driver's): its dedup.py would shadow the dedup package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
if not os.environ.get("PYTHONPATH"):  # else the checkout it names is the code measured
    sys.path.insert(0, str(REPO))


def _bench_match():
    """benchmarks/match.py (its vocabulary and caption data), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_match", REPO / "benchmarks" / "match.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _captions(real: list[str], n: int, seed: int) -> list[str]:
    """``n`` recombinations of two real captions at a word boundary (benchmarks/match.py's rule)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(real).split(), rng.choice(real).split()
        cut_a, cut_b = rng.randint(1, max(1, len(a))), rng.randint(0, max(0, len(b) - 1))
        out.append(" ".join(a[:cut_a] + b[cut_b:]))
    return out


def _real_captions() -> list[str]:
    """Every CC3M-val and COCO-val caption (``../shared/data/captions``)."""
    DATA = _bench_match().DATA

    tsv = (DATA / "captions" / "cc3m_val.tsv").read_text(encoding="utf-8")
    caps = [line.split("\t", 1)[0] for line in tsv.splitlines()]
    coco = json.loads((DATA / "captions" / "coco_val2017_captions.json").read_text(encoding="utf-8"))
    return caps + [a["caption"].strip() for a in coco["annotations"]]


def prepare(work: Path, rows: int, rows_per_part: int, entries: int) -> str:
    """The run directory with a pool and its match outputs (built unless ``work`` has this one)."""
    import pyarrow as pa

    from crawl.match import MatchStage
    from crawl.pairs import pool_table
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    spec = {"rows": rows, "rows_per_part": rows_per_part, "entries": entries}
    run_url = str(work / "run")
    run = RunDir(run_url)
    if run.exists("bench.json") and run.read_json("bench.json") == spec:
        print(f"reusing the pool and match parts in {run_url}", file=sys.stderr)
        return run_url
    t0 = time.perf_counter()
    vocab = _bench_match().build_vocabulary(entries)
    run.write_parquet(
        "vocab/entries.parquet",
        pa.table(
            {
                "entry_id": pa.array(range(len(vocab)), pa.int32()),
                "entry": vocab,
                "source": ["bench"] * len(vocab),
            }
        ),
    )
    real = _real_captions()
    n_parts = -(-rows // rows_per_part)
    for k in range(n_parts):
        texts = _captions(real, min(rows_per_part, rows - k * rows_per_part), seed=k)
        urls = [f"https://img.example.org/{k}/{i}.jpg" for i in range(len(texts))]
        run.write_parquet(
            f"pool/part-{k:05d}.parquet",
            pool_table(urls, texts, "bench"),
        )
    print(f"pool: {rows:,} rows in {n_parts} parts ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    stage = MatchStage(load_config(None, [], run_url), run)
    stats = Stats()
    for i, task in enumerate(stage.tasks()):
        stage.process(task, stats)
        if (i + 1) % 20 == 0 or i + 1 == n_parts:
            print(f"match tasks: {i + 1}/{n_parts} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    run.write_json("bench_match_stats.json", stats.to_dict())
    run.write_json("bench.json", spec)
    return run_url


def _digest(run, rel: str, columns: list[str]) -> str:
    table = run.read_parquet(rel, columns=columns)
    h = hashlib.sha256()
    for name in columns:
        h.update(table.column(name).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _sub_stage_seconds(run, stage: str) -> float:
    return sum(run.read_json(p).get("seconds", 0.0) for p in run.glob(f"stats/{stage}.counts*.json"))


def measure(run_url: str, t: int, num_cpus: int) -> dict:
    """Driver CPU and wall seconds of match.finalize, balance.check and balance.finalize."""
    from crawl.balance import BalanceStage
    from crawl.match import MatchStage
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.runner import ensure_ray
    from pipeline.stats import Stats

    run = RunDir(run_url)
    for p in run.glob("stats/*.counts*.json"):
        run.remove(p)
    cfg = load_config(None, [f"balance.t={t}", "balance.plot=false", f"ray.num_cpus={num_cpus}"], run_url)
    ensure_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.include_dashboard, [])
    match = MatchStage(cfg, run)
    mstats = Stats.from_dict(run.read_json("bench_match_stats.json"))
    run.write_json("stats/match.json", {"stage": "match", **mstats.to_dict()})
    out = {"parts": len(match.tasks()), "rows": mstats.counts["in"], "matched": mstats.counts["matched"]}
    out["match.finalize"] = _timed(lambda: match.finalize(mstats))
    balance = BalanceStage(cfg, run)
    out["balance.check"] = _timed(balance.check)
    bstats = Stats()
    for task in balance.tasks():  # the workers' part, untimed
        balance.process(task, bstats)
    out["balance.finalize"] = _timed(lambda: balance.finalize(bstats))
    out["estimate"] = getattr(balance, "_estimate", None)
    out["kept"] = bstats.counts["out"]
    out["reduce_task_s"] = {s: _sub_stage_seconds(run, s) for s in ("match", "balance")}
    out["match_counts"] = _digest(run, "match/counts.parquet", ["entry_id", "count"])
    out["entry_counts"] = _digest(
        run, "balance/entry_counts.parquet", ["entry_id", "count_before", "count_after"]
    )
    return out


def measure_sums(run_url: str, copies: int, num_cpus: int) -> dict:
    """Driver CPU of summing ``copies`` × the parts' count files: the old serial loop vs the tree.

    The files are match's own, copied under ``<run>/sums/`` (real per-part sparsity, more parts than
    this machine can match): ``np.add.at`` per file in the driver (the code before issue 22) against
    :func:`crawl.count_reduce.reduce_counts` (sub-stages on Ray, then at most ``fan_in`` files here).
    """
    import numpy as np

    from crawl import count_reduce
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.runner import ensure_ray
    from pipeline.stage import Stage

    run = RunDir(run_url)
    cfg = load_config(None, [f"ray.num_cpus={num_cpus}"], run_url)
    ensure_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.include_dashboard, [])
    parts = run.glob("match/_counts/*.parquet")
    files = []
    for c in range(copies):
        for rel in parts:
            dst = f"sums/_counts/c{c:03d}-{rel.rsplit('/', 1)[-1]}"
            if not run.exists(dst):
                run.write_bytes(dst, run.read_bytes(rel))
            files.append(dst)
    size = int(run.read_parquet("match/counts.parquet").num_rows)

    def serial() -> np.ndarray:
        total = np.zeros(size, np.int64)
        for rel in files:
            t = run.read_parquet(rel)
            np.add.at(total, t.column("entry_id").to_numpy(), t.column("count").to_numpy())
        return total

    class Sums(Stage):
        name = "sums"

    got: dict[str, np.ndarray] = {}
    out = {
        "files": len(files),
        "nonzero_per_file": int(np.mean([run.read_parquet(f).num_rows for f in parts])),
    }
    out["serial"] = _timed(lambda: got.setdefault("serial", serial()))
    out["tree"] = _timed(
        lambda: got.setdefault("tree", count_reduce.reduce_counts(Sums(cfg, run), files, size))
    )
    count_reduce.cleanup(run, "sums")
    out["equal"] = bool(np.array_equal(got["serial"], got["tree"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-part", type=int, default=20_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--t", type=int, default=200, help="balance.t (small, so balancing bites at this size)")
    ap.add_argument("--num-cpus", type=int, default=2, help="the embedded Ray's CPUs")
    ap.add_argument("--work", type=Path, default=None, help="keep the pool here (reused when it matches)")
    ap.add_argument(
        "--sums-only",
        type=int,
        default=0,
        metavar="COPIES",
        help="only time summing COPIES × the parts' count files: the old serial loop vs the tree",
    )
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="webclip-bench-counts-"))
    run_url = prepare(work, args.rows, args.rows_per_part, args.entries)
    if args.sums_only:
        r = measure_sums(run_url, args.sums_only, args.num_cpus)
        print(json.dumps(r), file=sys.stderr)
        print(f"\nsumming {r['files']:,} count files ({r['nonzero_per_file']:,} entries each on average)")
        print(f"{'driver':28}{'CPU s':>9}{'wall s':>9}")
        for key in ("serial", "tree"):
            print(f"{key:28}{r[key][0]:>9.2f}{r[key][1]:>9.2f}")
        print(f"identical totals: {r['equal']}")
        return
    r = measure(run_url, args.t, args.num_cpus)
    print(json.dumps(r), file=sys.stderr)
    print(f"\n{r['rows']:,} pool rows, {r['matched']:,} matched, {r['parts']} parts, t={args.t:,}")
    print(f"{'driver, once per stage':28}{'CPU s':>9}{'wall s':>9}")
    for key in ("match.finalize", "balance.check", "balance.finalize"):
        cpu, wall = r[key]
        print(f"{key:28}{cpu:>9.2f}{wall:>9.2f}")
    est = f"{r['estimate']:,.0f}" if r["estimate"] is not None else "not recorded (printed above)"
    print(f"expected curated size {est}; kept {r['kept']:,}")
    print(f"reduce sub-stage task seconds (workers): {r['reduce_task_s']}")
    print(f"digests: match/counts {r['match_counts']}, balance/entry_counts {r['entry_counts']}")


if __name__ == "__main__":
    main()
