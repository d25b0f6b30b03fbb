"""Export a trained model in OpenAI's state-dict format and load it (or a DeepSpeed checkpoint) back.

An export is ``model.pt`` (``torch.save`` of the OpenAI-named fp32 state dict), ``model.json`` (the
registered model name, its overrides and the tokenizer folder) and ``tokenizer/tokenizer.json``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from train.model import CLIP, build_model, config_from_openai_state_dict, scalars_as_vectors
from train.model_configs import ModelConfig
from train.tokenizer import TOKENIZER_FILE, Tokenizer
from train.transforms import eval_transform

SIDECAR = "model.json"
WEIGHTS = "model.pt"


def write_export(
    directory: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    spec: dict[str, Any],
    tokenizer: Tokenizer,
) -> Path:
    """Write ``model.pt``, ``model.json`` and ``tokenizer/`` into ``directory`` (each file atomically)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tokenizer.save(d / "tokenizer")
    tmp = d / f".tmp-{WEIGHTS}"
    torch.save(state_dict, tmp)
    tmp.replace(d / WEIGHTS)
    side = {**spec, "tokenizer": "tokenizer", "format": "openai-clip-state-dict"}
    (d / f".tmp-{SIDECAR}").write_text(json.dumps(side, indent=2, sort_keys=True) + "\n")
    (d / f".tmp-{SIDECAR}").replace(d / SIDECAR)
    return d / WEIGHTS


def _find_sidecar(start: Path) -> Path | None:
    """``model.json`` next to ``start`` (a ``<stem>.json`` for a file) or in up to two parent folders."""
    if start.is_file():
        cand = start.with_suffix(".json")
        if cand.is_file() and cand != start:
            return cand
        start = start.parent
    for d in (start, start.parent, start.parent.parent):
        if (d / SIDECAR).is_file():
            return d / SIDECAR
    return None


def _ds_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed checkpoint folder (the one holding ``latest``, or one tag folder)."""
    tag = None
    root = ckpt_dir
    if not (ckpt_dir / "latest").is_file() and (ckpt_dir.parent / "latest").is_file():
        root, tag = ckpt_dir.parent, ckpt_dir.name
    if tag is None:
        tag = (root / "latest").read_text().strip()
    folder = root / tag
    if list(folder.glob("*optim_states.pt")) and any(
        "zero" in p.name for p in folder.glob("*optim_states.pt")
    ):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    else:  # ZeRO stage 0: the module states file holds the (maybe half-precision) weights
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = states["module"]
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _unflattened(sd: dict[str, torch.Tensor], model: CLIP, source: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict under the model's own names: a run trained with flat parameters
    (``train.flat_params``, the default under ZeRO 0-2) saves ``flat_<group>`` tensors and
    ``module.<buffer>`` keys, mapped back here with the slots the trainer used."""
    if not any(k.startswith("flat_") for k in sd):
        return sd
    from train.dsutil import model_for_engine

    template = model_for_engine(scalars_as_vectors(copy.deepcopy(model)), True)
    for group in template.groups:
        want, got = template.flat(group).numel(), sd[f"flat_{group}"].numel()
        if want != got:
            raise ValueError(
                f"{source}: flat parameter group {group!r} holds {got} values where this model's aligned "
                f"layout has {want}; the checkpoint was written by a webclip with another packing. Load "
                "its export (train/export) instead"
            )
    out = template.unflatten(sd)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return {k: v.reshape(shapes[k]) if k in shapes else v for k, v in out.items()}


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[CLIP, Tokenizer, Callable[[Any], torch.Tensor]]:
    """Load ``(model, tokenizer, eval_transform)`` from an export (folder or ``model.pt``), an OpenAI
    state-dict file with a ``model.json`` sidecar, or a DeepSpeed checkpoint folder of a webclip run.

    The model is in eval mode, fp32, on ``device``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such export or checkpoint")
    if p.is_dir() and (p / WEIGHTS).is_file():
        p = p / WEIGHTS
    if p.is_dir():
        sd = _ds_state_dict(p)
    else:
        obj = torch.load(p, map_location="cpu", weights_only=False)
        sd = obj.state_dict() if hasattr(obj, "state_dict") else obj  # a TorchScript archive too
        sd = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}
    sidecar = _find_sidecar(p)
    if sidecar is not None:
        spec = json.loads(sidecar.read_text())
        overrides = dict(spec.get("overrides", {}))
        if "config" in spec:
            model = CLIP(ModelConfig.from_dict(spec["config"]), init_logit_bias=spec.get("init_logit_bias"))
        else:
            model = build_model(spec["model"], **overrides)
        tok_ref = Path(spec.get("tokenizer", "tokenizer"))
        tok_path = tok_ref if tok_ref.is_absolute() else sidecar.parent / tok_ref
    else:
        model = CLIP(config_from_openai_state_dict(sd), init_logit_bias=-10.0 if "logit_bias" in sd else None)
        tok_path = p.parent / "tokenizer"
    if not (tok_path.is_dir() and (tok_path / TOKENIZER_FILE).is_file()) and not tok_path.is_file():
        raise FileNotFoundError(
            f"{p}: no tokenizer found at {tok_path}; put the run's tokenizer/ folder (tokenizer.json) or "
            "OpenAI's bpe_simple_vocab_16e6.txt.gz there and name it in model.json 'tokenizer'"
        )
    tokenizer = Tokenizer.load(tok_path)
    model.load_state_dict(_unflattened(sd, model, p))
    model = model.float().to(device).eval()
    return model, tokenizer, eval_transform(model.config.image_size)
