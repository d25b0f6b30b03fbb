"""Interrupting the demo (SIGINT, then SIGKILL of its whole process group) at random points and rerunning
completes it with the same artifacts as the uninterrupted run of the same configuration.

The points are drawn from a seed printed at the start (``-s`` shows it); set ``WEBCLIP_INTERRUPT_SEED``
to replay one. A point is (stage, progress inside it): a number of finished tasks for a Ray stage, a
number of finished steps for train; the seconds it takes to get there do not matter.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from demo.__main__ import reconcile
from pipeline.cli import stage_class
from pipeline.config import STAGE_ORDER
from pipeline.rundir import RunDir
from pipeline.runner import STAGE_MARKER
from tests.e2e.conftest import OVERRIDES, STEPS

REPO = Path(__file__).resolve().parents[2]
#: Stages a point may fall in. audit is left out: it is rebuilt on every run (never resumed), and
#: it is the last stage, so a point drawn in it could come after the run already ended.
TARGET_STAGES = STAGE_ORDER[:-1]


@dataclass
class Demo:
    """One ``python -m demo`` process in its own session, its output collected by a thread."""

    run: Path
    proc: subprocess.Popen = field(init=False)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu", RAY_USAGE_STATS_ENABLED="0",
                   NO_ALBUMENTATIONS_UPDATE="1")
        env.pop("RAY_ADDRESS", None)
        args = [sys.executable, "-m", "demo", "--run", str(self.run), "--steps", str(STEPS)]
        for o in OVERRIDES:
            args += ["--set", o]
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # text mode: tqdm's \r updates arrive as lines too
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return rc


def _done_tasks(run: RunDir, stage: str) -> int:
    return len(run.done_tasks(stage) - {STAGE_MARKER})


def _max_step(run: RunDir) -> int:
    path = run.local_path("train", "metrics.jsonl")
    if not path.is_file():
        return 0
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip().endswith("}")]
    return max(steps, default=0)


def _stage_in_progress(run: RunDir) -> str | None:
    """The first stage of the run without its completion marker (the one a signal interrupts)."""
    return next((s for s in STAGE_ORDER if not run.is_done(s, STAGE_MARKER)), None)


def _completed(run: RunDir) -> list[str]:
    """Finished stages a rerun skips whole (audit and eval always run: eval skips its tasks whose inputs
    were evaluated, by their digests)."""
    return [s for s in STAGE_ORDER if stage_class(s).resumable and run.is_done(s, STAGE_MARKER)]


def draw_point(rng: random.Random, reference: RunDir, after: str | None) -> tuple[str, int]:
    """A random (stage, progress) at or after stage ``after``: finished tasks of a Ray/driver stage,
    or finished steps of train."""
    first = TARGET_STAGES.index(after) if after in TARGET_STAGES else 0
    stage = rng.choice(TARGET_STAGES[first:])
    if stage == "train":
        return stage, rng.randrange(STEPS)
    return stage, rng.randrange(max(1, _done_tasks(reference, stage)))


def interrupt_at(demo: Demo, point: tuple[str, int], sig: signal.Signals, group: bool) -> tuple[str, list[str]]:
    """Wait until the run reaches ``point``, then send ``sig`` to the driver (or its process group).

    Returns the stage that was in progress when the signal was sent and the command lines of every
    process the driver had started, which must all be gone afterwards.
    """
    stage, progress = point
    run = RunDir(str(demo.run))
    while demo.proc.poll() is None:
        started = any(f"[{stage}]" in line for line in demo.lines) or run.is_done(stage, STAGE_MARKER)
        reached = _max_step(run) >= progress if stage == "train" else _done_tasks(run, stage) >= progress
        if started and (reached or run.is_done(stage, STAGE_MARKER)):
            break
        time.sleep(0.05)
    assert demo.proc.poll() is None, f"the demo ended before the point {point}:\n{demo.output[-3000:]}"
    landed = _stage_in_progress(run) or "end"
    tree = psutil.Process(demo.proc.pid).children(recursive=True)
    if group:
        os.killpg(demo.proc.pid, sig)
    else:
        demo.proc.send_signal(sig)
    return landed, tree


def assert_all_gone(procs: list[psutil.Process], deadline_s: float = 90) -> None:
    """Every process the interrupted driver had started exits (Ray's head, workers, the trainer)."""
    end = time.time() + deadline_s
    alive = procs
    while alive and time.time() < end:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    left = []
    for p in alive:
        try:
            left.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            p.kill()  # do not leave them to the next test
        except psutil.Error:
            continue
    assert not left, "processes left behind after the interruption:\n" + "\n".join(left)


def _tar_members(run: RunDir, pattern: str) -> dict[str, list[tuple[str, str]]]:
    """Per tar: (member name, sha256 of its bytes); tar headers (mtimes) are not compared."""
    out = {}
    for rel in run.glob(pattern):
        with tarfile.open(fileobj=io.BytesIO(run.read_bytes(rel))) as tar:
            out[rel] = [(m.name, sha256(tar.extractfile(m).read()).hexdigest()) for m in tar if m.isreg()]
    return out


def _rows(run: RunDir, pattern: str, sort: list[str]) -> list[dict[str, Any]]:
    tables = [run.read_parquet(p).to_pandas() for p in run.glob(pattern)]
    if not tables:
        return []
    import pandas as pd

    df = pd.concat(tables, ignore_index=True).sort_values(sort, kind="stable")
    for col in df.columns:  # binary columns (the shards' orig_thumbs) compared by digest
        if df[col].map(lambda v: isinstance(v, bytes)).any():
            df[col] = df[col].map(lambda v: sha256(v).hexdigest() if isinstance(v, bytes) else v)
    return json.loads(df.to_json(orient="records"))


def _stats(run: RunDir) -> dict[str, Any]:
    """Counts and drops of every stage (timings and skipped-task counts naturally differ)."""
    out = {}
    for rel in run.glob("stats/*.json"):
        s = run.read_json(rel)
        out[rel] = {"counts": s.get("counts"), "dropped": s.get("dropped"), "failed": s.get("failed_tasks")}
    return out


def _losses(run: RunDir) -> dict[int, float]:
    rows = [json.loads(x) for x in run.local_path("train", "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), "a step redone after a resume must be logged once"
    return {r["step"]: r["loss"] for r in rows}


def artifacts(run: RunDir) -> dict[str, Any]:
    """Everything the comparison covers, in a comparable form."""
    return {
        "curated": _rows(run, "curated/part-*.parquet", ["uid"]),
        "downloads": _rows(run, "shards/*.parquet", ["uid"]),
        "shard_tars": _tar_members(run, "shards/*.tar"),
        "overlaps": _rows(run, "dedup/overlaps.parquet", ["eval_set", "eval_id", "uid"]),
        "decisions": _rows(run, "dedup/decisions.parquet", ["uid"]),
        "clean_sizes": run.read_json("clean/sizes.json"),
        "clean_tars": _tar_members(run, "clean/*.tar"),
        "reconcile": reconcile(run),
        "stats": _stats(run),
        "data_stats": run.read_json("train/data_stats.json"),
        "eval": _rows(run, "eval/results.parquet", ["dataset", "task", "metric"]),
    }


@pytest.mark.slow
def test_sigint_then_sigkill_then_rerun_gives_the_same_artifacts(e2e_run, tmp_path):
    reference = e2e_run.run
    seed = int(os.environ.get("WEBCLIP_INTERRUPT_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    print(f"interruption seed {seed} (replay with WEBCLIP_INTERRUPT_SEED={seed})")
    run_path = tmp_path / "run"
    # the same mini-web (same pages, URLs and port, hence the same uids): python -m demo resolves the link
    Path(f"{run_path}-miniweb").symlink_to(e2e_run.web, target_is_directory=True)
    run = RunDir(str(run_path))

    # 1. SIGINT at a random point, to the driver alone or to its process group as Ctrl-C does
    point = draw_point(rng, reference, None)
    to_group = rng.random() < 0.5
    demo = Demo(run_path)
    landed, tree = interrupt_at(demo, point, signal.SIGINT, group=to_group)
    print(f"SIGINT to the {'process group' if to_group else 'driver'} at {point}, in stage {landed}")
    rc = demo.wait(timeout=180)
    assert rc == 130, demo.output[-4000:]
    assert "demo: interrupted (SIGINT)" in demo.output and "rerun the same command to resume" in demo.output
    assert "Traceback" not in demo.output.split("demo: interrupted")[-1], demo.output[-4000:]
    assert_all_gone(tree)

    # 2. rerun, SIGKILL the whole process group at a later random point
    done = _completed(run)
    point = draw_point(rng, reference, _stage_in_progress(run))
    demo = Demo(run_path)
    landed, tree = interrupt_at(demo, point, signal.SIGKILL, group=True)
    print(f"SIGKILL to the process group at {point}, in stage {landed}")
    assert demo.wait(timeout=60) == -signal.SIGKILL
    _assert_skipped(demo.output, done)
    assert_all_gone(tree)  # Ray workers live in process groups of their own: they must follow

    # 3. rerun to the end
    done = _completed(run)
    demo = Demo(run_path)
    assert demo.wait(timeout=900) == 0, demo.output[-4000:]
    _assert_skipped(demo.output, done)
    if landed == "train" and point[1] >= 10:
        assert "resumed from" in demo.output  # the step-10 checkpoint, not a restart from step 0

    leftovers = [str(p.relative_to(run_path)) for p in run_path.rglob(".tmp-*")]
    assert not leftovers, f"temporary files left in the run: {leftovers}"
    assert not run.glob("_failed/*/*")

    got, want = artifacts(run), artifacts(reference)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the uninterrupted run"
    curated = Counter(r["uid"] for r in got["curated"])
    assert Counter(r["uid"] for r in got["downloads"]) == curated and set(curated.values()) == {1}

    # the model: training resumes exactly, so the weights are the uninterrupted run's and so is every
    # step's loss (DeepSpeed on CPU in fp32 is deterministic for a fixed thread count)
    model = torch.load(run.local_path("train", "export", "model.pt"))
    ref_model = torch.load(reference.local_path("train", "export", "model.pt"))
    assert model.keys() == ref_model.keys()
    for key in ref_model:
        assert torch.equal(model[key], ref_model[key]), key
    assert _losses(run) == _losses(reference)


def _assert_skipped(output: str, done: list[str]) -> None:
    """A rerun says which stages it skips: one line up front, one per skipped stage."""
    if not done:
        return
    assert f"skipping completed stage(s) {', '.join(done)} " in output, output[-3000:]
    for stage in done:
        assert f"[{stage}] already complete, skipped" in output, stage
