"""Driver script: run HashLinesStage on a run directory (used by the kill and cluster tests)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixture_stage import HashLinesStage

from pipeline.config import load_config
from pipeline.rundir import RunDir
from pipeline.runner import run_stage

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--stall-from", type=int, default=None)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    config = load_config(None, [f"ray.num_cpus={args.num_cpus}", "ray.task_retries=3"], args.run)
    result = run_stage(HashLinesStage(config, RunDir(args.run), args.input, args.delay, stall_from=args.stall_from))
    print(f"DONE tasks={result.tasks_total} skipped={result.tasks_skipped} rows={result.stats.counts['out']}")
