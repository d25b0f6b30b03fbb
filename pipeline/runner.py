"""Runs a :class:`~pipeline.stage.Stage` 's tasks over Ray, with completion markers, retries and stats.

Where the tasks run:

* ``ray.address`` in the config, else ``RAY_ADDRESS`` (set by ``ray job submit``), else a Ray head
  already running on this machine (``ray submit`` runs the script on the head), else an embedded
  local Ray started in-process: :func:`ray.init` resolves exactly that order.
* A run directory on a process-local filesystem (``memory://``) cannot be seen by Ray workers, so
  its tasks run in the driver process, one after another, through the same code path.

Each finished task writes ``<run>/_done/<stage>/<task>`` (its stats) as its last act; a rerun skips
those. A task that raises, or whose worker dies, is retried ``ray.task_retries`` times by Ray; if it
still fails its error goes to ``<run>/_failed/<stage>/<task>.json`` and the stage ends with
:class:`~pipeline.errors.StageFailed` after the other tasks finished.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import StageFailed
from pipeline.progress import progress_bar
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

STAGE_MARKER = "_stage"
log = logging.getLogger("webclip")


@dataclass
class StageResult:
    """What a stage run did: merged stats, how many tasks ran or were skipped, and failures."""

    stage: str
    stats: Stats
    tasks_total: int = 0
    tasks_skipped: int = 0
    skipped_stage: bool = False
    failures: dict[str, str] = field(default_factory=dict)


class NodeLost(RuntimeError):
    """The Ray node (raylet) running a task died before the task could commit."""


def execute_task(stage: Stage, task: Task, parent: int | None = None, node: str | None = None) -> dict[str, Any]:
    """Run one task and write its completion marker; returns the marker payload (stats).

    ``node``: the Ray node id, recorded in the marker. ``parent``: the pid of the Ray worker's raylet
    when the task started. If the raylet died meanwhile (the driver was killed, taking the embedded
    Ray with it, or the node was lost) the task does not commit: what it did while its job was going
    away (e.g. downloads from a server that died with the driver) is redone by the next run instead
    of being marked done.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    stats = Stats()
    stage.process(task, stats)
    stats.seconds = time.perf_counter() - start
    stats.record_usage(cpu_start)
    if parent is not None and os.getppid() != parent:
        raise NodeLost(f"task {task.id}: the Ray node died while it ran; not marking it done")
    payload = {"task": task.id, "stats": stats.to_dict(), "host": os.uname().nodename}
    if node is not None:  # the Ray node that did it: hosts can share a name (several nodes on one machine)
        payload["node"] = node
    stage.run.remove(stage.run.failure_path(stage.name, task.id))
    stage.run.mark_done(stage.name, task.id, payload)
    return payload


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    include_dashboard: bool = False,
    resources: list[str] | None = None,
) -> str:
    """Connect to (or start) Ray once per process; returns where, e.g. ``cluster 10.0.0.5:6379 (64 CPUs)``.

    See the module docstring for the order in which the address is resolved. An embedded Ray declares
    each custom resource in ``resources`` (default: those the default config's stages request, e.g.
    ``download``) once per CPU, so a stage that requests one runs on it as it would on a download worker.
    """
    import ray

    if not ray.is_initialized():
        _init_ray(address, num_cpus, include_dashboard, resources)
    context = ray.get_runtime_context()
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return f"Ray at {context.gcs_address} ({cpus} CPUs, {len(ray.nodes())} node(s))"


def _init_ray(
    address: str | None, num_cpus: int | None, include_dashboard: bool, resources: list[str] | None = None
) -> None:
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    has_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    if not has_cluster:
        # Only an embedded instance takes these; ray.init refuses them when connecting.
        cpus = num_cpus or os.cpu_count() or 1
        names = resources if resources is not None else default_custom_resources()
        kwargs.update(num_cpus=num_cpus, include_dashboard=include_dashboard,
                      resources={name: float(cpus) for name in names})
        # Ray 2.5x turns token authentication on for every new local instance and logs a warning
        # saying so each time; for an embedded, loopback-only Ray that is noise on every stage. The
        # secure default stays; only its announcement is silenced.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # An embedded, one-machine Ray has no reason to listen beyond loopback. Ray binds its node to
        # the loopback address when its "cluster mode" is off: the environment variable (Ray's own
        # name) reaches the processes it starts, the constant covers a `ray` imported before now.
        if not _running_local_head():
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    try:
        ray.init(**kwargs)
    except ValueError:
        # A running local head was found (ray.init reads /tmp/ray/ray_current_cluster): connect plainly.
        kwargs.pop("num_cpus", None)
        kwargs.pop("include_dashboard", None)
        kwargs.pop("resources", None)
        ray.init(**kwargs)


def default_custom_resources() -> list[str]:
    """The custom resources the default configuration's stages request (``ray.stage_resources``)."""
    from pipeline.config import RayConfig

    return sorted({name for res in RayConfig().stage_resources.values() for name in res})


