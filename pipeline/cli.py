"""The ``webclip`` command line: one subcommand per stage, ``run`` for all of them, ``status`` for a run.

Every stage command takes ``--config FILE``, ``--set key=value`` (repeatable) and ``--run URL``.
Exit codes: 0 done, 2 bad configuration or input (nothing written), 3 tasks failed after retries,
130 interrupted (SIGINT); :func:`guarded` maps errors to them for every entry point (``webclip``,
``crawl/main.py``, ``python -m demo``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import STAGE_ORDER, WebclipConfig, dump_config, load_config
from pipeline.errors import EXIT_INTERRUPTED, ConfigError, StageFailed
from pipeline.rundir import RunDir

#: Where each stage's class lives; imported only when that stage runs.
STAGES: dict[str, str] = {
    "vocab": "crawl.vocab:VocabStage",
    "extract": "crawl.extract:ExtractStage",
    "match": "crawl.match:MatchStage",
    "balance": "crawl.balance:BalanceStage",
    "download": "crawl.download:DownloadStage",
    "dedup": "dedup.stage:DedupStage",
    "train": "train.stage:TrainStage",
    "eval": "eval.stage:EvalStage",
    "audit": "dedup.audit:AuditStage",
}


def guarded(prog: str, body: Callable[[], int | None]) -> int:
    """Run an entry point's ``body`` and return its exit code, mapping the run's errors to theirs.

    :class:`~pipeline.errors.ConfigError` → 2 and :class:`~pipeline.errors.StageFailed` → 3 with
    their messages; ``KeyboardInterrupt`` (SIGINT, Ctrl-C) → 130 with a note that finished work is
    kept and rerunning resumes. Anything else propagates (a bug: its traceback is the report).
    Every message goes to stderr prefixed with ``prog``.
    """
    try:
        return body() or 0
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
    except StageFailed as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"\n{prog}: interrupted (SIGINT); finished stages and tasks are kept, "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def stage_class(name: str) -> type:
    """Import and return the Stage class registered under ``name``."""
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def prepare_run(config: WebclipConfig) -> RunDir:
    """Check the run URL is writable, then write the resolved configuration first."""
    run = RunDir(config.run)
    run.ensure_writable()
    run.remove_temporaries(RunDir.CONFIG)
    text = dump_config(config)
    if run.exists(RunDir.CONFIG) and run.read_text(RunDir.CONFIG) != text:
        print(f"note: configuration differs from the one in {run.full_url(RunDir.CONFIG)}; overwriting it",
              file=sys.stderr)
    run.write_text(RunDir.CONFIG, text)
    return run


def run_stages(config: WebclipConfig, names: Sequence[str], *, force: bool = False) -> list[Any]:
    """Run ``names`` in pipeline order on ``config``'s run; every stage is checked before any runs."""
    from pipeline.runner import run_stage

    order = [n for n in STAGE_ORDER if n in names]
    run = RunDir(config.run)
    stages = [stage_class(n)(config, run) for n in order]
    for stage in stages:  # every stage's static checks pass before the first does any work
        stage.validate()
    # The first stage that will run also checks its inputs before anything is written (exit 2 leaves
    # no trace: not even <run>/config.yaml). Later stages check theirs when their turn comes, since
    # their inputs are what the stages before them write.
    first = next((s for s in stages if not will_skip(s, force=force)), None)
    if first is not None:
        first.check()
    prepare_run(config)
    note = resume_note(config, order, force=force)
    if note and len(stages) > 1:
        print(note, file=sys.stderr)
    results = []
    timings: list[tuple[str, float]] = []
    for stage in stages:
        start = time.perf_counter()
        results.append(run_stage(stage, force=force, checked=stage is first))
        timings.append((stage.name, time.perf_counter() - start))
    if len(stages) > 1:
        print("\nstage        seconds  summary", file=sys.stderr)
        for (name, secs), res in zip(timings, results, strict=True):
            state = "skipped (done)" if res.skipped_stage else res.stats.summary()
            print(f"{name:<12} {secs:>7.1f}  {state}", file=sys.stderr)
    return results


