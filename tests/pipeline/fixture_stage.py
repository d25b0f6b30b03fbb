"""A small but real stage used to test the runner: hash every line of every input text file.

Each input file is one task; its output is ``lines/<task>.parquet`` (line number, text, sha256).
``delay`` slows each task so that tests can kill a driver or a worker while tasks run;
``fail_dir`` makes a task fail on its first attempt (a file there records the attempt) and
``always_fail`` names tasks that fail every time.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pyarrow as pa

from pipeline.stage import Stage, Task
from pipeline.stats import Stats


class HashLinesStage(Stage):
    name = "hash_lines"
    outputs = ("lines",)

    def __init__(self, config, run, input_dir: str, delay: float = 0.0, fail_dir: str | None = None,
                 always_fail: tuple[str, ...] = (), stall_from: int | None = None):
        super().__init__(config, run)
        # Tasks at this position (in sorted order) and after sleep for ten minutes: a kill test can
        # then interrupt the stage at a chosen point however loaded the machine is.
        self.stall_from = stall_from
        self.input_dir = input_dir
        self.delay = delay
        self.fail_dir = fail_dir
        self.always_fail = tuple(always_fail)

    def tasks(self) -> list[Task]:
        return [Task(p.stem, str(p)) for p in sorted(Path(self.input_dir).glob("*.txt"))]

    def process(self, task: Task, stats: Stats) -> None:
        if task.id in self.always_fail:
            raise RuntimeError(f"task {task.id} is configured to fail")
        if self.fail_dir is not None:
            attempt = Path(self.fail_dir) / task.id
            if not attempt.exists():
                attempt.write_text("failed once")
                raise RuntimeError(f"first attempt of {task.id} fails")
        lines = Path(task.payload).read_text().splitlines()
        time.sleep(self.delay)
        if self.stall_from is not None and self._position(task) >= self.stall_from:
            time.sleep(600)
        kept = [ln for ln in lines if ln.strip()]
        stats.inc("in", len(lines))
        stats.inc("out", len(kept))
        stats.drop("blank_line", len(lines) - len(kept))
        table = pa.table({
            "task": [task.id] * len(kept),
            "line": pa.array(range(len(kept)), pa.int32()),
            "text": kept,
            "sha256": [hashlib.sha256(t.encode()).hexdigest() for t in kept],
        })
        self.run.write_parquet(f"lines/{task.id}.parquet", table)

    def _position(self, task: Task) -> int:
        return [t.id for t in self.tasks()].index(task.id)

    def finalize(self, stats: Stats) -> None:
        total = sum(self.run.read_parquet(p).num_rows for p in self.run.glob("lines/*.parquet"))
        stats.inc("rows_written", total)


def make_inputs(folder: Path, n_files: int = 8, n_lines: int = 50) -> Path:
    """Write ``n_files`` text files with a blank line every tenth line."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = ["" if j % 10 == 9 else f"file {i} line {j} {'x' * (j % 7)}" for j in range(n_lines)]
        (folder / f"part-{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return folder
