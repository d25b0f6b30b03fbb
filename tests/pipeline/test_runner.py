"""The shard runner: markers, retries, failures, stats, memory:// vs local, on the embedded Ray."""

from __future__ import annotations

import pytest

from pipeline.errors import StageFailed
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from tests.pipeline.fixture_stage import HashLinesStage, make_inputs


def _outputs(run: RunDir) -> dict[str, bytes]:
    return {p: run.read_bytes(p) for p in run.glob("lines/*.parquet")}


def test_memory_and_local_runs_give_identical_outputs(tmp_path, make_config, ray_local):
    inputs = make_inputs(tmp_path / "in")
    results = {}
    for url in (f"memory://runner-test-{tmp_path.name}", str(tmp_path / "local")):
        run = RunDir(url)
        result = run_stage(HashLinesStage(make_config(run=url), run, str(inputs)), progress=False)
        assert result.tasks_total == 8 and not result.failures
        results[url] = (_outputs(run), run.read_json("stats/hash_lines.json"))
    (mem_out, mem_stats), (local_out, local_stats) = results.values()
    assert len(mem_out) == 8
    assert mem_out == local_out
    for key in ("counts", "dropped"):
        assert mem_stats[key] == local_stats[key]
    assert local_stats["counts"] == {"in": 400, "out": 360, "rows_written": 360}
    assert local_stats["dropped"] == {"blank_line": 40}


def test_rerun_skips_finished_tasks_and_finished_stage(tmp_path, make_config, ray_local):
    inputs = make_inputs(tmp_path / "in", n_files=4)
    run = RunDir(str(tmp_path / "run"))
    config = make_config(run=run.url)
    first = run_stage(HashLinesStage(config, run, str(inputs)), progress=False)
    assert first.tasks_skipped == 0
    # a finished stage is skipped whole
    assert run_stage(HashLinesStage(config, run, str(inputs)), progress=False).skipped_stage
    # with the stage marker gone, finished tasks are still skipped by their own markers
    run.remove("_done/hash_lines/_stage")
    run.remove("_done/hash_lines/part-002")
    again = run_stage(HashLinesStage(config, run, str(inputs)), progress=False)
    assert (again.tasks_total, again.tasks_skipped) == (4, 3)
    assert again.stats.counts["out"] == first.stats.counts["out"]


def test_a_failing_task_is_retried_then_succeeds(tmp_path, make_config, ray_local):
    inputs = make_inputs(tmp_path / "in", n_files=3)
    fail_dir = tmp_path / "attempts"
    fail_dir.mkdir()
    run = RunDir(str(tmp_path / "run"))
    stage = HashLinesStage(make_config("ray.task_retries=1", run=run.url), run, str(inputs), fail_dir=str(fail_dir))
    result = run_stage(stage, progress=False)
    assert not result.failures
    assert sorted(p.name for p in fail_dir.iterdir()) == ["part-000", "part-001", "part-002"]
    assert len(run.glob("lines/*.parquet")) == 3


def test_a_task_failing_after_retries_is_recorded_and_only_it_reruns(tmp_path, make_config, ray_local):
    inputs = make_inputs(tmp_path / "in", n_files=4)
    run = RunDir(str(tmp_path / "run"))
    config = make_config("ray.task_retries=1", run=run.url)
    with pytest.raises(StageFailed) as info:
        run_stage(HashLinesStage(config, run, str(inputs), always_fail=("part-001",)), progress=False)
    assert list(info.value.failures) == ["part-001"]
    assert "configured to fail" in info.value.failures["part-001"]
    assert run.exists("_failed/hash_lines/part-001.json")
    assert not run.is_done("hash_lines", "_stage")
    stats = run.read_json("stats/hash_lines.json")
    assert list(stats["failed_tasks"]) == ["part-001"]
    assert len(run.glob("lines/*.parquet")) == 3
    # fixed: the rerun runs only the failed task and clears its failure record
    result = run_stage(HashLinesStage(config, run, str(inputs)), progress=False)
    assert (result.tasks_total, result.tasks_skipped) == (4, 3)
    assert not run.exists("_failed/hash_lines/part-001.json")
    assert len(run.glob("lines/*.parquet")) == 4


def test_a_rerun_removes_the_temporaries_a_killed_run_left(tmp_path, make_config):
    """A writer killed between its temporary write and the move leaves ``.tmp-…`` behind; the next run
    of that stage removes its own (outputs, markers, stats), never another stage's."""
    inputs = make_inputs(tmp_path / "in", n_files=2)
    url = f"memory://runner-tmp-{tmp_path.name}"
    run = RunDir(url)
    left = ["lines/.tmp-0a-part-000.parquet", "lines/sub/.tmp-0b-x", "_done/hash_lines/.tmp-0c-part-001",
            "stats/.tmp-0d-hash_lines.json"]
    other = ["pool/.tmp-0e-part-00000.parquet", "stats/.tmp-0f-extract.json"]
    for rel in left + other:
        run.fs.pipe(run.path(rel), b"half a file")
    run_stage(HashLinesStage(make_config(run=url), run, str(inputs)), progress=False)
    assert [rel for rel in left + other if run.exists(rel)] == other
    assert run.glob("lines/*.parquet") == ["lines/part-000.parquet", "lines/part-001.parquet"]


def test_a_task_whose_ray_node_died_does_not_commit(tmp_path, make_config):
    """A Ray worker whose raylet died (its parent changed: the driver was killed with the embedded Ray)
    finishes its task but writes no completion marker, so the next run redoes it."""
    import os

    from pipeline.runner import NodeLost, execute_task

    inputs = make_inputs(tmp_path / "in", n_files=1)
    run = RunDir(str(tmp_path / "run"))
    stage = HashLinesStage(make_config(run=run.url), run, str(inputs))
    task = stage.tasks()[0]
    with pytest.raises(NodeLost):
        execute_task(stage, task, parent=os.getppid() + 1)  # not this process's parent any more
    assert not run.is_done("hash_lines", task.id)
    execute_task(stage, task, parent=os.getppid())
    assert run.is_done("hash_lines", task.id)


def test_every_pipeline_stage_declares_where_it_writes():
    """The runner sweeps a killed run's temporaries only from a stage's declared ``outputs``."""
    import importlib

    from pipeline.cli import STAGES

    for name, target in STAGES.items():
        module, cls = target.split(":")
        stage = getattr(importlib.import_module(module), cls)
        assert stage.name == name and stage.outputs, f"{target} declares no outputs"