def task_options(stage: Stage) -> dict[str, Any]:
    """The Ray options of ``stage``'s tasks: retries, CPUs per task and the stage's custom resources."""
    cfg = stage.config.ray
    options: dict[str, Any] = {
        "max_retries": cfg.task_retries,
        "retry_exceptions": True,
        "num_cpus": cfg.cpus_per_task,
        "name": stage.name,
    }
    resources = cfg.stage_resources.get(stage.name)
    if resources:
        options["resources"] = dict(resources)
    return options


def _warn_missing_resources(stage: Stage, resources: dict[str, float]) -> None:
    """Say so when no node of the cluster has a resource the stage's tasks request: they wait for one."""
    import ray

    have = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    missing = sorted(r for r in resources if not any(h.get(r, 0) >= resources[r] for h in have))
    if missing:
        print(
            f"[{stage.name}] no node of this cluster has the Ray resource(s) {missing} its tasks request "
            f"(ray.stage_resources.{stage.name}); they wait until a node that has it joins (the cluster's "
            f"autoscaled download workers). To run them anywhere: --set 'ray.stage_resources.{stage.name}={{}}'; "
            f"to make a node take them: ray start … --resources='{{\"{missing[0]}\": <CPUs>}}'",
            file=sys.stderr,
        )


def _running_local_head() -> bool:
    """Whether `ray start --head` runs on this machine (then ray.init joins it, e.g. under `ray submit`)."""
    return Path("/tmp/ray/ray_current_cluster").exists()


def _remote_execute(stage: Stage, task: Task) -> dict[str, Any]:
    import ray

    node = ray.get_runtime_context().get_node_id()
    return execute_task(stage, task, parent=os.getppid(), node=node)  # a Ray worker's parent is its raylet


