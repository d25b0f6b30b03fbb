"""Builds a DeepSpeed engine per (ZeRO stage, precision, parameter layout) in this one process (gloo,
world size 1), runs a forward and prints one JSON line per engine naming every parameter tensor the
model computed with whose address is misaligned.

Run by tests/train/test_alignment.py as ``python alignment_probe.py MODEL``. The addresses are read
by forward pre-hooks on every module, registered after DeepSpeed's own (so ZeRO-3's gathered
parameters are seen while they exist): the parameters a module owns directly and, for flat
parameters, the views set in its ``__dict__``.

Flat parameters' views must start a multiple of 256 bytes (the CUDA caching allocator's granularity)
from the start of their storage. Per-tensor parameters (packed back to back by DeepSpeed's ZeRO-1/2
and bf16 optimizers, gathered into one buffer by ZeRO-3) must start at a multiple of the largest power
of two of bytes their size allows, up to 256: a 768-element bf16 bias at 256 bytes, a 64-element one
at 128, a 1-element scale anywhere. Every address is also checked to be a multiple of 16 bytes where
the size allows it (on CPU the storage itself is only 64-byte aligned, so not 256).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.dsutil import adamw, engine_config, model_for_engine, param_groups
from train.flat_params import FlatParameters
from train.model import build_model, scalars_as_vectors

MAX_ALIGN = 256
ADDRESS_ALIGN = 16


def required_alignment(t: torch.Tensor, flat: bool) -> int:
    """Bytes the start of ``t`` must be a multiple of (module docstring)."""
    if flat:
        return MAX_ALIGN
    n = t.numel()
    return min(MAX_ALIGN, t.element_size() * (n & -n))


def ds_config(stage: int, precision: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**9,
    }


def tensors_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``module`` computes with directly: its own parameters, or flat parameters' views."""
    out = {n: p for n, p in module.named_parameters(recurse=False)}
    for key, value in vars(module).items():
        if isinstance(value, torch.Tensor) and not key.startswith("_"):
            out[key] = value
    return out


def misaligned_in_forward(engine, batch, flat: bool) -> list[str]:
    bad: set[str] = set()
    seen: set[str] = set()
    names = {m: n for n, m in engine.module.named_modules()}

    def hook(module, _args):
        for leaf, t in tensors_of(module).items():
            if t.numel() == 0:
                continue  # a ZeRO-3 parameter not gathered (not used by this module's own forward)
            name = f"{names[module]}.{leaf}"
            seen.add(name)
            offset = t.data_ptr() - t.untyped_storage().data_ptr()
            need = required_alignment(t, flat)
            if offset % need or t.data_ptr() % min(need, ADDRESS_ALIGN):
                bad.add(f"{name}@{offset}")

    handles = [m.register_forward_pre_hook(hook) for m in engine.module.modules()]
    with torch.no_grad():
        engine(*batch)
    for h in handles:
        h.remove()
    if not seen:
        raise RuntimeError("no parameter seen in the forward")
    return sorted(bad)


def main(model_name: str) -> None:
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    deepspeed.init_distributed(dist_backend="gloo")
    for stage in (0, 1, 2, 3):
        for precision in ("bf16", "fp32"):
            for flat in (True, False):
                if flat and stage == 3:
                    continue  # refused before any work (train.flat_params under ZeRO-3)
                torch.manual_seed(0)
                model = model_for_engine(scalars_as_vectors(build_model(model_name, vocab_size=300)), flat)
                assert isinstance(model, FlatParameters) == flat
                optimizer = adamw(param_groups(model, 0.1), lr=1e-3)
                engine, *_ = deepspeed.initialize(
                    model=model, optimizer=optimizer, config=engine_config(ds_config(stage, precision))
                )
                size = model.config.image_size
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                images = torch.randn(2, 3, size, size, dtype=dtype)
                tokens = torch.randint(1, 299, (2, 77))
                bad = misaligned_in_forward(engine, (images, tokens), flat)
                print(json.dumps({"stage": stage, "precision": precision, "flat": flat, "misaligned": bad}))
                sys.stdout.flush()
                engine.destroy()


if __name__ == "__main__":
    main(sys.argv[1])
