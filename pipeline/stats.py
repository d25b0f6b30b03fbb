"""Per-task and per-stage counters: counts in/out, drops by reason, seconds, CPU and peak memory.

Counts, drops, seconds and CPU seconds merge by summing; peak RSS merges by taking the maximum (a
stage's figure is its largest worker's).
"""

from __future__ import annotations

import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counters one task (or a whole stage) reports.

    ``counts`` holds named totals (``in``, ``out``, ``bytes``…); ``dropped`` holds rows dropped
    or failed, by reason. Both merge by summing, so stage stats are the sum of task stats.
    ``cpu_seconds``: CPU time the task's process spent on it (every thread), summed over tasks;
    ``peak_rss_mb``: the peak resident memory of the process that ran it (its whole life so far, so
    a reused worker reports its largest task), merged by maximum. Both are 0 in markers written
    before they were recorded.
    """

    counts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def inc(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the count ``key``."""
        self.counts[key] += int(n)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows dropped for ``reason``."""
        if n:
            self.dropped[reason] += int(n)

    def record_usage(self, cpu_start: float) -> None:
        """Set this task's CPU seconds (since ``cpu_start``, a :func:`time.process_time`) and peak RSS.

        ``process_time`` counts every thread of the process (Arrow's and NumPy's pools included); a
        Ray worker runs one task at a time, so the delta is this task's. ``ru_maxrss`` is the
        process's peak so far: a worker's largest task, which is what bounds a node's memory.
        """
        self.cpu_seconds = time.process_time() - cpu_start
        self.peak_rss_mb = peak_rss_mb()

    def merge(self, other: Stats) -> Stats:
        """Add ``other`` into this one and return self."""
        self.counts.update(other.counts)
        self.dropped.update(other.dropped)
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds
        self.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)
        return self

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        """The inverse of :meth:`to_dict`; fields missing from older markers read as 0."""
        return cls(
            counts=Counter(data.get("counts", {})),
            dropped=Counter(data.get("dropped", {})),
            seconds=float(data.get("seconds", 0.0)),
            cpu_seconds=float(data.get("cpu_seconds", 0.0)),
            peak_rss_mb=float(data.get("peak_rss_mb", 0.0)),
        )

    def summary(self) -> str:
        """One line for the console: counts, then drops by reason."""
        parts = [f"{k}={v:,}" for k, v in sorted(self.counts.items())]
        if self.dropped:
            reasons = ", ".join(f"{k}={v:,}" for k, v in self.dropped.most_common())
            parts.append(f"dropped[{reasons}]")
        return " ".join(parts) if parts else "no counts"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (``ru_maxrss`` is kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
