"""The one interface every stage implements (after datatrove's pipeline step).

A stage splits its work into :class:`Task` s (usually one per input shard); :meth:`Stage.process`
does one task inside a worker, writing its outputs through the :class:`~pipeline.rundir.RunDir`
(atomically) and counting into a :class:`~pipeline.stats.Stats`; :meth:`Stage.finalize` runs once
on the driver after every task succeeded (global reductions such as summed counts). The runner
owns retries, completion markers, progress and the stats file, so a stage is only its logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.config import WebclipConfig
from pipeline.rundir import RunDir
from pipeline.stats import Stats


@dataclass(frozen=True)
class Task:
    """One unit of a stage's work. ``id`` is unique in the stage and safe as a file name."""

    id: str
    payload: Any = None


class Stage:
    """Base class of a stage. Subclasses set :attr:`name` and implement :meth:`tasks` and :meth:`process`."""

    name: ClassVar[str] = ""
    #: Whether a whole-stage completion marker makes `webclip run` skip the stage on rerun.
    resumable: ClassVar[bool] = True
    #: Run tasks in the driver process instead of Ray workers: for a stage whose one task launches
    #: its own distributed program (train runs `deepspeed`) or needs the driver's terminal.
    in_driver: ClassVar[bool] = False
    #: Run-relative folders and files the stage writes; the runner removes temporaries a killed run
    #: left there before the stage runs again.
    outputs: ClassVar[tuple[str, ...]] = ()
    #: Task ids that name a version of the work (a digest of the task's input): after the stage, the
    #: runner removes completion markers of ids no longer among its tasks, so status counts current ones.
    versioned_tasks: ClassVar[bool] = False
    #: Whether progress bars show; the runner sets it per run, and a stage that runs sub-stages
    #: (dedup's per-shard passes) hands it on.
    progress: bool = True

    def __init__(self, config: WebclipConfig, run: RunDir):
        self.config = config
        self.run = run

    def validate(self) -> None:
        """Static checks that need no earlier stage's output (a file the config names, a tool on PATH).

        Called for every stage of a ``webclip run`` before the first stage starts; raise
        :class:`~pipeline.errors.ConfigError` naming the key, the value and the fix.
        """

    def check(self) -> None:
        """Raise :class:`~pipeline.errors.ConfigError` if the stage cannot start (missing input…).

        Called on the driver before any task runs, so a bad setup stops the job before any work.
        """

    def tasks(self) -> list[Task]:
        """The stage's units of work, in a deterministic order."""
        raise NotImplementedError

    def process(self, task: Task, stats: Stats) -> None:
        """Do one task in a worker: write its outputs via ``self.run`` and count into ``stats``."""
        raise NotImplementedError

    def finalize(self, stats: Stats) -> None:
        """Driver-side reduction after all tasks succeeded; ``stats`` is the sum over tasks."""

    def summary(self, stats: Stats) -> str:
        """A line for the console after the stage; default: the stats counts."""
        return stats.summary()
