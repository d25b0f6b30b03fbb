"""The DeepSpeed training loop: one process per GPU (or CPU rank), gathered contrastive loss.

Every rank runs :func:`train`. Rank 0 prints progress, writes ``<run>/train/metrics.jsonl`` and the
DeepSpeed monitor events (TensorBoard + CSV under ``<run>/train/logs``), and the final export.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import WebclipConfig
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from train.checkpoints import check_resume, latest_tag, prune, write_layout
from train.config import TrainConfig
from train.data import DataPosition, ShardBatches, list_shards, make_loader
from train.dsutil import (
    adamw,
    apply_lr_schedule,
    clamp_logit_scale,
    cosine_with_warmup,
    engine_config,
    full_fp32_state_dict,
    make_monitor,
    model_for_engine,
    param_groups,
    precision_of,
    resolve_ds_config,
    skip_cpu_shm_comm_build,
    zero_stage_of,
)
from train.export import write_export
from train.flat_params import unwrap
from train.loss import make_loss
from train.metrics import MetricsLog, TrainingInterrupted, log0, rewind_logs
from train.model import build_model, scalars_as_vectors
from train.tokenizer import Tokenizer, train_tokenizer
from train.transforms import normalize_images


def shard_urls(cfg: WebclipConfig, run: RunDir) -> list[str]:
    """The training shards: ``train.data`` or ``<run>/clean/*.tar``."""
    urls = (
        list_shards(cfg.train.data) if cfg.train.data else [run.full_url(r) for r in run.glob("clean/*.tar")]
    )
    if not urls:
        where = cfg.train.data or run.full_url("clean/*.tar")
        raise ConfigError(f"train: no shards at {where!r}; run the dedup stage first or set train.data")
    return urls


def captions_from_shards(urls: list[str], limit: int) -> list[str]:
    """Up to ``limit`` captions (``.txt`` members) from ``urls``, for training the tokenizer."""
    import tarfile

    from train.data import open_url

    texts: list[str] = []
    for url in urls:
        try:
            with open_url(url) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
                for member in tar:
                    if member.isreg() and member.name.endswith(".txt"):
                        f = tar.extractfile(member)
                        if f is not None:
                            texts.append(f.read().decode("utf-8", "replace"))
                            if len(texts) >= limit:
                                return texts
        except (OSError, tarfile.TarError):
            continue  # an unreadable shard is counted by the loader; the tokenizer uses the rest
    return texts


def get_tokenizer(tc: TrainConfig, urls: list[str], out_dir: Path, rank: int) -> Tokenizer:
    """The run's tokenizer: ``train.tokenizer`` if given, the saved one on resume, else trained by rank 0."""
    saved = out_dir / "tokenizer"
    if tc.tokenizer:
        tok = Tokenizer.load(tc.tokenizer)
        if rank == 0:
            tok.save(saved)
        return tok
    if rank == 0 and not (saved / "tokenizer.json").is_file():
        texts = captions_from_shards(urls, tc.tokenizer_max_texts)
        log0(rank, f"training a {tc.vocab_size}-id BPE tokenizer on {len(texts):,} captions")
        train_tokenizer(texts, vocab_size=tc.vocab_size).save(saved)
    if dist.is_initialized():
        dist.barrier()
    return Tokenizer.load(saved)


def loader_workers(tc: TrainConfig) -> int:
    """``train.workers``, or when None the cores this process may use divided among the node's training
    processes, minus one for the training loop itself: at least 1, at most 16."""
    if tc.workers is not None:
        return tc.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    return max(1, min(16, cores // max(1, local) - 1))


def compile_enabled(tc: TrainConfig, device: torch.device, zero_stage: int) -> bool:
    """``train.compile``, or when None: on for CUDA with ZeRO 0-2 (what the bare-loop reference runs
    compiled), off on CPU (inductor's CPU compile costs minutes) and under ZeRO-3 (parameter hooks)."""
    if tc.compile is not None:
        return tc.compile
    return device.type == "cuda" and zero_stage < 3


def _eval_hook(rank: int) -> Any:
    """``eval.during_training.zero_shot_metrics`` or None when the eval package lacks it."""
    try:
        from eval.during_training import zero_shot_metrics
    except ModuleNotFoundError as exc:
        if exc.name not in ("eval", "eval.during_training"):
            raise  # a real import error inside the module must not be hidden
        log0(rank, "eval.during_training is not available; zero-shot evaluation during training is off")
        return None
    return zero_shot_metrics


def train(cfg: WebclipConfig, ds_config_path: str | None = None) -> dict[str, Any]:
    """Train per ``cfg.train`` on this process's rank; returns a summary (rank 0's view)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    tc = cfg.train
    accel = get_accelerator()
    skip_cpu_shm_comm_build()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (
        torch.device(accel.device_name(local_rank)) if accel.device_name() != "cpu" else torch.device("cpu")
    )
    if device.type != "cpu":
        accel.set_device(local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            # the process group bound to this rank's device: NCCL otherwise guesses it from the rank
            # ("Guessing device ID based on global rank... can cause a hang") and creates
            # communicators lazily; DeepSpeed then adopts the group as it is
            dist.init_process_group(accel.communication_backend_name(), device_id=device)
        deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    run = RunDir(cfg.run)
    if not run.is_local:
        raise ConfigError(
            f"run {cfg.run!r}: training writes DeepSpeed checkpoints and needs a local (or "
            "mounted shared) run directory; shards may still come from any URL via train.data"
        )
    out_dir = run.local_path(RunDir.TRAIN)
    ckpt_dir = out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    # the DeepSpeed JSON and what depends on it are checked before any work
    ds_cfg = resolve_ds_config(ds_config_path or tc.deepspeed_config, tc, str(out_dir / "logs"))
    zero_stage = zero_stage_of(ds_cfg)
    flat = tc.flat_params_for(zero_stage)
    check_resume(ckpt_dir, flat=flat, resume=tc.resume, world=world, steps=tc.steps)
    urls = shard_urls(cfg, run)
    tokenizer = get_tokenizer(tc, urls, out_dir, rank)
    overrides: dict[str, Any] = {"vocab_size": tokenizer.vocab_size, **tc.model_overrides}
    if tc.loss == "siglip":
        overrides.setdefault("init_logit_scale", math.log(10.0))
        overrides.setdefault("init_logit_bias", -10.0)
    model = scalars_as_vectors(build_model(tc.model, **overrides))
    if tc.grad_checkpointing:
        model.set_grad_checkpointing(True)
    image_size = model.config.image_size
    model = model_for_engine(model, flat)
    optimizer = adamw(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, tc.steps, tc.warmup, tc.lr, tc.min_lr)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=engine_config(ds_cfg)
    )
    monitor = make_monitor(ds_cfg)
    loss_fn = make_loss(tc.loss, rank, world)
    compiled = compile_enabled(tc, device, zero_stage)
    if compiled:
        engine.compile()  # torch.compile of the module inside the engine (keeps ZeRO hooks working)
    workers = loader_workers(tc)
    log0(
        rank,
        f"{tc.model} on {world} x {device.type}, ZeRO-{zero_stage}, {precision_of(ds_cfg)}, "
        f"batch {tc.batch_size} x accum {tc.grad_accum} x {world} = {tc.batch_size * tc.grad_accum * world}, "
        f"{'compiled' if compiled else 'eager'}, {'flat' if flat else 'per-tensor'} parameters, "
        f"{workers} loader workers",
    )
    if rank == 0:
        (out_dir / "summary.json").unlink(missing_ok=True)  # written again when this run completes
        (out_dir / "ds_config.json").write_text(json.dumps(ds_cfg, indent=2) + "\n")
        spec = {"model": tc.model, "overrides": overrides, "config": model.config.to_dict()}
        if tc.loss == "siglip":
            spec["init_logit_bias"] = overrides["init_logit_bias"]
        (out_dir / "model.json").write_text(json.dumps({**spec, "tokenizer": "tokenizer"}, indent=2) + "\n")

    # ---- resume
    step, data_state = 0, None
    if tc.resume and latest_tag(ckpt_dir):
        _, client = engine.load_checkpoint(str(ckpt_dir))
        client = client or {}
        step = int(client.get("step", 0))
        saved_lr = apply_lr_schedule(engine.optimizer, engine.lr_scheduler, tc.lr)
        if saved_lr != tc.lr:
            log0(
                rank,
                f"train.lr is {tc.lr:g}, the checkpoint's {saved_lr:g}: the schedule goes on at the new rate",
            )
        states = client.get("data", [])
        if len(states) == world:
            data_state = states[rank]
        else:
            log0(rank, f"checkpoint has data positions for {len(states)} ranks, now {world}: data restarts")
        log0(rank, f"resumed from {ckpt_dir / str(latest_tag(ckpt_dir))} at step {step} of {tc.steps}")
    position = DataPosition(workers, data_state)
    dataset = ShardBatches(
        urls,
        tokenizer,
        image_size,
        tc.batch_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        shuffle=tc.shuffle_buffer,
        resampled=tc.resampled,
        start=position.workers,
        worker_offset=position.worker_offset,
    )
    batches = iter(make_loader(dataset, workers, pin_memory=device.type == "cuda"))

    eval_hook = _eval_hook(rank) if (tc.eval_every and cfg.evalsets) else None
    samples_per_step = tc.batch_size * tc.grad_accum * world
    if rank == 0:  # the logs read as one run: what an interrupted attempt logged after `step` goes
        dropped = rewind_logs(out_dir / "metrics.jsonl", monitor, step)
        if dropped:
            log0(rank, f"dropped {dropped} log rows of steps after {step}, which this run redoes")
    metrics = MetricsLog(rank, world, samples_per_step, out_dir / "metrics.jsonl", monitor, tc.steps)

    def save(tag_step: int) -> None:
        metrics.flush(dict(position.counts))
        states: list[Any] = [None] * world
        dist.all_gather_object(states, position.state())
        engine.save_checkpoint(
            str(ckpt_dir), tag=f"step{tag_step}", client_state={"step": tag_step, "data": states}
        )
        if rank == 0:
            write_layout(ckpt_dir, flat)
            prune(ckpt_dir, tc.keep_checkpoints)

    try:
        while step < tc.steps:
            engine.train()
            micro = [next(batches) for _ in range(tc.grad_accum)]
            for *_, meta in micro:
                position.update(meta)
            # uint8 crops cross to the device; CLIP's normalisation runs there (a quarter of the bytes)
            micro = [
                (normalize_images(i.to(device, non_blocking=True)), t.to(device, non_blocking=True))
                for i, t, _ in micro
            ]
            loss, scale = accumulate_step(engine, loss_fn, micro)
            step += 1
            clamp_logit_scale(engine, math.log(tc.max_logit_scale))
            metrics.add(step, loss, scale, engine.get_lr()[0])
            if step % tc.log_every == 0 or step == tc.steps:
                metrics.flush(dict(position.counts), console=True)

            if eval_hook is not None and step % tc.eval_every == 0:
                metrics.flush(dict(position.counts))
                run_eval(
                    engine, monitor, eval_hook, tokenizer, image_size, cfg, device, step, rank, zero_stage
                )
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.steps:
                save(step)
            if tc.stop_after is not None and step >= tc.stop_after:
                metrics.flush(dict(position.counts))
                metrics.close()
                log0(rank, f"stopping after step {step} (train.stop_after)")
                return {"step": step, "loss": metrics.last_loss, "stopped": True}
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a launcher (train/main.py turns it into this)
        raise TrainingInterrupted(step, latest_tag(ckpt_dir)) from None

    save(step)
    sd = full_fp32_state_dict(engine)
    counts = _sum_counts(position.counts, world)
    last_loss = metrics.last_loss
    metrics.close()
    if rank == 0:
        spec = json.loads((out_dir / "model.json").read_text())
        write_export(out_dir / "export", sd, spec, tokenizer)
        (out_dir / "data_stats.json").write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
        summary = {
            "steps": step,
            "loss": last_loss,
            "ranks": world,
            "seconds": round(time.monotonic() - started, 1),
        }
        (out_dir / "summary.json").write_text(
            json.dumps(summary, indent=2) + "\n"
        )  # what `webclip status` reads
        log0(rank, f"done: {step} steps, loss {last_loss:.4f}; export in {out_dir / 'export'}")
    dist.barrier()
    return {"step": step, "loss": last_loss, "data": counts}


def accumulate_step(
    engine: Any, loss_fn: Any, micro: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``len(micro)`` micro-batches whose gradient equals one big batch's.

    A contrastive loss couples every sample with every other, so summing per-micro-batch losses
    would train on smaller batches (fewer negatives). As open_clip's ``accum_freq``: embed all
    micro-batches without gradients, then for each micro-batch re-embed it with gradients and
    backpropagate the full-batch loss in which only its features are live. Summing those backward
    passes gives exactly the big batch's gradient, for one extra forward per sample.
    """
    k = len(micro)
    if k == 1:
        images, tokens = micro[0]
        img_f, txt_f, scale, bias = engine(images, tokens, return_bias=True)
        loss = loss_fn(img_f, txt_f, scale, bias)
        engine.backward(loss)
        engine.step()
        return loss.detach(), scale.detach()
    with torch.no_grad():
        cached = [engine(i, t, return_bias=True)[:2] for i, t in micro]
    loss_out = scale = None
    for j, (images, tokens) in enumerate(micro):
        img_f, txt_f, scale, bias = engine(images, tokens, return_bias=True)
        all_img = torch.cat([img_f if i == j else c[0] for i, c in enumerate(cached)])
        all_txt = torch.cat([txt_f if i == j else c[1] for i, c in enumerate(cached)])
        if j > 0:  # the temperature's full-batch gradient is complete after the first micro-step
            scale = scale.detach()
            bias = bias.detach() if bias is not None else None
        loss = loss_fn(all_img, all_txt, scale, bias)
        # each micro-step's backward is one term of the full-batch gradient: no 1/k scaling
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
        if loss_out is None:
            loss_out = loss.detach()
    assert loss_out is not None and scale is not None
    return loss_out, scale.detach()


def _sum_counts(counts: dict[str, int], world: int) -> dict[str, int]:
    if world == 1:
        return dict(counts)
    all_counts: list[Any] = [None] * world
    dist.all_gather_object(all_counts, dict(counts))
    total: dict[str, int] = {}
    for c in all_counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def run_eval(
    engine: Any,
    monitor: Any,
    hook: Any,
    tokenizer: Tokenizer,
    image_size: int,
    cfg: WebclipConfig,
    device: torch.device,
    step: int,
    rank: int,
    zero_stage: int,
) -> None:
    """Zero-shot metrics on rank 0 (the others wait); ZeRO-3 weights are gathered for it."""
    import contextlib

    import deepspeed

    from train.transforms import eval_transform

    module = unwrap(engine.module)
    gather = (
        deepspeed.zero.GatheredParameters(list(module.parameters()))
        if zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank == 0:
            module.eval()
            with torch.no_grad():
                metrics = hook(
                    module, tokenizer, eval_transform(image_size), cfg.evalsets, device, cfg.train.eval_limit
                )
            module.train()
            monitor.write_events([(f"eval/{k}", float(v), step) for k, v in metrics.items()])
            log0(rank, f"step {step} zero-shot: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        dist.barrier()