def _run_inline(stage: Stage, todo: list[Task], bar: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    results, failures = [], {}
    retries = stage.config.ray.task_retries
    for task in todo:
        for attempt in range(retries + 1):
            try:
                results.append(execute_task(stage, task))
                break
            except Exception as exc:  # a task's failure is data: record it, go on
                if attempt == retries:
                    failures[task.id] = f"{type(exc).__name__}: {exc}"
                    log.debug("task %s failed:\n%s", task.id, traceback.format_exc())
        bar.update(1)
    return results, failures


#: The default window is this many tasks per task slot of the cluster (its CPUs / ``ray.cpus_per_task``):
#: enough queued behind every slot that none idles while the driver handles a completion.
WINDOW_PER_SLOT = 4
#: ...and never fewer than this many: an autoscaling cluster sizes itself by the tasks it sees pending, so
#: a window sized by a head-only cluster (4 CPUs, no download workers yet) would hold it at one worker.
#: 256 pending one-CPU tasks ask for 16 sixteen-CPU workers at once; the window grows as they join.
MIN_WINDOW = 256
#: Seconds between two looks at the cluster's size for the default window (nodes join and leave).
WINDOW_REFRESH_SECONDS = 10.0


def default_window(cluster_cpus: float, cpus_per_task: float) -> int:
    """The default number of a stage's tasks in flight at once: ``WINDOW_PER_SLOT`` per task slot of the
    cluster, at least ``MIN_WINDOW``."""
    slots = int(cluster_cpus // cpus_per_task) if cpus_per_task > 0 else 0
    return max(MIN_WINDOW, WINDOW_PER_SLOT * slots)


class _Window:
    """How many tasks may be in flight: ``ray.max_in_flight``, or :func:`default_window` of the cluster's
    size as it is now (looked up at most every ``WINDOW_REFRESH_SECONDS``)."""

    def __init__(self, fixed: int | None, cpus_per_task: float):
        self.fixed, self.cpus_per_task = fixed, cpus_per_task
        self._size, self._checked = 0, -WINDOW_REFRESH_SECONDS

    def size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic()
        if now - self._checked >= WINDOW_REFRESH_SECONDS:
            import ray

            self._checked = now
            self._size = default_window(ray.cluster_resources().get("CPU", 0), self.cpus_per_task)
        return self._size


def _run_on_ray(stage: Stage, todo: list[Task], bar: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run ``todo`` on Ray with at most a window of tasks in flight (``ray.max_in_flight``).

    Tasks are submitted in order as earlier ones finish. The driver's work per completion is independent
    of ``len(todo)``: each round blocks in ``ray.wait`` for one finished task, then takes every other one
    already finished with a second, non-blocking ``ray.wait``, both over the window only.
    """
    import ray

    cfg = stage.config.ray
    custom = sorted({name for res in cfg.stage_resources.values() for name in res})
    where = ensure_ray(cfg.address, cfg.num_cpus, cfg.include_dashboard, custom)
    window = _Window(cfg.max_in_flight, cfg.cpus_per_task)
    limit = f", at most {window.size():,} in flight" if len(todo) > window.size() else ""
    print(f"[{stage.name}] {where}; {len(todo):,} task(s){limit}", file=sys.stderr)
    options = task_options(stage)
    if options.get("resources"):
        _warn_missing_resources(stage, options["resources"])
    remote = ray.remote(_remote_execute).options(**options)
    stage_ref = ray.put(stage)
    queue = iter(todo)
    pending: dict[Any, Task] = {}
    results, failures = [], {}

    def refill() -> None:
        for _ in range(window.size() - len(pending)):
            task = next(queue, None)
            if task is None:
                return
            pending[remote.remote(stage_ref, task)] = task

    refill()
    while pending:
        refs = list(pending)  # the window, not the stage: O(window) per round
        ready, _ = ray.wait(refs, num_returns=1, timeout=None)
        if len(refs) > 1:  # and whatever else finished meanwhile, without waiting
            more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready = more if more else ready
        for ref in ready:
            task = pending.pop(ref)
            try:
                results.append(ray.get(ref))
            except Exception as exc:  # RayTaskError, WorkerCrashedError… after Ray's retries
                cause = getattr(exc, "cause", None) or exc
                failures[task.id] = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1][:500]}"
            bar.update(1)
        bar.set_postfix(failed=len(failures))
        refill()
    return results, failures


def merged_task_stats(
    run: RunDir, stage: str, task_ids: list[str], known: dict[str, dict[str, Any]] | None = None
) -> Stats:
    """Sum the stats recorded in the completion markers of ``task_ids``.

    ``known``: marker payloads already at hand by task id (what this run's tasks returned); only the
    other markers are read, in bulk (:meth:`~pipeline.rundir.RunDir.read_markers`).
    """
    known = known or {}
    wanted = set(task_ids)
    payloads = {t: p for t, p in known.items() if t in wanted}
    rest = wanted - set(payloads)
    if rest:
        payloads.update(run.read_markers(stage, rest))
    total = Stats()
    for task_id in sorted(payloads):  # a fixed order: float seconds sum the same way every time
        total.merge(Stats.from_dict(payloads[task_id]["stats"]))
    return total


def run_stage(stage: Stage, *, progress: bool = True, force: bool = False, checked: bool = False) -> StageResult:
    """Run every unfinished task of ``stage``, then its finalize, then write ``stats/<stage>.json``.

    ``checked``: the caller already ran ``stage.check()`` (before writing anything), so it is not
    repeated. Raises :class:`~pipeline.errors.StageFailed` (after writing stats) if tasks failed
    after retries.
    """
    run, name = stage.run, stage.name
    stage.progress = progress
    if stage.resumable and not force and run.is_done(name, STAGE_MARKER):
        saved = run.read_json(run.stats_path(name)) if run.exists(run.stats_path(name)) else {}
        print(f"[{name}] already complete, skipped (delete {run.full_url('_done', name)} to redo)", file=sys.stderr)
        return StageResult(name, Stats.from_dict(saved), skipped_stage=True)

    wall = time.perf_counter()
    if not checked:  # before anything is removed or written: a ConfigError (exit 2) leaves no trace
        stage.check()
    stale = run.remove_temporaries(
        *stage.outputs,
        f"_done/{name}", f"_failed/{name}", run.stats_path(name),
    )
    if stale:
        print(f"[{name}] removed {len(stale)} temporary file(s) an interrupted run left: "
              f"{', '.join(stale[:5])}{' …' if len(stale) > 5 else ''}", file=sys.stderr)
    tasks = stage.tasks()
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"stage {name!r} produced duplicate task ids")
    done = run.done_tasks(name) if not force else set()
    todo = [t for t in tasks if t.id not in done]
    inline = run.is_process_local or stage.in_driver
    where = "in the driver process" if inline else "on Ray"
    bar = progress_bar(len(tasks), len(tasks) - len(todo), f"[{name}] tasks", "task", disable=not progress)
    if todo:
        runner = _run_inline if inline else _run_on_ray
        results, failures = runner(stage, todo, bar)
    else:
        results, failures = [], {}
    bar.close()

    stats = merged_task_stats(run, name, ids, {r["task"]: r for r in results})
    result = StageResult(name, stats, len(tasks), len(tasks) - len(todo), failures=failures)
    if failures:
        for task_id, error in failures.items():
            run.write_json(run.failure_path(name, task_id), {"task": task_id, "error": error})
        _write_stats(run, name, stats, result, time.perf_counter() - wall)
        raise StageFailed(name, failures)

    stage.finalize(stats)
    if stage.versioned_tasks:  # markers of earlier versions of the tasks are stale
        for task_id in run.done_tasks(name) - set(ids) - {STAGE_MARKER}:
            run.remove(run.marker_path(name, task_id))
    _write_stats(run, name, stats, result, time.perf_counter() - wall)
    run.mark_done(name, STAGE_MARKER, {"tasks": len(tasks)})
    print(
        f"[{name}] {len(tasks)} tasks ({result.tasks_skipped} already done) {where} in "
        f"{time.perf_counter() - wall:.1f}s: {stage.summary(stats)}",
        file=sys.stderr,
    )
    return result


def _write_stats(run: RunDir, name: str, stats: Stats, result: StageResult, wall: float) -> None:
    body = {
        "stage": name,
        **stats.to_dict(),
        "wall_seconds": round(wall, 3),
        "tasks": result.tasks_total,
        "tasks_skipped": result.tasks_skipped,
        "failed_tasks": result.failures,
    }
    run.write_json(run.stats_path(name), body)
