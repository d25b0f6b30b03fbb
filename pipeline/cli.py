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


def prepare_run(config: WebclipConfig, stages: Sequence[str] | None = None) -> RunDir:
    """Check the run URL is writable, then record the configuration first.

    With ``stages``: ``config/<stage>.yaml`` for each, and ``config.yaml`` as the union of what every
    stage ran with (:mod:`pipeline.runconfig`), so no stage overwrites another's settings.
    """
    from pipeline.runconfig import CONFIG_DIR, record_run_config

    run = RunDir(config.run)
    run.ensure_writable()
    run.remove_temporaries(RunDir.CONFIG, CONFIG_DIR)
    for note in record_run_config(run, config.model_dump(mode="json"), stages, STAGE_ORDER):
        print(note, file=sys.stderr)
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
    prepare_run(config, order)
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
    _add_plan_args(sub.add_parser("plan", help="core-hours, GPU-hours, memory, storage and cost of a run at scale"))
    return parser


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    from pipeline.plan import CLUSTERS

    p.add_argument("--pairs", required=True, help="curated image-text pairs wanted after dedup, e.g. 400M")
    p.add_argument("--candidates", required=True, help="candidate (image URL, alt text) rows extracted, e.g. 5B")
    p.add_argument("--eval", default="", help="eval-set sizes in images, comma-separated, e.g. 50k,10k,10k")
    p.add_argument("--model", default="ViT-B-16", help="a model with a training rate in the rates file")
    p.add_argument("--steps", required=True, help="training steps, e.g. 390625")
    p.add_argument("--batch", required=True, help="global batch size, e.g. 32768")
    p.add_argument("--cluster", default="aws-clip", help=f"cluster shape: {', '.join(CLUSTERS)}")
    p.add_argument("--cpu-nodes", type=int, help="override the shape's CPU node count")
    p.add_argument("--gpu-nodes", type=int, help="override the shape's GPU node count")
    p.add_argument("--match-rate", type=float, default=0.5, help="fraction of candidates that match the vocabulary")
    p.add_argument("--download-success", type=float, default=0.7, help="fraction of downloads that succeed")
    p.add_argument("--dedup-keep", type=float, default=0.95, help="fraction of downloaded samples dedup keeps")
    p.add_argument("--pairs-per-page", type=float,
                   help="candidate pairs per crawled HTML page (default: measured on real pages with extract's rate)")
    p.add_argument("--rates", help="rates file (default benchmarks/rates.json)")


def plan(args: argparse.Namespace) -> str:
    """The printed capacity plan for ``webclip plan``'s arguments (ConfigError on bad input)."""
    from pipeline.plan import load_rates, make_inputs, make_plan, render

    rates = load_rates(args.rates)
    inputs = make_inputs(
        pairs=args.pairs, candidates=args.candidates, eval_sizes=args.eval, model=args.model, steps=args.steps,
        batch=args.batch, cluster=args.cluster, rates=rates, match_rate=args.match_rate,
        download_success=args.download_success, dedup_keep=args.dedup_keep, cpu_nodes=args.cpu_nodes,
        gpu_nodes=args.gpu_nodes, pairs_per_page=args.pairs_per_page,
    )
    return render(make_plan(inputs, rates))


def status(url: str) -> str:
    """A table of the stages of the run at ``url``: done or not, tasks, counts, failures.

    Sub-stages a stage runs itself (extract's uid passes, dedup's per-shard ``dedup_search``,
    ``dedup_thumbs`` and ``dedup_clean``) follow their stage, indented, so an interrupted pass shows how far it got.
    """
    run = RunDir(url)
    trained_alone = any(run.exists(f) for f in COMPLETED_OUTSIDE_RUNNER.values())  # train/main.py, no config
    if not run.exists(RunDir.CONFIG) and not trained_alone:
        raise ConfigError(f"{url!r} is not a webclip run directory (no config.yaml); check the --run URL")
    lines = [f"run {run.url}"]
    subs = sorted({p.split("/")[1] for p in run.glob("_done/*")} - set(STAGE_ORDER))
    # one name column wide enough for the longest sub-stage (extract.drops_merge1, dedup.pool_verify)
    width = max([18, *(4 + len(sub) + 1 for sub in subs)])
    for name in STAGE_ORDER:
        lines += _stage_status(run, name, indent="  ", width=width)
        for sub in subs:  # named after their stage: dedup_clean, extract.uids
            if sub.startswith((f"{name}_", f"{name}.")):
                lines += _stage_status(run, sub, indent="    ", width=width)
    return "\n".join(lines)


#: Stages that can also complete outside the runner, and the file their own entry point writes when it
#: does: ``deepspeed train/main.py`` is how ML engineers train, without ``webclip``'s markers.
COMPLETED_OUTSIDE_RUNNER = {"train": "train/summary.json"}
ERROR_CHARS = 240  # a failure's message in the table; the full text stays in its _failed/ file


def _stage_status(run: RunDir, name: str, indent: str, width: int = 18) -> list[str]:
    from pipeline.runner import STAGE_MARKER

    done = run.is_done(name, STAGE_MARKER)
    tasks_done = len(run.done_tasks(name) - {STAGE_MARKER})
    failed = run.glob(f"_failed/{name}/*.json")
    stats = run.read_json(run.stats_path(name)) if run.exists(run.stats_path(name)) else None
    outside = COMPLETED_OUTSIDE_RUNNER.get(name)
    summary = run.read_json(outside) if outside and not done and run.exists(outside) else None
    state = "done" if done or summary else ("failed" if failed else ("partial" if tasks_done else "not run"))
    line = f"{indent}{name:<{width - len(indent)}} {state:<8} tasks done={tasks_done}"
    if stats and not summary:
        counts = " ".join(f"{k}={v:,}" for k, v in stats.get("counts", {}).items())
        dropped = sum(stats.get("dropped", {}).values())
        line += f" {counts} dropped={dropped:,} wall={stats.get('wall_seconds', 0):.1f}s"
        if stats.get("cpu_seconds"):  # absent from stats written before tasks recorded their CPU and memory
            line += f" task_cpu={stats['cpu_seconds']:.1f}s worker_peak={stats.get('peak_rss_mb', 0):,.0f}MB"
    if summary:
        line += " " + " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in summary.items())
        line += f" (by its own entry point: {outside})"
    lines = [line]
    lines += _config_status(run, name, indent)
    for f in failed if state != "done" else []:
        error = " ".join(str(run.read_json(f).get("error", "")).split())
        if len(error) > ERROR_CHARS:
            error = f"{error[:ERROR_CHARS]}… (full text: {run.full_url(f)})"
        lines.append(f"{indent}    failed {f.rsplit('/', 1)[-1][:-5]}: {error}")
    return lines


def _config_status(run: RunDir, name: str, indent: str) -> list[str]:
    """Where the configuration ``name`` ran with is kept, and how it differs from the run's config.yaml."""
    import yaml

    from pipeline.runconfig import differences, stage_config_path, stage_configs

    mine = stage_configs(run).get(name)
    if mine is None:
        return []
    union = (yaml.safe_load(run.read_text(RunDir.CONFIG)) or {}) if run.exists(RunDir.CONFIG) else {}
    diff = differences(name, mine, union)
    where = f"{indent}    config {stage_config_path(name)}"
    return [where + (f" (unlike config.yaml: {', '.join(diff[:4])}{' …' if len(diff) > 4 else ''})" if diff else "")]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``webclip`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    return guarded("webclip", lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if args.command == "status":
        print(status(args.run))
        return 0
    if args.command == "plan":
        print(plan(args))
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
