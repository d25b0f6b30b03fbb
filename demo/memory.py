"""Peak memory of a process tree: the demo driver plus everything it starts (Ray's head processes and
workers, the DeepSpeed trainer and its data-loader workers), sampled in a background thread."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


def tree_rss(root: psutil.Process) -> int:
    """Sum of the resident set sizes of ``root`` and all its descendants, in bytes.

    Pages shared between processes (Ray's object store in /dev/shm, the torch libraries) count once
    per process that maps them, so this is an upper bound of the memory the tree really uses.
    """
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            continue
    return total


class PeakRSS:
    """``with PeakRSS() as mem: …`` then ``mem.peak`` (bytes): the largest :func:`tree_rss` sampled."""

    def __init__(self, interval: float = 1.0, pid: int | None = None):
        self.interval = interval
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)

    def sample(self) -> int:
        rss = tree_rss(self.root)
        self.peak = max(self.peak, rss)
        return rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