def will_skip(stage: Any, *, force: bool = False) -> bool:
    """Whether :func:`~pipeline.runner.run_stage` will skip ``stage`` as complete (its stage marker)."""
    from pipeline.runner import STAGE_MARKER

    return stage.resumable and not force and stage.run.is_done(stage.name, STAGE_MARKER)


def resume_note(config: WebclipConfig, names: Sequence[str], *, force: bool = False) -> str | None:
    """A line naming the stages of ``names`` a rerun skips because they completed, or None."""
    from pipeline.runner import STAGE_MARKER

    if force:
        return None
    run = RunDir(config.run)
    done = [n for n in STAGE_ORDER if n in names and stage_class(n).resumable and run.is_done(n, STAGE_MARKER)]
    if not done:
        return None
    return (f"resuming {run.url}: skipping completed stage(s) {', '.join(done)} "
            f"(delete {run.full_url('_done')}/<stage> to redo one)")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML configuration file (defaults for every key not given)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set balance.t=20000 (repeatable)")
    p.add_argument("--run", help="run directory URL (overrides `run:` in the config)")
    p.add_argument("--force", action="store_true", help="redo finished tasks instead of skipping them")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webclip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGE_ORDER:
        _add_config_args(sub.add_parser(name, help=f"run the {name} stage"))
    p_run = sub.add_parser("run", help="run the configured stages in order, skipping completed ones")
    _add_config_args(p_run)
    p_run.add_argument("--stages", help="comma-separated subset, e.g. extract,match (default: config `stages`)")
    p_status = sub.add_parser("status", help="what is done in a run: stages, counts, failures")
    p_status.add_argument("run", help="run directory URL")
    p_cfg = sub.add_parser("config", help="print the resolved configuration")
    _add_config_args(p_cfg)
    return parser


def status(url: str) -> str:
    """A table of the stages of the run at ``url``: done or not, tasks, counts, failures.

    Sub-stages a stage runs itself (extract's uid passes, dedup's per-shard ``dedup_search``,
    ``dedup_thumbs`` and ``dedup_clean``) follow their stage, indented, so an interrupted pass shows how far it got.
    """
    run = RunDir(url)
    if not run.exists(RunDir.CONFIG):
        raise ConfigError(f"{url!r} is not a webclip run directory (no config.yaml); check the --run URL")
    lines = [f"run {run.url}"]
    subs = sorted({p.split("/")[1] for p in run.glob("_done/*")} - set(STAGE_ORDER))
    for name in STAGE_ORDER:
        lines += _stage_status(run, name, indent="  ")
        for sub in subs:  # named after their stage: dedup_clean, extract.uids
            if sub.startswith((f"{name}_", f"{name}.")):
                lines += _stage_status(run, sub, indent="    ")
    return "\n".join(lines)


def _stage_status(run: RunDir, name: str, indent: str) -> list[str]:
    from pipeline.runner import STAGE_MARKER

    done = run.is_done(name, STAGE_MARKER)
    tasks_done = len(run.done_tasks(name) - {STAGE_MARKER})
    failed = run.glob(f"_failed/{name}/*.json")
    stats = run.read_json(run.stats_path(name)) if run.exists(run.stats_path(name)) else None
    state = "done" if done else ("failed" if failed else ("partial" if tasks_done else "not run"))
    line = f"{indent}{name:<{18 - len(indent)}} {state:<8} tasks done={tasks_done}"
    if stats:
        counts = " ".join(f"{k}={v:,}" for k, v in stats.get("counts", {}).items())
        dropped = sum(stats.get("dropped", {}).values())
        line += f" {counts} dropped={dropped:,} wall={stats.get('wall_seconds', 0):.1f}s"
    lines = [line]
    for f in failed:
        lines.append(f"{indent}    failed {f.rsplit('/', 1)[-1][:-5]}: {run.read_json(f)['error']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``webclip`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    return guarded("webclip", lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if args.command == "status":
        print(status(args.run))
        return 0
    config = load_config(args.config, args.overrides, args.run)
    if args.command == "config":
        print(dump_config(config), end="")
        return 0
    if args.command == "run":
        names = args.stages.split(",") if args.stages else list(config.stages)
        unknown = [n for n in names if n not in STAGE_ORDER]
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {unknown}; valid: {', '.join(STAGE_ORDER)}")
    else:
        names = [args.command]
    run_stages(config, names, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
