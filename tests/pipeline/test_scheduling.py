"""The runner at scale: a bounded window of tasks in flight, and completion markers read in bulk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import MIN_WINDOW, default_window, run_stage
from pipeline.stage import Stage, Task
from pipeline.stats import Stats
from tests.pipeline.fixture_stage import HashLinesStage, make_inputs

#: (task number, tasks finished when it was submitted), appended in the driver as Ray serialises a task.
SUBMITTED: list[tuple[int, int]] = []


class _SubmissionProbe:
    """A task payload that, when Ray serialises it for submission (in the driver), records how many of the
    stage's tasks had finished by then: their completion markers on disk, each written before its task
    returns. In the worker it arrives as the plain task number."""

    def __init__(self, number: int, done_dir: Path):
        self.number, self.done_dir = number, done_dir

    def __reduce__(self) -> tuple[Any, ...]:
        finished = len([n for n in os.listdir(self.done_dir) if not n.startswith(".tmp-")]) \
            if self.done_dir.is_dir() else 0
        SUBMITTED.append((self.number, finished))
        return (int, (self.number,))


class TinyTasks(Stage):
    """``n`` tasks that each count one: the runner's own cost is all there is."""

    name = "tiny"
    outputs = ("tiny",)

    def __init__(self, config, run, n: int):
        super().__init__(config, run)
        self.n = n

    def tasks(self) -> list[Task]:
        done_dir = Path(self.run.path("_done", self.name))
        return [Task(f"t{i:04d}", _SubmissionProbe(i, done_dir)) for i in range(self.n)]

    def process(self, task: Task, stats: Stats) -> None:
        stats.inc("ran")
        stats.inc("sum", task.payload)


def test_a_thousand_tasks_never_exceed_the_window_and_all_finish(tmp_path, make_config, ray_local):
    n, window = 1000, 8
    run = RunDir(str(tmp_path / "run"))
    SUBMITTED.clear()
    result = run_stage(TinyTasks(make_config(f"ray.max_in_flight={window}", run=run.url), run, n), progress=False)
    assert not result.failures and result.tasks_total == n
    assert result.stats.counts["ran"] == n and result.stats.counts["sum"] == n * (n - 1) // 2
    assert len(run.done_tasks("tiny") - {"_stage"}) == n
    numbers = [i for i, _ in SUBMITTED]
    assert numbers == list(range(n))  # each submitted once, in order
    # in flight when task i went out: the i + 1 submitted so far, less those finished
    in_flight = [i + 1 - finished for i, finished in SUBMITTED]
    assert max(in_flight) <= window
    assert max(in_flight) > 1  # the window was used, not one task at a time


def test_default_window_scales_with_the_cluster_and_has_a_floor():
    assert default_window(2, 1.0) == MIN_WINDOW  # a laptop still queues enough for an autoscaler to see
    assert default_window(640, 1.0) == 4 * 640
    assert default_window(640, 4.0) == 4 * 160  # per task slot, not per CPU
    assert default_window(0, 1.0) == MIN_WINDOW  # a head with no CPUs yet


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_in_flight_below_one_is_a_config_error_naming_the_key(make_config, value):
    with pytest.raises(ConfigError, match=r"ray\.max_in_flight.*at least 1 task must be in flight.*null"):
        make_config(f"ray.max_in_flight={value}")
    assert make_config("ray.max_in_flight=null").ray.max_in_flight is None


class _CountingFS:
    """An fsspec filesystem seen through a proxy that records each call (method, path or list of paths)."""

    def __init__(self, fs):
        self._fs = fs
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args[0] if args else None))
            return attr(*args, **kwargs)

        return call

    def marker_reads(self, stage: str) -> tuple[int, list[list[str]]]:
        """(calls that read or probe one task's marker, the path lists of bulk ``cat`` calls)."""
        single, bulk = 0, []
        for name, arg in self.calls:
            if isinstance(arg, list) and name == "cat":
                bulk.append(arg)
            elif (isinstance(arg, str) and f"/_done/{stage}/" in arg and ".tmp-" not in arg
                  and not arg.endswith("/_stage") and name in ("open", "cat", "cat_file", "exists", "info")):
                single += 1
        return single, bulk


def test_markers_of_this_run_are_not_reread_and_earlier_ones_are_read_in_bulk(tmp_path, make_config):
    n = 40
    inputs = make_inputs(tmp_path / "in", n_files=n, n_lines=10)
    url = f"memory://sched-markers-{tmp_path.name}"
    config = make_config(run=url)
    run = RunDir(url)
    fs = run.fs = _CountingFS(run.fs)  # tasks run in this process on memory://, through this RunDir
    first = run_stage(HashLinesStage(config, run, str(inputs)), progress=False)
    assert first.stats.counts["in"] == 10 * n
    assert fs.marker_reads("hash_lines") == (0, [])  # the stats came back with the tasks

    run.remove("_done/hash_lines/_stage")
    for i in range(10, n):
        run.remove(f"_done/hash_lines/part-{i:03d}")
    fs.calls.clear()
    again = run_stage(HashLinesStage(config, run, str(inputs)), progress=False)
    assert (again.tasks_total, again.tasks_skipped) == (n, 10)
    assert again.stats.counts == first.stats.counts and again.stats.dropped == first.stats.dropped
    single, bulk = fs.marker_reads("hash_lines")
    assert single == 0
    assert [sorted(p.rsplit("/", 1)[-1] for p in paths) for paths in bulk] == [
        [f"part-{i:03d}" for i in range(10)]
    ]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_read_markers_in_chunks_leaves_out_missing_and_names_a_broken_one(tmp_path, kind):
    run = RunDir(str(tmp_path / "r") if kind == "local" else f"memory://sched-read-{tmp_path.name}")
    for i in range(7):
        run.mark_done("s", f"t{i}", {"task": f"t{i}", "i": i})
    got = run.read_markers("s", [f"t{i}" for i in range(9)], chunk=3)
    assert got == {f"t{i}": {"task": f"t{i}", "i": i} for i in range(7)}
    assert run.read_markers("s", ["t1"]) == {"t1": {"task": "t1", "i": 1}}
    assert run.read_markers("other", ["t1"]) == {}
    run.write_text("_done/s/t3", "{half")
    with pytest.raises(ValueError, match=r"_done/s/t3 is not JSON.*delete it"):
        run.read_markers("s", ["t3"])
