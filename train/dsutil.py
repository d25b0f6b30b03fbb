"""DeepSpeed helpers: the resolved engine config, AdamW groups, schedule, master-weight logit-scale clamp."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from train.config import TrainConfig, read_ds_json
from train.flat_params import FlatParameters

NO_DECAY_NAMES = ("logit_scale", "logit_bias")


def resolve_ds_config(path: str, tc: TrainConfig, log_dir: str) -> dict[str, Any]:
    """Read the DeepSpeed JSON and fill in what the webclip config owns (batch, accumulation, clipping,
    precision and stage overrides, monitors). The JSON owns the rest (ZeRO tuning, bucket sizes)."""
    cfg = read_ds_json(path)
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch × accumulation × world
    cfg["train_micro_batch_size_per_gpu"] = tc.batch_size
    cfg["gradient_accumulation_steps"] = tc.grad_accum
    cfg["gradient_clipping"] = tc.grad_clip
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 10**9)  # webclip prints its own progress
    cfg.setdefault("wall_clock_breakdown", False)
    # DeepSpeed's throughput timer is on by default and synchronizes the device at the start of every
    # forward and in every step() (two host syncs per micro-step, draining the GPU queue) to print a
    # samples/s webclip already measures itself. Off unless the JSON asks for it.
    cfg.setdefault("timers", {"throughput": {"enabled": False, "synchronized": False}})
    cfg.setdefault("zero_optimization", {"stage": 0})["stage"] = tc.zero_stage_in(cfg)
    if tc.precision != "auto":
        for key in ("bf16", "fp16"):
            cfg[key] = {**cfg.get(key, {}), "enabled": tc.precision == key}
    cfg["tensorboard"] = {"enabled": True, "output_path": log_dir, "job_name": "tensorboard"}
    cfg["csv_monitor"] = {"enabled": True, "output_path": log_dir, "job_name": "csv"}
    return cfg


MONITOR_KEYS = ("tensorboard", "wandb", "csv_monitor", "comet")


def engine_config(ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """``ds_cfg`` without its monitor sections, for ``deepspeed.initialize``.

    An engine with a monitor writes ``Train/Samples/lr`` to every monitor at every step (a CSV file
    opened and appended per step); webclip writes its own events through a separate
    :func:`make_monitor` every ``train.log_every`` steps instead.
    """
    return {k: v for k, v in ds_cfg.items() if k not in MONITOR_KEYS}


def make_monitor(ds_cfg: dict[str, Any]) -> Any:
    """DeepSpeed's ``MonitorMaster`` (TensorBoard, CSV, W&B, Comet) for the monitor sections of ``ds_cfg``;
    writes on rank 0 only. Needs ``deepspeed.comm`` initialised."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    return MonitorMaster(get_monitor_config(ds_cfg))


