"""Typed, validated run configuration: one YAML file, defaults for everything, ``--set`` overrides.

Each stage package owns the schema of its own section (``crawl/config.py``, ``dedup/config.py``,
``train/config.py``, ``eval/config.py``); this module composes them into :class:`WebclipConfig`
and turns every validation problem into a :class:`ConfigError` that names the key, the value and
the fix (the nearest valid key for a typo, the allowed range for a bad number).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# Each stage package owns its section's schema; these modules hold only pydantic models.
from crawl.config import BalanceConfig, DownloadConfig, ExtractConfig, MatchConfig, VocabConfig
from dedup.config import AuditConfig, DedupConfig
from eval.config import EvalConfig
from pipeline.errors import ConfigError
from pipeline.evalsets_spec import EvalSetSpec
from pipeline.section import Section
from train.config import TrainConfig

STAGE_ORDER = ("vocab", "extract", "match", "balance", "download", "dedup", "train", "eval", "audit")
StageName = Literal["vocab", "extract", "match", "balance", "download", "dedup", "train", "eval", "audit"]


class RayConfig(Section):
    """Where stage tasks run and how often a failing task is retried."""

    address: str | None = Field(
        None, description="Ray cluster address; None: RAY_ADDRESS, then a running local head, else embedded"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the embedded Ray (None: all)")
    task_retries: int = Field(2, ge=0, le=20, description="retries of a task that raises or whose worker dies")
    cpus_per_task: float = Field(1.0, gt=0, le=64)
    include_dashboard: bool = False
    max_in_flight: int | None = Field(
        None,
        description="most tasks of a stage submitted to Ray at once; more are submitted as these finish, so "
        "the driver's work per finished task does not grow with the stage's size. None: 4 per task slot of "
        "the cluster (its CPUs / cpus_per_task, looked up again as nodes join), at least 256 so an "
        "autoscaling cluster sees enough pending tasks to grow",
    )
    stage_resources: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"download": {"download": 1.0}},
        description="custom Ray resources each task of a stage requests, by stage: the download stage asks "
        "for one unit of `download`, which only download workers declare (infra/ray/cluster.yaml), so the "
        "head's CPUs never run shards; the embedded Ray declares one per CPU. {} for a stage: any node",
    )

    @field_validator("max_in_flight")
    @classmethod
    def _max_in_flight_positive(cls, value: int | None) -> int | None:
        # A custom check (not ge=1) so the message says what the key does and how to get the default.
        if value is not None and value < 1:
            raise ValueError(
                "at least 1 task must be in flight; set a positive number, or null for the default "
                "(4 per task slot of the cluster, at least 256)"
            )
        return value

    @model_validator(mode="after")
    def _stage_resources_name_stages(self) -> RayConfig:
        unknown = sorted(set(self.stage_resources) - set(STAGE_ORDER))
        if unknown:
            raise ValueError(f"stage_resources names unknown stage(s) {unknown}; valid: {', '.join(STAGE_ORDER)}")
        for stage, res in self.stage_resources.items():
            bad = [k for k, v in res.items() if k in ("CPU", "GPU", "memory") or v <= 0]
            if bad:
                raise ValueError(
                    f"stage_resources.{stage}: {bad} must be custom resources with amounts > 0 "
                    "(CPUs per task are ray.cpus_per_task)"
                )
        return self


class WebclipConfig(Section):
    """The whole run: where it lives, its seed, which stages ``webclip run`` runs, and each stage's section."""

    run: str = Field("runs/demo", description="run directory: a local path or any fsspec URL")
    seed: int = Field(0, ge=0, description="seed for every random decision of the run")
    stages: list[StageName] = Field(default_factory=lambda: list(STAGE_ORDER))
    ray: RayConfig = Field(default_factory=RayConfig)
    evalsets: list[EvalSetSpec] = Field(default_factory=list, description="evaluation sets for dedup and eval")
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    match: MatchConfig = Field(default_factory=MatchConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)


def root_model() -> type[WebclipConfig]:
    """The composed configuration model class."""
    return WebclipConfig


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class reached by following ``loc`` (field names) from ``model``."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        # unwrap Optional[...] / list[...] to reach a nested model
        while get_origin(current) is not None and not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            args = [a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            current = args[0] if args else None
            if current is None:
                return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe_error(model: type[BaseModel], err: dict[str, Any], source: str) -> str:
    loc = tuple(p for p in err["loc"])
    key = ".".join(str(p) for p in loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
        return (
            f"{source}: unknown key {key!r}. {hint} Valid keys here: {', '.join(valid)}".replace("  ", " ")
        )
    shown = repr(value) if not isinstance(value, dict) else "{…}"
    return f"{source}: key {key!r} = {shown}: {err['msg']}"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``dotted`` (``a.b.c``; a number picks an item of a list: ``evalsets.0.path``) to ``value``."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--set {dotted}: {'.'.join(parts[:i])} is a list of {len(node)} item(s); "
                    f"pick one by its number, 0 to {len(node) - 1}, or set the whole list"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if last:
            node[part] = value
            break
        child = node.setdefault(part, {})
        if not isinstance(child, dict | list):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section, it holds {child!r}")
        node = child


#: A value still holding a starter config's placeholder, e.g. ``s3://<BUCKET>/runs/wit``.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def _placeholders(node: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, value) of every string in ``node`` that still holds a placeholder."""
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in _placeholders(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in _placeholders(v, f"{key}.{i}")]
    return [(key, node)] if isinstance(node, str) and PLACEHOLDER.search(node) else []


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key.path=value`` override; the value is read as YAML (``3``, ``true``, ``[a, b]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set balance.t=20000")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot read value {raw!r} as YAML: {exc}") from exc
    return key, value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    run: str | None = None,
) -> WebclipConfig:
    """Load, merge and validate a run's configuration.

    Order: built-in defaults, then the YAML file ``path``, then each ``--set`` override, then
    ``run`` (the ``--run`` flag). Raises :class:`ConfigError` naming the key, the value and the fix.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {source!r} does not exist; pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        source = f"{source} + --set" if "--set" not in source else source
    if run is not None:
        data["run"] = run
    left = _placeholders(data)
    if left:
        lines = [f"  {k} = {v!r}: replace {', '.join(PLACEHOLDER.findall(v))}" for k, v in left]
        first = left[0][0]
        raise ConfigError(
            f"{source}: {len(left)} placeholder(s) not filled in:\n" + "\n".join(lines) + "\n"
            f"Edit the file or pass the values, e.g. --set {first}=… (--run URL for `run`)"
        )
    model = root_model()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        messages = [_describe_error(model, e, source) for e in exc.errors()]
        raise ConfigError("\n".join(messages)) from None


def dump_config(config: BaseModel) -> str:
    """The resolved configuration as YAML, as written to ``<run>/config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
