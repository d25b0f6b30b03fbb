"""Scale benchmark: vocab → match → balance → dedup on 1M, 5M, 20M synthetic pool rows, embedded Ray.

    python benchmarks/scale.py [--sizes 1M,5M,20M] [--entries 500000] [--rows-per-part 250000]
                               [--num-cpus 2] [--baseline FILE] [--save FILE] [--write-rates]
    python benchmarks/scale.py --rates-from benchmarks/results/scale-….json   # rates from a saved run

Data: a 500k-entry vocabulary (WordNet heads, wordfreq words, Web 1T bigrams: ``benchmarks/match.py``'s
``build_vocabulary``) given to the vocab stage as a user list (``vocab.sources=[file]``), and pool
parts of ``--rows-per-part`` rows: every CC3M-val and COCO-val caption, then seeded recombinations of
two real captions at a word boundary (the same rows for the same seed and size, part by part).

Each (size, stage) runs in a fresh Python process with its own embedded Ray (``--num-cpus`` CPUs), so
the driver's peak RSS (``ru_maxrss``) is that stage's at that size, and the Ray workers are fresh too.
Per stage it records: wall seconds of ``run_stage``; the driver's CPU seconds over ``run_stage``
(``process_time``: the driver's own threads, Ray's client threads included; Ray's start-up is reported
apart); the workers' CPU seconds and largest peak RSS, summed / maxed from the per-task accounting in
the completion markers (``Stats.cpu_seconds``, ``Stats.peak_rss_mb``); and µs of CPU (workers + driver)
per row per core. Then it fits, per stage, time and memory against N (least squares: CPU = a + b·N) and
checks the targets of issue 22 at the largest size: driver CPU ≤ 5 % of worker CPU; driver peak RSS
within ±10 % from the smallest to the largest size; CPU per row per core no worse than ``--baseline``
(a JSON this script saved earlier; 10 % tolerance for a shared machine).

``--write-rates`` (or ``--rates-from`` a saved results file) puts the fits, with their source, in
``benchmarks/rates.json``'s ``stages``, which ``webclip plan`` reads; the file's other rates are kept.

Dedup is measured by ``benchmarks/scale_dedup.py`` (``measure(n_rows, work_dir, seed) -> dict``) when
that module exists; otherwise the dedup row says it is pending and no figure is made up.

CPU seconds, not wall time, are the figures to compare on a shared machine: wall time includes waiting
for a core another process holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import inspect
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
RATES = ROOT / "benchmarks" / "rates.json"
STAGES = ("vocab", "match", "balance", "dedup")
#: The stages whose work grows with N: the targets apply to them (vocab reads the vocabulary only).
ROW_STAGES = ("match", "balance", "dedup")
DRIVER_CPU_SHARE = 0.05
DRIVER_RSS_FLAT = 0.10
THROUGHPUT_TOLERANCE = 0.10


def parse_size(text: str) -> int:
    """``200k``, ``1M``, ``20M``, ``1500000`` → rows; a clear error for anything else."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9}.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in "kmb" else t
    try:
        value = float(digits) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a row count such as 200k, 1M or 20M") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: must be at least 1 row")
    return int(value)


def size_label(n: int) -> str:
    """1000000 → ``1M``, 200000 → ``200k``."""
    if n % 10**6 == 0:
        return f"{n // 10**6}M"
    if n % 10**3 == 0:
        return f"{n // 10**3}k"
    return str(n)


# ---------------------------------------------------------------------------------------- data
def write_pool(run_dir: Path, n_rows: int, rows_per_part: int, seed: int = 0) -> int:
    """Write ``pool/part-*.parquet`` with ``n_rows`` rows (real captions first, then recombinations)."""

    from crawl.pairs import pool_table
    from pipeline.rundir import RunDir

    real = real_captions()
    words = [c.split() for c in real]
    rng = random.Random(seed)
    run = RunDir(str(run_dir))
    parts = (n_rows + rows_per_part - 1) // rows_per_part
    start = time.perf_counter()
    for k in range(parts):
        lo, hi = k * rows_per_part, min(n_rows, (k + 1) * rows_per_part)
        texts = []
        for i in range(lo, hi):
            if i < len(real):
                texts.append(real[i])
                continue
            a, b = words[rng.randrange(len(words))], words[rng.randrange(len(words))]
            cut_a, cut_b = rng.randint(1, max(1, len(a))), rng.randint(0, max(0, len(b) - 1))
            texts.append(" ".join(a[:cut_a] + b[cut_b:]))
        urls = [f"https://img{i % 997}.example.org/{i}.jpg" for i in range(lo, hi)]
        run.write_parquet(
            f"pool/part-{k:05d}.parquet",
            pool_table(urls, texts, "bench"),
        )
        print(f"  pool part {k + 1}/{parts} written ({hi:,} rows, {time.perf_counter() - start:.0f}s)",
              file=sys.stderr, flush=True)
    return parts


