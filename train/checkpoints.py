"""The trainer's checkpoint folder: what a resume needs to match before any work.

DeepSpeed stores a ZeRO-1/2 (and bf16) optimizer's state as flat fp32 partitions, one file per rank,
in the order the parameters were packed. A resume that changes that order, the parameters' layout or
the number of ranks would fail deep inside ``load_checkpoint`` with a raw exception, or load
scrambled moments silently. These checks read the folder (no DeepSpeed import) and stop first with a
message naming the setting and the fix.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline.errors import ConfigError

PARAMS_LAYOUT = "params_layout"
"""File in the checkpoint folder naming how its parameters are packed (:func:`layout_name`)."""

_OLD_LAYOUTS = {"flat", "per-tensor"}  # before parameters were aligned (issue 17)
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def layout_name(flat: bool) -> str:
    """``flat aligned`` or ``per-tensor aligned``: the packing this webclip writes."""
    return f"{'flat' if flat else 'per-tensor'} aligned"


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed's ``latest`` file names (``step300``), or None without checkpoints."""
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def tag_step(tag: str) -> int | None:
    """The step of a ``step<N>`` tag."""
    m = re.fullmatch(r"step(\d+)", tag)
    return int(m.group(1)) if m else None


def saved_world_size(tag_dir: Path) -> int | None:
    """Ranks that wrote a checkpoint's partitioned optimizer state (None when it is not partitioned)."""
    ranks = {int(m.group(1)) for p in tag_dir.glob("*optim_states.pt") if (m := _RANK_FILE.search(p.name))}
    return len(ranks) or None


def check_resume(ckpt_dir: Path, *, flat: bool, resume: bool, world: int, steps: int) -> int | None:
    """Stop before any work when the checkpoints to resume cannot be resumed as configured; returns
    the step a resume starts from (None when nothing is resumed).

    - the parameter layout (``train.flat_params``, and the pre-alignment layouts) must match;
    - partitioned optimizer state must be read by as many ranks as wrote it;
    - ``train.steps`` below the checkpoint's step would train nothing and export another step's
      weights under this configuration: refused, naming both steps.
    """
    tag = latest_tag(ckpt_dir) if resume else None
    if tag is None:
        return None
    marker = ckpt_dir / PARAMS_LAYOUT
    if marker.is_file():
        saved = marker.read_text().strip()
        if saved in _OLD_LAYOUTS:
            raise ConfigError(
                f"train.resume: the checkpoints in {ckpt_dir} were written by a webclip that packed "
                f"parameters unaligned ({saved!r}); this one aligns them, so their optimizer state does "
                "not fit. Set train.resume=false (or use a new run directory) to start over, or resume "
                "them with the webclip that wrote them"
            )
        if saved != layout_name(flat):
            other = saved.startswith("flat")
            raise ConfigError(
                f"train.flat_params: the checkpoints in {ckpt_dir} hold {saved.split()[0]} parameters; set "
                f"train.flat_params={'true' if other else 'false'} to resume them, or "
                "train.resume=false (or a new run directory) to start over"
            )
    saved_world = saved_world_size(ckpt_dir / tag)
    if saved_world is not None and saved_world != world:
        raise ConfigError(
            f"train.resume: {ckpt_dir / tag} was written by {saved_world} rank(s) and this run has {world}; "
            "ZeRO partitions the optimizer state per rank. Resume with the same number of processes "
            f"(deepspeed --num_gpus {saved_world} … / train.num_procs={saved_world}), or convert it "
            'with DeepSpeed\'s ds_to_universal.py and load it with "checkpoint": {"load_universal": '
            "true} in the DeepSpeed JSON, or set train.resume=false to start over"
        )
    step = tag_step(tag)
    if step is not None and step > steps:
        raise ConfigError(
            f"train.steps={steps}: the checkpoint to resume ({ckpt_dir / tag}) is already at step {step}; "
            f"set train.steps above {step} to train on, or train.resume=false to start a new run"
        )
    return step


def write_layout(ckpt_dir: Path, flat: bool) -> None:
    """Record the parameter packing next to the checkpoints (rank 0, after a save)."""
    (ckpt_dir / PARAMS_LAYOUT).write_text(layout_name(flat) + "\n")


def prune(ckpt_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` ``step<N>`` folders."""
    tags = sorted(
        (p for p in ckpt_dir.glob("step*") if p.is_dir() and tag_step(p.name) is not None),
        key=lambda p: tag_step(p.name) or 0,
    )
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
