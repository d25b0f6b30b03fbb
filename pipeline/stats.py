"""Per-task and per-stage counters: counts in/out, drops by reason, seconds. Merged by summing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counters one task (or a whole stage) reports.

    ``counts`` holds named totals (``in``, ``out``, ``bytes``…); ``dropped`` holds rows dropped
    or failed, by reason. Both merge by summing, so stage stats are the sum of task stats.
    """

    counts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def inc(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the count ``key``."""
        self.counts[key] += int(n)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows dropped for ``reason``."""
        if n:
            self.dropped[reason] += int(n)

    def merge(self, other: Stats) -> Stats:
        """Add ``other`` into this one and return self."""
        self.counts.update(other.counts)
        self.dropped.update(other.dropped)
        self.seconds += other.seconds
        return self

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        return cls(
            counts=Counter(data.get("counts", {})),
            dropped=Counter(data.get("dropped", {})),
            seconds=float(data.get("seconds", 0.0)),
        )

    def summary(self) -> str:
        """One line for the console: counts, then drops by reason."""
        parts = [f"{k}={v:,}" for k, v in sorted(self.counts.items())]
        if self.dropped:
            reasons = ", ".join(f"{k}={v:,}" for k, v in self.dropped.most_common())
            parts.append(f"dropped[{reasons}]")
        return " ".join(parts) if parts else "no counts"
