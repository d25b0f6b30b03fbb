"""Progress of a stage's tasks: a tqdm bar on a terminal, periodic plain lines everywhere else.

A tqdm bar redraws itself with carriage returns; in a log without a terminal (``ray job submit``,
``ray submit``, CI, ``2> file``) every redraw becomes a line, a wall of text. There a
:class:`PlainProgress` prints one line every ``WEBCLIP_PROGRESS_SECONDS`` (default 30) with the count,
the rate and the time left, the way Ray's own job logs read, and a last line when it closes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

#: Seconds between two plain progress lines (environment variable, float).
INTERVAL_ENV = "WEBCLIP_PROGRESS_SECONDS"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class PlainProgress:
    """A tqdm-like counter (``update``, ``set_postfix``, ``close``) that prints periodic plain lines."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it",
                 file: IO[str] | None = None, interval: float | None = None):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.file = file or sys.stderr
        self.interval = float(os.environ.get(INTERVAL_ENV, "30")) if interval is None else interval
        self.postfix: dict[str, Any] = {}
        self._initial = initial
        self._start = self._last = time.monotonic()
        self._closed = False
        self._printed: tuple[int, str] | None = None  # (count, postfix) of the last line printed

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix.update(kwargs)

    def line(self, now: float | None = None) -> str:
        """``[stage] tasks 7/10 (70%), 0.52 task/s, ETA 6s, failed=0``."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        done = self.n - self._initial  # this run's work: the rate ignores what an earlier run finished
        parts = [f"{self.desc} {self.n:,}/{self.total:,}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _print(self, now: float | None = None) -> None:
        self._printed = (self.n, repr(self.postfix))
        print(self.line(now), file=self.file, flush=True)

    def close(self) -> None:
        """Print the final state, unless the last line already showed it."""
        if not self._closed:
            self._closed = True
            if self._printed != (self.n, repr(self.postfix)):
                self._print()


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
                 file: IO[str] | None = None) -> Any:
    """A tqdm bar when ``file`` (stderr) is a terminal, else a :class:`PlainProgress`; ``disable``: neither."""
    file = file or sys.stderr
    if disable or file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=file,
                    mininterval=0.5, dynamic_ncols=True)
    return PlainProgress(total, initial, desc, unit, file)
