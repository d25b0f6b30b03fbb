"""Training metrics: ``metrics.jsonl`` rows and DeepSpeed monitor events, and their rewind on resume.

A resumed run redoes the steps after its checkpoint. Without a rewind, ``metrics.jsonl`` and the CSV
monitor would hold those steps twice (the CSV with a second header line in the middle, as DeepSpeed's
``csvMonitor`` writes a header whenever a new process first writes a file), and TensorBoard would draw
both attempts. :func:`rewind_logs` makes the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def log0(rank: int, msg: str) -> None:
    """Print ``[train] msg`` to stderr on rank 0."""
    if rank == 0:
        print(f"[train] {msg}", file=sys.stderr, flush=True)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: stop rather than train on."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM during training: what the user is told, and the step it stopped at."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        where = f"the last checkpoint ({checkpoint})" if checkpoint else "the start (no checkpoint yet)"
        super().__init__(f"interrupted at step {step}; rerun the same command to resume from {where}")


class MetricsLog:
    """Per-step loss and logit scale, kept on the device and read once per ``log_every`` steps.

    ``float(loss)`` on a GPU waits for the step's kernels to finish, so the host could not queue the
    next step or fetch its batch meanwhile. Here each step only appends device tensors; :meth:`flush`
    (at every ``log_every``-th step, before a checkpoint, at a stop and at the end, on every rank at
    the same steps) all-reduces the interval's losses in one collective, copies them to the host in
    one sync, and writes one ``metrics.jsonl`` row per step (rank 0). ``samples_per_s`` of a row is the
    average over its interval.
    """

    def __init__(
        self, rank: int, world: int, samples_per_step: int, path: Path, monitor: Any, total_steps: int
    ):
        self.rank, self.world = rank, world
        self.samples_per_step = samples_per_step
        self.monitor = monitor
        self.total_steps = total_steps
        self.file = path.open("a") if rank == 0 else None
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self.t_last = time.perf_counter()
        self.last_loss = float("nan")

    def add(self, step: int, loss: torch.Tensor, scale: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss.detach().float().reshape(()), scale.detach().float().reshape(()), lr))

    def flush(self, counts: dict[str, int] | None = None, console: bool = False) -> None:
        """Write the pending rows; ``console``: also the monitor events and the console line."""
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _, _ in self.pending])
        if self.world > 1:
            dist.all_reduce(losses)
            losses /= self.world
        scales = torch.stack([scale for _, _, scale, _ in self.pending])
        loss_values, scale_values = torch.stack([losses, scales]).tolist()  # the one host sync
        steps = [step for step, *_ in self.pending]
        bad = [(step, v) for step, v in zip(steps, loss_values, strict=True) if not math.isfinite(v)]
        now = time.perf_counter()
        sps = self.samples_per_step * len(self.pending) / max(now - self.t_last, 1e-9)
        self.t_last = now
        self.last_loss = loss_values[-1]
        if self.rank == 0:
            assert self.file is not None
            for (step, _, _, lr), loss, scale in zip(self.pending, loss_values, scale_values, strict=True):
                row = {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "logit_scale": scale,
                    "samples_per_s": sps,
                    "samples": step * self.samples_per_step,
                }
                self.file.write(json.dumps(row) + "\n")
            self.file.flush()
            if console:
                step, _, _, lr = self.pending[-1]
                scale = scale_values[-1]
                self.monitor.write_events(
                    [
                        ("train/loss", self.last_loss, step),
                        ("train/lr", lr, step),
                        ("train/logit_scale", scale, step),
                        ("train/samples_per_s", sps, step),
                    ]
                )
                log0(
                    self.rank,
                    f"step {step}/{self.total_steps} loss {self.last_loss:.4f} lr {lr:.2e} scale {scale:.2f} "
                    f"{sps:.1f} samples/s data {counts or {}}",
                )
        self.pending = []
        if bad:
            # every rank holds the same all-reduced losses, so every rank stops here together
            raise TrainingDiverged(
                f"train: the loss is {bad[0][1]} at step {bad[0][0]}: training diverged. Lower train.lr or raise "
                "train.warmup, then run the same command again to resume from the last checkpoint "
                "(train.checkpoint_every); bf16 runs do not skip steps on non-finite gradients "
                "(infra/deepspeed/*.json: bf16.check_grad_overflow=false, see README)"
            )

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.rewind")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a kill during the rewind leaves the old file or the new one


def _rewind_jsonl(path: Path, step: int) -> int:
    """Keep the complete rows of ``path`` with ``step <= step``; the rows dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [x for x in lines if x.endswith("\n") and json.loads(x)["step"] <= step]
    if len(kept) != len(lines):
        _replace_text(path, "".join(kept))
    return len(lines) - len(kept)


def _rewind_csv(path: Path, step: int) -> int:
    """Keep one header and the rows with ``step <= step`` of a DeepSpeed CSV monitor file; rows dropped."""
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0] if rows else ["step", path.stem]
    data = [r for r in rows[1:] if len(r) == 2 and r[0] != "step"]
    kept = [r for r in data if int(r[0]) <= step]
    out = io.StringIO()
    csv.writer(out).writerows([header, *kept])
    if out.getvalue() != text:
        _replace_text(path, out.getvalue())
    return len(data) - len(kept)


def rewind_logs(metrics_path: Path, monitor: Any, step: int) -> int:
    """Forget what was logged after ``step``, where this run (re)starts; call on rank 0 before training.

    ``metrics.jsonl`` and every CSV monitor file keep their rows up to ``step`` (one header); the CSV
    monitor is told its files exist, so it writes no second header; TensorBoard gets the marker a
    ``SummaryWriter(purge_step=step + 1)`` writes, on which readers discard the earlier attempt's events
    from ``step + 1`` on. Returns the rows dropped.
    """
    dropped = _rewind_jsonl(metrics_path, step)
    csv_monitor = getattr(monitor, "csv_monitor", None)
    if csv_monitor is not None and csv_monitor.log_dir and Path(csv_monitor.log_dir).is_dir():
        for path in sorted(Path(csv_monitor.log_dir).glob("*.csv")):
            dropped += _rewind_csv(path, step)
            if path.stem not in csv_monitor.filenames:
                csv_monitor.filenames.append(path.stem)
    tb_monitor = getattr(monitor, "tb_monitor", None)
    writer = getattr(tb_monitor, "summary_writer", None)
    if writer is not None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
        writer.flush()
    return dropped
