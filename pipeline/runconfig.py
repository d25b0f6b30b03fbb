"""The run's configuration on disk: what every stage ran with, never overwritten by another stage.

* ``<run>/config/<stage>.yaml``: the whole resolved configuration the stage last ran with (the
  train stage hands exactly this file to ``train/main.py``).
* ``<run>/config.yaml``: the union: each stage's section as that stage last ran it; the sections of
  stages never run and the shared keys (``run``, ``seed``, ``stages``, ``ray``, ``evalsets``) as the
  latest command gave them. A later ``webclip eval`` with an eval-only file therefore leaves the
  ``train:`` section the training ran with in place.

Reading is for ``webclip status`` and the audit: :func:`stage_configs` and :func:`differences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from pipeline.rundir import RunDir

CONFIG_DIR = "config"
#: Shared keys whose change is worth a note (``run``, ``stages`` and ``ray`` change nothing a stage computes).
NOTED_SHARED = ("seed", "evalsets")
UNION_HEADER = (
    "# webclip run configuration: each stage's section as that stage last ran it, the other keys as the\n"
    "# latest command gave them. The whole configuration each stage ran with: config/<stage>.yaml.\n"
)


def stage_config_path(stage: str) -> str:
    """Run-relative path of the configuration ``stage`` last ran with."""
    return f"{CONFIG_DIR}/{stage}.yaml"


def _load(run: RunDir, rel: str) -> dict[str, Any] | None:
    if not run.exists(rel):
        return None
    try:
        data = yaml.safe_load(run.read_text(rel))
    except yaml.YAMLError:
        return None  # a damaged record is replaced, not trusted
    return data if isinstance(data, dict) else None


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def record_run_config(
    run: RunDir, resolved: dict[str, Any], stages: Sequence[str] | None, stage_names: Sequence[str]
) -> list[str]:
    """Write ``config/<stage>.yaml`` for each of ``stages`` and the union ``config.yaml``; returns notes.

    ``resolved`` is the command's configuration (``model_dump(mode="json")``); ``stage_names`` are
    every stage's name, which is also its section's key. ``stages`` None (a caller that names no stage)
    writes ``resolved`` as ``config.yaml``, as before per-stage records existed.
    """
    prior = _load(run, RunDir.CONFIG)
    notes: list[str] = []
    union = dict(resolved)
    if prior is not None and stages is not None:
        for section in stage_names:
            if section not in stages and section in prior:
                union[section] = prior[section]  # what that stage ran with stays
        changed = [k for k in NOTED_SHARED if k in prior and prior[k] != resolved.get(k)]
        if changed:
            notes.append(
                f"note: {' and '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from "
                f"{run.full_url(RunDir.CONFIG)}; {', '.join(stages)} {'runs' if len(stages) == 1 else 'run'} "
                f"with the new value; what each earlier stage ran with stays in "
                f"{run.full_url(CONFIG_DIR)}/<stage>.yaml"
            )
    elif prior is not None and prior != resolved:
        notes.append(f"note: configuration differs from the one in {run.full_url(RunDir.CONFIG)}; overwriting it")
    for stage in stages or ():
        run.write_text(
            stage_config_path(stage),
            f"# the configuration `webclip {stage}` last ran with in this run\n" + _dump(resolved),
        )
    run.write_text(RunDir.CONFIG, (UNION_HEADER if stages is not None else "") + _dump(union))
    return notes


def stage_configs(run: RunDir) -> dict[str, dict[str, Any]]:
    """``{stage: configuration it last ran with}`` for every ``config/<stage>.yaml`` of the run."""
    out = {}
    for rel in run.glob(f"{CONFIG_DIR}/*.yaml"):
        data = _load(run, rel)
        if data is not None:
            out[rel.rsplit("/", 1)[-1].removesuffix(".yaml")] = data
    return out


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def differences(stage: str, stage_config: dict[str, Any], union: dict[str, Any]) -> list[str]:
    """Where what ``stage`` ran with differs from the run's ``config.yaml``, as ``key=stage's value``.

    Only the stage's own section and the shared keys that change results (``seed``, ``evalsets``) are
    compared: the rest of a stage's file holds other stages' sections it did not use.
    """
    keys = (stage, *NOTED_SHARED)
    mine = _flatten({k: stage_config.get(k) for k in keys})
    theirs = _flatten({k: union.get(k) for k in keys})
    return [f"{k}={mine.get(k)!r}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
