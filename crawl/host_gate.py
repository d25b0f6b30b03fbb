"""Per-host politeness inside one shard task: request slots, request spacing, and pauses that every
task of the crawl honours.

* **Slots** (:class:`HostGate`): at most ``cap`` requests under one key at a time, the task's threads
  served first come, first served. :mod:`crawl.fetch` takes two per request hop: one for the URL's
  registrable domain (cap and spacing from the download plan: ``floor(per_host_concurrency / K)``
  and ``K / per_host_rps`` for a domain in K tasks, see :mod:`crawl.partition`), then one for the
  address the socket connects to (``per_host_concurrency``: four spellings of one server share it).
  A slot is held until its socket is closed — no lease expires while a socket is open; the
  request's deadline (:mod:`crawl.deadline`) is what bounds how long that is.
* **Spacing**: at most one request start per ``interval`` seconds under a key (the per-host
  requests-per-second limit).
* **Pauses**: when a host answers 429/503, the host is paused, not just the request: every thread of
  the task waits out ``Retry-After`` before its next request there. The pause is also posted to the
  :class:`PauseBoard`, one small Ray actor for the whole cluster, which every task reads every
  ``pause_poll_seconds``. So 1,600 tasks do not each have to be told "slow down" by the host.

Why slots are not counted cluster-wide: that needs a round trip to a shared counter for every
request. Measured with one Ray actor call per request, the download ran at 0.70× bare img2dataset
against 1.07× without it, in the same run (see BENCHMARKS.md). The cluster-wide bound comes from the
plan instead: a domain's URLs are in at most K ≤ cap tasks, each allowed ``1/K`` of its cap and rate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

#: The board's name carries a version: a cluster still running an older board is not sent new calls.
BOARD_NAME = "webclip-pause-board-v1"
NAMESPACE = "webclip"
#: Idle keys are swept from a :class:`HostTable` after this many acquisitions (a crawl sees millions).
SWEEP_EVERY = 4096


@dataclass
class _Host:
    leases: dict[int, float] = field(default_factory=dict)  # lease id -> when it was taken
    not_before: float = 0.0  # no new request before then: a pause or the spacing


class HostTable:
    """Slots, spacing and pauses per key; the clock is passed in so tests can drive it."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self._next_lease = 0
        self._since_sweep = 0

    def try_acquire(
        self, key: str, cap: int, now: float, interval: float = 0.0
    ) -> tuple[int | None, float | None]:
        """``(lease, None)`` if one of ``cap`` slots is free now; else ``(None, seconds to wait)``,
        where None means "until a slot is released". At most one start per ``interval`` seconds."""
        state = self._hosts.get(key)
        if state is None:
            state = self._hosts[key] = _Host()
            self._sweep(now)
        if now < state.not_before:
            return None, state.not_before - now
        if len(state.leases) >= cap:
            return None, None
        self._next_lease += 1
        state.leases[self._next_lease] = now
        if interval > 0:
            state.not_before = now + interval
        return self._next_lease, None

    def release(self, key: str, lease: int, now: float) -> None:
        """Give a slot back (an unknown lease is ignored); forget idle keys."""
        state = self._hosts.get(key)
        if state is None:
            return
        state.leases.pop(lease, None)
        if not state.leases and state.not_before <= now:
            del self._hosts[key]

    def pause(self, key: str, seconds: float, now: float) -> None:
        """No new request under ``key`` for ``seconds`` (the longest pause asked wins)."""
        state = self._hosts.get(key)
        if state is None:
            state = self._hosts[key] = _Host()
        state.not_before = max(state.not_before, now + seconds)

    def _sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep < SWEEP_EVERY:
            return
        self._since_sweep = 0
        for key in [k for k, s in self._hosts.items() if not s.leases and s.not_before <= now]:
            del self._hosts[key]

    def __len__(self) -> int:
        return len(self._hosts)