def real_captions() -> list[str]:
    """Every CC3M-val and COCO-val caption in ``../shared/data`` (40,847), in file order."""
    tsv = DATA / "captions" / "cc3m_val.tsv"
    coco = DATA / "captions" / "coco_val2017_captions.json"
    for f in (tsv, coco):
        if not f.exists():
            raise SystemExit(f"scale.py: {f} is missing; the benchmark recombines its real captions "
                             "(see ../shared/data/README.md)")
    caps = [line.split("\t", 1)[0] for line in tsv.read_text(encoding="utf-8").splitlines()]
    caps += [a["caption"].strip() for a in json.loads(coco.read_text(encoding="utf-8"))["annotations"]]
    return caps


def vocabulary_file(work: Path, entries: int) -> Path:
    """The benchmark vocabulary as a user list (one entry per line), built once per work folder."""
    path = work / f"vocabulary-{entries}.txt"
    if not path.exists():
        from benchmarks.match import build_vocabulary

        path.write_text("\n".join(build_vocabulary(entries)) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- one stage
def stage_overrides(vocab_file: Path, entries: int, num_cpus: int) -> list[str]:
    """The config of every measured stage: the user-list vocabulary, embedded Ray of ``num_cpus``."""
    return [
        "vocab.sources=[file]",
        f"vocab.files=[{vocab_file}]",
        f"vocab.max_entries={entries}",
        "balance.plot=false",
        f"ray.num_cpus={num_cpus}",
    ]


def measure_stage(name: str, run_url: str, overrides: list[str]) -> dict[str, Any]:
    """Run one stage in this (fresh) process on an embedded Ray; its driver and worker figures."""
    import ray

    from pipeline.cli import stage_class
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.runner import ensure_ray, run_stage
    from pipeline.stats import peak_rss_mb

    config = load_config(None, overrides, run_url)
    run = RunDir(run_url)
    t0, c0 = time.perf_counter(), time.process_time()
    ensure_ray(None, config.ray.num_cpus, False, [])
    ray_start = (time.perf_counter() - t0, time.process_time() - c0)
    stage = stage_class(name)(config, run)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_stage(stage, progress=False, force=True)
    wall, driver_cpu = time.perf_counter() - t0, time.process_time() - c0
    ray.shutdown()
    stats = result.stats
    rows = stats.counts.get("in", 0)
    return {
        "stage": name,
        "rows": int(rows),
        "tasks": result.tasks_total,
        "wall_s": wall,
        "driver_cpu_s": driver_cpu,
        "worker_cpu_s": stats.cpu_seconds,
        "driver_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": stats.peak_rss_mb,
        "ray_start_wall_s": ray_start[0],
        "ray_start_cpu_s": ray_start[1],
        "counts": dict(stats.counts),
    }


def measure_dedup(n_rows: int, work: Path, seed: int, num_cpus: int | None = None) -> dict[str, Any] | None:
    """``benchmarks/scale_dedup.py``'s ``measure`` in this process, or None while it does not exist."""
    path = ROOT / "benchmarks" / "scale_dedup.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("scale_dedup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    extra = {"cpus": num_cpus} if "cpus" in inspect.signature(module.measure).parameters else {}
    return dict(module.measure(n_rows, work, seed=seed, **extra))


def _in_subprocess(args: list[str]) -> dict[str, Any] | None:
    """Run ``scale.py --one …`` in a fresh interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scale.py {' '.join(args)} failed (exit {proc.returncode}); see its output above")
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


# ---------------------------------------------------------------------------------- analysis
def task_count(r: dict[str, Any]) -> int:
    """A stage's task count; dedup reports one per sub-stage (a dict), summed here."""
    tasks = r.get("tasks", 0)
    return sum(tasks.values()) if isinstance(tasks, dict) else int(tasks)


def per_row_us(r: dict[str, Any]) -> float:
    """µs of CPU (workers + driver) per row: one core's time per row, whatever the core count."""
    return (r["worker_cpu_s"] + r["driver_cpu_s"]) / max(r["rows"], 1) * 1e6


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs; slope 0 with one point."""
    if len(xs) < 2:
        return (0.0, ys[0] / xs[0] if xs and xs[0] else 0.0)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def analyse(results: dict[str, dict[str, dict[str, Any]]], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Growth fits and target checks per stage from ``results[size][stage]``."""
    sizes = sorted(results, key=int)
    out: dict[str, Any] = {}
    for name in STAGES:
        pts = [(int(s), results[s][name]) for s in sizes if results[s].get(name)]
        if not pts:
            continue
        ns = [float(n) for n, _ in pts]
        a_w, b_w = fit(ns, [r["worker_cpu_s"] for _, r in pts])
        a_d, b_d = fit(ns, [r["driver_cpu_s"] for _, r in pts])
        _, b_wall = fit(ns, [r["wall_s"] for _, r in pts])
        _, b_rss_w = fit(ns, [r["worker_peak_rss_mb"] for _, r in pts])
        _, b_rss_d = fit(ns, [r["driver_peak_rss_mb"] for _, r in pts])
        small, large = pts[0][1], pts[-1][1]
        entry: dict[str, Any] = {
            "worker_cpu_fixed_s": a_w,
            "worker_cpu_us_per_row": b_w * 1e6,
            "driver_cpu_fixed_s": a_d,
            "driver_cpu_us_per_row": b_d * 1e6,
            "wall_us_per_row": b_wall * 1e6,
            "worker_rss_mb_per_million_rows": b_rss_w * 1e6,
            "driver_rss_mb_per_million_rows": b_rss_d * 1e6,
            "largest_rows": large["rows"],
            "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for _, r in pts),
            "driver_peak_rss_mb": max(r["driver_peak_rss_mb"] for _, r in pts),
        }
        if name in ROW_STAGES:
            share = large["driver_cpu_s"] / large["worker_cpu_s"] if large["worker_cpu_s"] else float("inf")
            entry["driver_cpu_share"] = share
            entry["driver_cpu_ok"] = share <= DRIVER_CPU_SHARE
            if len(pts) > 1:
                growth = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"] - 1
                entry["driver_rss_growth"] = growth
                entry["driver_rss_ok"] = abs(growth) <= DRIVER_RSS_FLAT
            base = _baseline_point(baseline, name, int(pts[-1][0])) if baseline else None
            if base is not None:
                entry["baseline_us_per_row"] = base
                entry["throughput_ratio"] = base / per_row_us(large)  # > 1: faster than the baseline
                entry["throughput_ok"] = entry["throughput_ratio"] >= 1 - THROUGHPUT_TOLERANCE
        out[name] = entry
    return out


def _baseline_point(baseline: dict[str, Any], name: str, n: int) -> float | None:
    """The baseline's CPU µs/row for ``name`` at ``n`` rows, or None if it did not run that size.

    Only the same size compares: at small sizes the fixed costs (matcher build) weigh more per row.
    """
    r = baseline.get("results", {}).get(str(n), {}).get(name)
    return per_row_us(r) if r else None


def report(results: dict[str, dict[str, dict[str, Any]]], analysis: dict[str, Any], pending: list[str]) -> str:
    """The printed table, growth fits and target verdicts."""
    lines = [
        f"{'size':>6} {'stage':<8}{'rows':>12}{'tasks':>6}{'wall s':>9}{'worker CPU s':>14}{'driver CPU s':>14}"
        f"{'drv/wrk':>9}{'worker RSS MB':>15}{'driver RSS MB':>15}{'us/row/core':>13}"
    ]
    shown = [n for n in STAGES if n in pending or any(n in by_stage for by_stage in results.values())]
    for s in sorted(results, key=int):
        for name in shown:
            r = results[s].get(name)
            if r is None:
                lines.append(f"{size_label(int(s)):>6} {name:<8}  pending: benchmarks/scale_dedup.py is not here yet")
                continue
            if name not in ROW_STAGES:  # the vocabulary alone, on the driver: no rows, no workers
                lines.append(
                    f"{size_label(int(s)):>6} {name:<8}{'-':>12}{task_count(r):>6}{r['wall_s']:>9.1f}"
                    f"{r['worker_cpu_s']:>14.1f}{r['driver_cpu_s']:>14.2f}{'-':>9}"
                    f"{r['worker_peak_rss_mb']:>15,.0f}{r['driver_peak_rss_mb']:>15,.0f}{'-':>13}"
                )
                continue
            share = r["driver_cpu_s"] / r["worker_cpu_s"] if r["worker_cpu_s"] else float("inf")
            lines.append(
                f"{size_label(int(s)):>6} {name:<8}{r['rows']:>12,}{task_count(r):>6}{r['wall_s']:>9.1f}"
                f"{r['worker_cpu_s']:>14.1f}{r['driver_cpu_s']:>14.2f}{share:>9.1%}"
                f"{r['worker_peak_rss_mb']:>15,.0f}{r['driver_peak_rss_mb']:>15,.0f}{per_row_us(r):>13.2f}"
            )
    lines.append("\ngrowth (least squares over the sizes: CPU = fixed + per-row · N)")
    for name, a in analysis.items():
        lines.append(
            f"  {name:<8} worker CPU {a['worker_cpu_us_per_row']:.3f} us/row + {a['worker_cpu_fixed_s']:.1f} s; "
            f"driver CPU {a['driver_cpu_us_per_row']:.3f} us/row + {a['driver_cpu_fixed_s']:.1f} s; "
            f"RSS slope worker {a['worker_rss_mb_per_million_rows']:+.1f}, driver "
            f"{a['driver_rss_mb_per_million_rows']:+.1f} MB per 1M rows"
        )
    lines.append("\ntargets (issue 22) at the largest size:")
    for name, a in analysis.items():
        if name not in ROW_STAGES:
            lines.append(f"  {name:<8} does not grow with N (it reads the vocabulary only): no row targets")
            continue
        verdict = [f"driver CPU {a['driver_cpu_share']:.1%} of worker CPU (<= 5%: "
                   f"{'met' if a['driver_cpu_ok'] else 'NOT met'})"]
        if "driver_rss_growth" in a:
            verdict.append(f"driver peak RSS {a['driver_rss_growth']:+.1%} smallest->largest (+-10%: "
                           f"{'met' if a['driver_rss_ok'] else 'NOT met'})")
        if "throughput_ratio" in a:
            verdict.append(f"CPU per row {a['throughput_ratio']:.2f}x the baseline's speed "
                           f"({'met' if a['throughput_ok'] else 'NOT met'})")
        else:
            verdict.append("no baseline at this size (--baseline)")
        lines.append(f"  {name:<8} " + "; ".join(verdict))
    for name in pending:
        lines.append(f"  {name:<8} pending: benchmarks/scale_dedup.py is not here yet (no figure made up)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- rates
def write_rates(analysis: dict[str, Any], meta: dict[str, Any], path: Path = RATES) -> None:
    """Update the stage rates in ``benchmarks/rates.json`` with this run's fits (others untouched)."""
    rates = json.loads(path.read_text()) if path.exists() else {"stages": {}}
    source = {
        "benchmark": "benchmarks/scale.py",
        "command": meta["command"],
        "date": meta["date"],
        "commit": meta["commit"],
        "machine": meta["machine"],
        "sizes": meta["sizes"],
    }
    for name, a in analysis.items():
        entry = {
            "worker_cpu_us_per_row": round(a["worker_cpu_us_per_row"], 4),
            "worker_cpu_fixed_s": round(a["worker_cpu_fixed_s"], 2),
            "bench_workers": meta["num_cpus"],
            "driver_cpu_us_per_row": round(a["driver_cpu_us_per_row"], 4),
            "driver_cpu_fixed_s": round(a["driver_cpu_fixed_s"], 2),
            "worker_peak_rss_mb": round(a["worker_peak_rss_mb"], 1),
            "driver_peak_rss_mb": round(a["driver_peak_rss_mb"], 1),
            "driver_rss_mb_per_million_rows": round(a["driver_rss_mb_per_million_rows"], 2),
            "driver_rss_growth": round(a.get("driver_rss_growth", 0.0), 4),
            "largest_rows": a["largest_rows"],
            "source": source,
        }
        if name == "match" and meta.get("pool_bytes_per_row"):
            entry["pool_bytes_per_row"] = round(meta["pool_bytes_per_row"], 1)
        rates.setdefault("stages", {})[name] = entry
    path.write_text(json.dumps(rates, indent=2) + "\n")
    print(f"rates written to {path}", file=sys.stderr)


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + ("+changes" if dirty else ""),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs {mem_gb:.0f} GB, embedded Ray num_cpus={args.num_cpus}",
        "sizes": [size_label(n) for n in args.sizes],
        "num_cpus": args.num_cpus,
        "entries": args.entries,
        "rows_per_part": args.rows_per_part,
    }


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,5M,20M", help="comma-separated row counts (200k, 1M, 20M…)")
    ap.add_argument("--entries", type=int, default=500_000, help="vocabulary size")
    ap.add_argument("--rows-per-part", type=int, default=250_000, help="pool rows per parquet part (one task)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the embedded Ray")
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to measure, in order")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="folder for the runs (default: a temporary folder, removed after)")
    ap.add_argument("--baseline", help="a JSON this script saved earlier: throughput is compared with it")
    ap.add_argument("--save", help="write the results JSON here (default benchmarks/results/scale-<date>.json)")
    ap.add_argument("--write-rates", action="store_true", help="update the rates file's stage rates")
    ap.add_argument("--rates-file", default=str(RATES), help="the rates file --write-rates updates")
    ap.add_argument("--rates-from", metavar="FILE",
                    help="write the stage rates of a results JSON this script saved, without running anything")
    ap.add_argument("--one", nargs=2, metavar=("STAGE", "RUN"), help=argparse.SUPPRESS)
    ap.add_argument("--dedup-rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--sizes: {exc}")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"--stages: unknown {unknown}; choose from {', '.join(STAGES)}")

    if args.one:  # the child process: one stage, one size
        name, run_url = args.one
        if name == "dedup":
            result = measure_dedup(args.dedup_rows, Path(run_url), args.seed, args.num_cpus)
        else:
            vocab = vocabulary_file(Path(run_url).parent, args.entries)
            result = measure_stage(name, run_url, stage_overrides(vocab, args.entries, args.num_cpus))
        print(json.dumps(result))
        return 0

    if args.rates_from:
        saved = json.loads(Path(args.rates_from).read_text())
        meta = {k: saved.get(k) for k in ("command", "date", "commit", "machine", "sizes", "pool_bytes_per_row")}
        meta["num_cpus"] = saved.get("num_cpus") or args.num_cpus
        write_rates(analyse(saved["results"], None), meta, Path(args.rates_file))
        return 0

    meta = _meta(args)
    pool_bytes: list[float] = []
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="webclip-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    pending: list[str] = []
    try:
        t0 = time.perf_counter()
        vocabulary_file(work, args.entries)
        print(f"vocabulary of {args.entries:,} entries ready ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
        for n in args.sizes:
            label = size_label(n)
            run_dir = work / f"run-{label}"
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"\n== {label} rows: writing the pool", file=sys.stderr, flush=True)
            write_pool(run_dir, n, args.rows_per_part, args.seed)
            pool_bytes.append(sum(f.stat().st_size for f in (run_dir / "pool").glob("*.parquet")) / n)
            results[str(n)] = {}
            for name in stages:
                common = ["--entries", str(args.entries), "--num-cpus", str(args.num_cpus), "--seed", str(args.seed)]
                if name == "dedup":
                    r = _in_subprocess(["--one", "dedup", str(work / f"dedup-{label}"), "--dedup-rows", str(n), *common])
                    if r is None:
                        if "dedup" not in pending:
                            pending.append("dedup")
                        print(f"[{label}] dedup pending: benchmarks/scale_dedup.py is not here yet", file=sys.stderr)
                        continue
                else:
                    r = _in_subprocess(["--one", name, str(run_dir), *common])
                results[str(n)][name] = r
                print(f"[{label}] {name}: wall {r['wall_s']:.1f}s, worker CPU {r['worker_cpu_s']:.1f}s, driver CPU "
                      f"{r['driver_cpu_s']:.2f}s, driver RSS {r['driver_peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)  # a 20M run is GBs; the next size starts clean
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    analysis = analyse(results, baseline)
    meta["pool_bytes_per_row"] = sum(pool_bytes) / len(pool_bytes) if pool_bytes else None
    meta["load_average_end"] = os.getloadavg()
    print(f"\nmachine: {meta['machine']}; load average at the end {meta['load_average_end'][0]:.1f} "
          f"(CPU seconds are the comparable figures on a shared machine)\n")
    print(report(results, analysis, pending))
    out = Path(args.save) if args.save else RESULTS / f"scale-{dt.datetime.now(dt.UTC):%Y-%m-%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": results, "analysis": analysis, "pending": pending}, indent=2) + "\n")
    print(f"\nresults saved to {out}")
    if args.write_rates:
        write_rates(analysis, meta, Path(args.rates_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
