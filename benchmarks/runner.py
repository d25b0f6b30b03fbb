"""Benchmark of the runner's own cost at many tasks, and of the extract shuffle's file opens.

    python benchmarks/runner.py [--part schedule|markers|shuffle|all] [--tasks 1000,3000] [--repeats 2]

1. schedule: a stage of T trivial tasks on an embedded Ray (2 CPUs), through ``run_stage`` with
   today's bounded window, and with the loop it replaced (every task submitted at once, then
   ``ray.wait(list(pending))`` after each completion, markers read one by one afterwards), in the same
   run. Prints the driver's CPU seconds (this process: the loop, Ray's client threads, the marker
   reads; robust to other load, unlike wall time) per 1,000 tasks, and wall seconds.
2. markers: the stats of T finished tasks summed from their markers (a rerun after an interruption):
   filesystem calls and CPU seconds, one file at a time (before) vs :meth:`RunDir.read_markers`.
   On a local disk a bulk ``cat`` still opens each file; the calls counted are the round trips an
   object store would serve one by one.
3. shuffle: the extract shuffle's file opens for pools of 5M to 5B candidates at the default layout
   (``extract.dedup_bucket_rows`` 5M, 500k rows per part), flat (every bucket task opens every group
   file) vs with merge levels at ``extract.dedup_fan_in`` (32), from the layout each would run; then
   a real extract of a synthetic pool (``--rows``, in parts of 1,000 rows, buckets of 1,000 uids: G = B
   = rows / 1,000) on ``memory://`` (every task in this process), flat vs merged: CPU seconds of the
   shuffle, filesystem calls of the whole stage, and the pool's digest, which must be the same.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from crawl import pool_dedup
from pipeline import runner
from pipeline.config import load_config
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats


class Trivial(Stage):
    """T tasks that each count one."""

    name = "trivial"
    outputs = ("trivial",)

    def __init__(self, config, run, n: int):
        super().__init__(config, run)
        self.n = n

    def tasks(self) -> list[Task]:
        return [Task(f"t{i:06d}", i) for i in range(self.n)]

    def process(self, task: Task, stats: Stats) -> None:
        stats.inc("ran")


def _old_run_on_ray(stage: Stage, todo: list[Task], bar: Any) -> tuple[list[dict], dict[str, str]]:
    """The scheduling loop before issue 22 (git 3440b98), for comparison in the same run."""
    import ray

    remote = ray.remote(runner._remote_execute).options(**runner.task_options(stage))
    stage_ref = ray.put(stage)
    pending = {remote.remote(stage_ref, task): task for task in todo}
    results, failures = [], {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=None)
        for ref in ready:
            task = pending.pop(ref)
            try:
                results.append(ray.get(ref))
            except Exception as exc:
                failures[task.id] = str(exc)
            bar.update(1)
    return results, failures


def _old_merged_task_stats(run: RunDir, stage: str, task_ids: list[str], known: Any = None) -> Stats:
    total = Stats()
    for task_id in task_ids:
        if run.is_done(stage, task_id):
            total.merge(Stats.from_dict(run.read_marker(stage, task_id)["stats"]))
    return total


def schedule(sizes: list[int], repeats: int = 2) -> None:
    runner.ensure_ray(num_cpus=2)
    new_loop, new_merge = runner._run_on_ray, runner.merged_task_stats
    print("tasks  scheduler  driver_cpu_s  per_1000_tasks_s  wall_s")
    for n in sizes:
        for label in ("before", "window") * repeats:  # interleaved: load drifts on a shared machine
            root = tempfile.mkdtemp(prefix="bench-runner-")
            config = load_config(None, ["ray.num_cpus=2"], root)
            runner._run_on_ray = _old_run_on_ray if label == "before" else new_loop
            runner.merged_task_stats = _old_merged_task_stats if label == "before" else new_merge
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                result = runner.run_stage(Trivial(config, RunDir(root), n), progress=False)
            finally:
                runner._run_on_ray, runner.merged_task_stats = new_loop, new_merge
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert result.stats.counts["ran"] == n
            print(f"{n:>5}  {label:<9}  {cpu:>12.2f}  {1000 * cpu / n:>16.3f}  {wall:>6.1f}")
            shutil.rmtree(root, ignore_errors=True)


class _Counting:
    def __init__(self, fs):
        self._fs, self.calls = fs, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **k: Any) -> Any:
            self.calls += 1
            return attr(*a, **k)

        return call


def markers(sizes: list[int]) -> None:
    print("markers  read      fs_calls  cpu_s")
    for n in sizes:
        root = tempfile.mkdtemp(prefix="bench-markers-")
        run = RunDir(root)
        ids = [f"t{i:06d}" for i in range(n)]
        for t in ids:
            run.mark_done("s", t, {"task": t, "stats": {"counts": {"ran": 1}, "dropped": {}, "seconds": 0.01}})
        for label, fn in (("one-by-one", _old_merged_task_stats), ("bulk", runner.merged_task_stats)):
            fs = run.fs = _Counting(run.fs._fs if isinstance(run.fs, _Counting) else run.fs)
            cpu = time.process_time()
            total = fn(run, "s", ids)
            cpu = time.process_time() - cpu
            assert total.counts["ran"] == n
            print(f"{n:>7}  {label:<10} {fs.calls:>8}  {cpu:.2f}")
        shutil.rmtree(root, ignore_errors=True)


def shuffle(fan_in: int = 32, bucket_rows: int = 5_000_000, rows_per_part: int = 500_000) -> None:
    print(f"candidates  parts  groups  buckets  flat_opens  merged_opens (fan_in {fan_in})  merge_levels")
    for n in (5_000_000, 50_000_000, 500_000_000, 5_000_000_000):
        parts = math.ceil(n / rows_per_part)
        buckets, groups = pool_dedup.layout(n, parts, bucket_rows)
        flat = 2 * groups * buckets
        uids, drops = pool_dedup.file_counts(groups, fan_in), pool_dedup.file_counts(buckets, fan_in)
        merged = sum(uids[:-1]) + sum(drops[:-1]) + buckets * uids[-1] + groups * drops[-1]
        print(f"{n:>10,}  {parts:>5}  {groups:>6}  {buckets:>7}  {flat:>10,}  {merged:>12,}"
              f"{'':>18}{len(uids) - 1}+{len(drops) - 1}")


def shuffle_run(rows: int, fan_in: int = 32) -> None:
    import hashlib
    import json

    from crawl.extract import ExtractStage

    folder = Path(tempfile.mkdtemp(prefix="bench-shuffle-"))
    files = 20
    per_file = rows // files
    for f in range(files):  # about a third of each file repeats pairs of earlier files
        lines = [json.dumps({"url": f"https://x.org/{(f * per_file + i) % (files * per_file * 2 // 3)}.jpg",
                             "text": f"caption {(f * per_file + i) % (files * per_file * 2 // 3)}"})
                 for i in range(per_file)]
        (folder / f"pool-{f:02d}.jsonl").write_text("\n".join(lines) + "\n")
    print(f"extract of {rows:,} rows (G = B = {rows // 1000}): layout  shuffle_cpu_s  fs_calls  pool_rows  digest")
    for label, fan in (("flat", 1024), (f"fan_in {fan_in}", fan_in)) * 2:  # 1024 (the most): no merge level
        url = f"memory://bench-shuffle-{label.replace(' ', '')}-{time.monotonic_ns()}"
        config = load_config(None, [f"extract.inputs=[{{path: '{folder}/pool-*.jsonl', kind: jsonl}}]",
                                    "extract.rows_per_part=1000", "extract.dedup_bucket_rows=1000",
                                    f"extract.dedup_fan_in={fan}"], url)
        run = RunDir(url)
        stage = ExtractStage(config, run)
        timings: dict[str, float] = {}
        original = stage.finalize

        def timed(stats: Stats, original=original, timings=timings) -> None:
            start = time.process_time()
            original(stats)
            timings["cpu"] = time.process_time() - start

        stage.finalize = timed
        counting = run.fs = _Counting(run.fs)
        result = runner.run_stage(stage, progress=False)
        digest = hashlib.sha256()
        for p in run.glob("pool/part-*.parquet"):
            digest.update(run.read_bytes(p))
        print(f"{'':>40}{label:<10} {timings['cpu']:>8.2f}  {counting.calls:>9,}  {result.stats.counts['pool_rows']:>9,}"
              f"  {digest.hexdigest()[:12]}")
        run.fs = counting._fs
        run.remove("", recursive=True)
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["schedule", "markers", "shuffle", "all"], default="all")
    parser.add_argument("--tasks", default="1000,3000", help="comma-separated stage sizes")
    parser.add_argument("--rows", type=int, default=200_000, help="shuffle: rows of the synthetic pool")
    parser.add_argument("--repeats", type=int, default=2, help="schedule: runs of each loop, interleaved")
    args = parser.parse_args()
    sizes = [int(x) for x in args.tasks.split(",")]
    if args.part in ("schedule", "all"):
        schedule(sizes, args.repeats)
    if args.part in ("markers", "all"):
        markers(sizes)
    if args.part in ("shuffle", "all"):
        shuffle()
        shuffle_run(args.rows)


if __name__ == "__main__":
    main()
