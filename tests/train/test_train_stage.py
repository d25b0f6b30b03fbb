"""The train stage's handling of the trainer's exit codes (the trainer replaced by a process that exits)."""

from __future__ import annotations

import sys

import pytest

from pipeline.errors import EXIT_FAILED_TASKS, StageFailed
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from pipeline.stage import Task
from pipeline.stats import Stats
from train.stage import TrainStage


def _exits(rc: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; print('trainer output'); sys.exit({rc})"]


@pytest.mark.parametrize(
    ("rc", "says"),
    [(3, "training diverged .* lower train.lr"), (2, "refused its configuration"), (9, "its output is above")],
)
def test_trainer_exit_code_becomes_a_message_that_says_what_to_do(tmp_path, make_config, monkeypatch, rc, says):
    stage = TrainStage(make_config("train.data=unused"), RunDir(str(tmp_path / "run")))
    monkeypatch.setattr(stage, "command", lambda: _exits(rc))
    with pytest.raises(RuntimeError, match=f"trainer exited with status {rc}: .*{says}"):
        stage.process(Task("train"), Stats())


def test_a_diverged_trainer_fails_the_stage_with_exit_code_3_and_no_stats(tmp_path, make_config, monkeypatch):
    cfg = make_config("train.data=unused", run=str(tmp_path / "run"))
    stage = TrainStage(cfg, RunDir(cfg.run))
    monkeypatch.setattr(stage, "command", lambda: _exits(3))
    with pytest.raises(StageFailed, match="training diverged") as failed:
        run_stage(stage, progress=False)
    assert failed.value.exit_code == EXIT_FAILED_TASKS
    assert not RunDir(cfg.run).is_done("train", "train")