class HostGate:
    """One shard task's slots and pauses; threads wait in a per-key queue, first come first served."""

    def __init__(self) -> None:
        self._table = HostTable()
        self._lock = threading.Lock()
        self._waiters: dict[str, deque[threading.Event]] = {}

    @contextlib.contextmanager
    def slot(self, key: str, cap: int, interval: float = 0.0) -> Iterator[None]:
        """Hold one of ``key``'s slots for the block (waits while the key is full, spaced or paused)."""
        lease = self._acquire(key, cap, interval)
        try:
            yield
        finally:
            self._release(key, lease)

    def pause(self, key: str, seconds: float) -> None:
        """Hold every new request of this task under ``key`` for ``seconds``."""
        if seconds <= 0:
            return
        with self._lock:
            self._table.pause(key, seconds, time.monotonic())

    def _acquire(self, key: str, cap: int, interval: float) -> int:
        with self._lock:
            if key not in self._waiters:
                # nobody queued for the key: take a free slot at once. The queue is only for when
                # the key is full or paused; through it, every slot is handed on by a wake-up
                lease, _ = self._table.try_acquire(key, cap, time.monotonic(), interval)
                if lease is not None:
                    return lease
            wake = threading.Event()
            queue = self._waiters.setdefault(key, deque())
            queue.append(wake)
        try:
            while True:
                with self._lock:
                    retry_in = None
                    if queue[0] is wake:  # only the head of the queue may take a slot
                        lease, retry_in = self._table.try_acquire(key, cap, time.monotonic(), interval)
                        if lease is not None:
                            return lease
                    wake.clear()
                # the head wakes on a release or when a pause/spacing runs out; the others on their turn
                wake.wait(retry_in)
        finally:
            with self._lock:
                queue.remove(wake)
                if queue:
                    queue[0].set()
                elif self._waiters.get(key) is queue:
                    del self._waiters[key]

    def _release(self, key: str, lease: int) -> None:
        with self._lock:
            self._table.release(key, lease, time.monotonic())
            queue = self._waiters.get(key)
            if queue:
                queue[0].set()


class PauseBoard:
    """Host pauses for the whole crawl: ``post`` one, read the ones posted ``since`` a version.

    Times are kept on the board's clock and handed out as seconds remaining, so tasks on other
    nodes (other clocks) apply them correctly. Expired pauses are dropped as they are read.
    """

    def __init__(self) -> None:
        self._until: dict[str, tuple[int, float]] = {}  # host -> (version posted, monotonic end)
        self._version = 0

    def post(self, host: str, seconds: float) -> None:
        now = time.monotonic()
        _, until = self._until.get(host, (0, 0.0))
        if now + seconds > until:
            self._version += 1
            self._until[host] = (self._version, now + seconds)

    def since(self, version: int) -> tuple[int, dict[str, float]]:
        """``(current version, {host: seconds left})`` for pauses posted after ``version``."""
        now = time.monotonic()
        for host in [h for h, (_, until) in self._until.items() if until <= now]:
            del self._until[host]
        news = {h: until - now for h, (v, until) in self._until.items() if v > version}
        return self._version, news


_LOCAL_BOARD = PauseBoard()


class _BoardClient:
    """Calls a :class:`PauseBoard` in this process or the cluster's actor, with one signature."""

    def __init__(self) -> None:
        import ray

        if ray.is_initialized():
            actor = ray.remote(PauseBoard).options(
                name=BOARD_NAME,
                namespace=NAMESPACE,
                lifetime="detached",  # shared by every task, job and run on the cluster
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,  # a restarted board forgets pauses: hosts are asked again, no harm
                max_task_retries=-1,
            )
            handle = actor.remote()
            self.post = lambda host, seconds: handle.post.remote(host, seconds)  # fire and forget
            # Not ray.get: a task blocked in ray.get lends its CPU back to the raylet, which starts
            # another shard task on a fresh worker (img2dataset imported again, 470 MB more); that
            # cost 35 % of the download rate in benchmarks/download.py. A future's result does not.
            self.since = lambda version: handle.since.remote(version).future().result(timeout=60)
        else:
            self.post = _LOCAL_BOARD.post
            self.since = _LOCAL_BOARD.since


class PauseFeed:
    """Keeps a task's :class:`HostGate` in step with the cluster's pauses, and posts its own."""

    def __init__(self, gate: HostGate, poll_seconds: float):
        self.gate = gate
        self.poll_seconds = poll_seconds
        self._board = _BoardClient()
        self._version = 0
        self.errors = 0  # failed reads of the board (counted in the stage stats as pause_board_errors)
        self._stop = threading.Event()
        self._read()  # a task that starts during a pause honours it from its first request
        self._thread = threading.Thread(target=self._run, name="webclip-pause-feed", daemon=True)
        self._thread.start()

    def post(self, host: str, seconds: float) -> None:
        """Pause ``host`` here now, and for every other task within their next poll."""
        if seconds <= 0:
            return
        self.gate.pause(host, seconds)
        self._board.post(host, seconds)

    def close(self) -> None:
        """Stop polling (the task is done)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _read(self) -> None:
        try:
            self._version, news = self._board.since(self._version)
        except Exception:  # a board restarting is no reason to fail a shard: counted, read again later
            self.errors += 1
            return
        for host, seconds in news.items():
            self.gate.pause(host, seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._read()