def skip_cpu_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory all-reduce op when it initialises comm.

    On the CPU accelerator every ``deepspeed.init_distributed`` builds ``deepspeed_shm_comm`` (C++ via
    ninja, 1 to 4.5 minutes on 2 cores; cached in ``~/.cache/torch_extensions`` but rebuilt whenever
    another environment's build command differs). The op serves only ``inference_all_reduce``; training
    never calls it. ``deepspeed.ops.__compatible_ops__`` (probed on first access, edits persist) is the
    build's only gate: marking the op incompatible makes the comm backend use plain torch.distributed.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return  # accelerators other than CPU have no shm op builder
    import deepspeed.ops

    ops = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(ops, dict):
        ops["deepspeed_shm_comm"] = False


def precision_of(ds_cfg: dict[str, Any]) -> str:
    if ds_cfg.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_cfg.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def _alignment_rank(numel: int) -> int:
    """How many times 2 divides ``numel``, capped at 7 (128 elements: 256 bytes in bf16)."""
    return min((numel & -numel).bit_length() - 1, 7) if numel else 7


def param_group_names(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``[("decay", names), ("no_decay", names)]``: decay on weight matrices/kernels only; none on gains,
    biases, embeddings' 1-d vectors, the logit scale or bias (CLIP / open_clip practice).

    Within a group, parameters whose sizes are multiples of larger powers of two come first (stable):
    DeepSpeed's ZeRO-1/2 and bf16 optimizers pack a group's parameters back to back into one buffer
    and point each parameter into it, so a 1-element ``logit_scale`` first would put every bias after
    it 2 bytes off a 16-byte boundary (and cuBLASLt's GEMM-with-bias onto slow kernels). In this order
    each parameter starts at a multiple of its own size's power of two (up to 128 elements), which is
    every parameter of the OpenAI architectures, the scalars last."""
    decay, no_decay = [], []
    numel: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        numel[name] = p.numel()
        if p.ndim < 2 or "bn" in name or "ln" in name or name.endswith("bias") or name in NO_DECAY_NAMES:
            no_decay.append(name)
        else:
            decay.append(name)
    groups = [("decay", decay), ("no_decay", no_decay)]
    return [(g, sorted(names, key=lambda n: -_alignment_rank(numel[n]))) for g, names in groups]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups per :func:`param_group_names`; a :class:`FlatParameters` model's groups are its
    flat tensors, built from the same names."""
    decays = {"decay": weight_decay, "no_decay": 0.0}
    if isinstance(model, FlatParameters):
        return [{"params": [model.flat(g)], "weight_decay": decays[g], "name": g} for g in model.groups]
    params = dict(model.named_parameters())
    return [
        {"params": [params[n] for n in names], "weight_decay": decays[g], "name": g}
        for g, names in param_group_names(model)
    ]


def zero_stage_of(ds_cfg: dict[str, Any]) -> int:
    """The ZeRO stage of a resolved DeepSpeed config."""
    return int(ds_cfg.get("zero_optimization", {}).get("stage", 0))


def model_for_engine(model: nn.Module, flat_params: bool) -> nn.Module:
    """What the engine gets: ``model`` with one flat parameter per AdamW group (:mod:`train.flat_params`)
    when ``flat_params`` (``TrainConfig.flat_params_for``), else ``model`` itself."""
    if not flat_params:
        return model
    return FlatParameters(model, param_group_names(model))


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused kernel where torch has one for the parameters' device (CUDA,
    and CPU since torch 2.4; DeepSpeed moves the flat partitions it steps to the engine's device), else
    the default implementation. Under ZeRO the optimizer steps one flat
    fp32 partition per group: unfused, every step allocates temporaries the size of the model (1.6 s
    vs 0.16 s per step for a 150M-parameter partition on one CPU core)."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # fused=True requires ... supported devices
        return torch.optim.AdamW(params, **kwargs)


def cosine_with_warmup(step: int, total: int, warmup: int, base_lr: float, min_lr: float) -> float:
    """Multiplier of ``base_lr`` at optimizer step ``step`` (0-based): linear warmup, cosine to ``min_lr``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr / base_lr


def apply_lr_schedule(optimizer: Any, scheduler: Any, base_lr: float) -> float:
    """Put the configured schedule (``base_lr``) back after a checkpoint load; returns the checkpoint's.

    A ``LambdaLR`` checkpoint restores its base learning rates, so a resume with a lowered
    ``train.lr`` (the usual answer to a diverged run) would go on at the old one, silently. Here the
    configuration decides, as in open_clip, whose schedule is a function of its arguments: each
    group's rate becomes ``base_lr`` times this config's multiplier at the restored step. With an
    unchanged config this is exactly the restored rate.
    """
    old = float(scheduler.base_lrs[0])
    scheduler.base_lrs = [base_lr] * len(optimizer.param_groups)
    for group, multiplier in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * multiplier(scheduler.last_epoch)
    # what get_last_lr() reports until the next step (the metrics log it); torch keeps it here
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return old


def _logit_scale_location(module: nn.Module) -> tuple[nn.Parameter, int, int]:
    """``(parameter, first element, elements)`` of ``logit_scale``: its own parameter, or its range in
    a flat parameter."""
    if isinstance(module, FlatParameters):
        slot = module.slot("logit_scale")
        return module.flat(slot.group), slot.offset, slot.numel
    p = module.logit_scale
    return p, 0, p.numel()


def clamp_logit_scale(engine: Any, max_log_scale: float) -> None:
    """Clamp ``logit_scale`` to ``max_log_scale`` on the master (fp32) weights *and* the module's copy.

    Clamping only the module's half-precision copy (EVA-CLIP) is undone at the next step, when the
    optimizer copies its unclamped master back. Every rank must call it (ZeRO-3 gathers); under
    ZeRO 0-2 it is local, asynchronous device work with no collective and no host sync.
    """
    import deepspeed

    p, start, n = _logit_scale_location(engine.module)
    zero3 = hasattr(p, "ds_id")
    if zero3:
        # clamping is elementwise, so each rank clamps its own fp32 partition; the "full" setter fails
        # on ranks whose partition of a 1-element parameter is only padding (world size > numel)
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        local = safe_get_local_fp32_param(p)
        if local is not None and local.numel() > 0:
            safe_set_local_fp32_param(p, local.clamp(max=max_log_scale))
    elif getattr(p, "_hp_mapping", None) is not None:
        # ZeRO 1/2 and the bf16 optimizer keep fp32 partitions: each rank clamps, in place, the part of
        # the range its fragment of the parameter holds (the mapping is None on ranks holding none).
        # safe_get/set_full_fp32_param would all-reduce the whole parameter every step to the same end.
        frag = p._hp_mapping
        lo = max(start, frag.lp_fragment_address.start)
        hi = min(start + n, frag.lp_fragment_address.start + frag.lp_fragment_address.numel)
        if lo < hi:
            base = frag.lp_fragment_address.start
            frag.get_hp_fragment().data[lo - base : hi - base].clamp_(max=max_log_scale)
    opt = getattr(engine, "optimizer", None)
    # fp16 without ZeRO: FP16_Optimizer keeps flat fp32 copies of its fp16 groups
    flat = getattr(opt, "fp32_groups_flat", None)
    if flat is not None and hasattr(opt, "fp16_groups") and not zero3:
        for group, master in zip(opt.fp16_groups, flat, strict=False):
            offset = 0
            for q in group:
                if q is p:
                    master.data[offset + start : offset + start + n].clamp_(max=max_log_scale)
                offset += q.numel()
    if zero3:
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            p.data.clamp_(max=max_log_scale)
    else:
        with torch.no_grad():
            p.data.view(-1)[start : start + n].clamp_(max=max_log_scale)


def full_fp32_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The model's full fp32 state dict from the master weights, under the model's own (OpenAI's) names
    and key order (collective; every rank gets it)."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    sd: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        hp = safe_get_full_fp32_param(p) if (hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")) else None
        if hp is None:
            if hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p]):
                    hp = p.data.detach().float().clone()
            else:
                hp = p.detach().float().clone()
        sd[name] = hp.detach().cpu().float().clone()
    for name, b in module.named_buffers():
        b = b.detach().cpu().clone()
        sd[name] = b.float() if b.is_floating_point() else b
    if isinstance(module, FlatParameters):
        sd = {k: v.clone() for k, v in module.unflatten(sd).items()}
    else:
        order = list(module.state_dict(keep_vars=True).keys())  # the module's (= OpenAI's) key order
        sd = {k: sd[k] for k in order if k in sd}
    for name in NO_DECAY_NAMES:  # OpenAI keeps the scale 0-dim; DeepSpeed needs [1]
        if name in sd:
            sd[name] = sd[name].reshape(())
    return sd
