"""Rewinding the training logs on resume: a redone step appears once in every log, with its new value."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from train.metrics import rewind_logs


class _CsvFiles:
    """What DeepSpeed's ``csvMonitor`` keeps: its folder, and the files it has written a header to."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.filenames = str(log_dir), []

    def write(self, name: str, value: float, step: int) -> None:  # csvMonitor.write_events' format
        path = Path(self.log_dir) / f"train_{name}.csv"
        with path.open("a") as f:
            if f"train_{name}" not in self.filenames:
                self.filenames.append(f"train_{name}")
                f.write(f"step,{name}\n")
            f.write(f"{step},{value}\n")


def _attempt(root: Path, steps: range, offset: float, resume_at: int | None) -> int:
    """One process's life: a fresh monitor (TensorBoard writer + CSV), optionally a rewind, then steps."""
    from torch.utils.tensorboard import SummaryWriter

    (root / "csv").mkdir(exist_ok=True)
    monitor = SimpleNamespace(
        csv_monitor=_CsvFiles(root / "csv"),
        tb_monitor=SimpleNamespace(summary_writer=SummaryWriter(root / "tb")),
    )
    dropped = rewind_logs(root / "metrics.jsonl", monitor, resume_at) if resume_at is not None else 0
    with (root / "metrics.jsonl").open("a") as f:
        for step in steps:
            f.write(json.dumps({"step": step, "loss": step + offset}) + "\n")
            monitor.csv_monitor.write("loss", step + offset, step)
            monitor.tb_monitor.summary_writer.add_scalar("train/loss", step + offset, step)
    f = (root / "metrics.jsonl").open("a")
    f.write('{"step": 6, "lo')  # a row cut by the kill
    f.close()
    monitor.tb_monitor.summary_writer.close()
    return dropped


def test_rewind_keeps_each_step_once_with_the_last_attempts_value(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _attempt(tmp_path, range(1, 6), 0.0, None)  # logged steps 1-5, checkpointed at 3, killed
    dropped = _attempt(tmp_path, range(4, 8), 0.5, 3)  # resumed at 3: redoes 4-5, goes on to 7
    assert dropped == 2 + 1 + 2  # metrics.jsonl rows 4, 5 and the cut row; CSV rows 4, 5

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()[:-1]]
    expect = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5), (5, 5.5), (6, 6.5), (7, 7.5)]
    assert [(r["step"], r["loss"]) for r in rows] == expect
    csv_lines = (tmp_path / "csv" / "train_loss.csv").read_text().splitlines()
    assert csv_lines[0] == "step,loss" and [tuple(map(float, x.split(","))) for x in csv_lines[1:]] == expect
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [(s, round(v, 6)) for s, v in got] == expect


def test_fresh_start_clears_an_attempt_that_never_checkpointed(tmp_path):
    _attempt(tmp_path, range(1, 3), 0.0, None)
    assert _attempt(tmp_path, range(1, 2), 0.25, 0) == 3 + 2
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[0]) == {"step": 1, "loss": 1.25} and len(rows) == 2  # + this attempt's cut row


def test_a_non_finite_loss_stops_training_with_its_step_after_logging_the_interval(tmp_path):
    from train.metrics import MetricsLog, TrainingDiverged

    events = []
    monitor = SimpleNamespace(write_events=events.extend)
    log = MetricsLog(0, 1, 8, tmp_path / "metrics.jsonl", monitor, total_steps=10)
    for step, loss in ((1, 2.0), (2, 1.5)):
        log.add(step, torch.tensor(loss), torch.tensor(14.3), 1e-3)
    log.flush(console=True)  # finite: no error
    for step, loss in ((3, 1.4), (4, float("nan")), (5, float("inf"))):
        log.add(step, torch.tensor(loss), torch.tensor(14.3), 1e-3)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4: training diverged\. Lower train\.lr"):
        log.flush(console=True)
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # the interval that diverged is still on record
