"""Training throughput: webclip's DeepSpeed step vs a bare PyTorch loop on the same model and batch.

    python benchmarks/train.py --model tiny-vit --batch 64 --steps 20            # CPU (DS_ACCELERATOR=cpu)
    python benchmarks/train.py --model ViT-B-16 --batch 512 --steps 30 --data both --compile   # GPU
    ... --compile --sync-debug 5 --profile prof/     # GPU: host syncs per step, graph breaks, traces

Prints one JSON line per measurement: samples/s (per process), ms/step, peak memory, and on a GPU
the model FLOPs per sample (counted with torch.utils.flop_counter on forward + backward) and the
model-FLOPs utilisation against a bf16 matmul peak measured in the same run. The DeepSpeed step is the
trainer's own (``accumulate_step``, the master-weight clamp, ``MetricsLog``) on an engine built from the
resolved config as ``train.trainer.train`` builds it. ``--compile`` adds dynamo's graph-break and graph
counts; ``--sync-debug N`` (GPU) the implicit host syncs per step torch flags; ``--count-ops N`` the
aten ops dispatched per step (host work, the same count on CPU and GPU); ``--profile DIR`` a
torch.profiler trace and op table of 3 steps per loop; ``--gemm-kernels N`` (GPU) the device kernels
behind ``aten::addmm``/``mm``/``bmm`` over N steps, by name, with calls and time: a misaligned operand
shows as an old-generation kernel family (``cutlass_75_…s1688gemm`` on Hopper instead of
``nvjet_sm90_…``). ``--channels-last`` runs convolutional models (RN50) on NHWC images and weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from train.dsutil import adamw
from train.loss import ClipLoss
from train.model import build_model, scalars_as_vectors
from train.transforms import normalize_images


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_tflops(device: torch.device) -> float:
    """bf16 8192³ matmul rate, the MFU denominator (mean of 10 after 3 warm-ups)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12


def train_flops_per_sample(model_name: str, model_kwargs: dict) -> float:
    """Forward + backward FLOPs of one sample, counted by torch's FlopCounterMode on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name, **model_kwargs)
    size, vocab = model.config.image_size, model.config.vocab_size
    images, tokens = torch.randn(2, 3, size, size), torch.randint(1, vocab - 1, (2, 77))
    tokens[:, -1] = vocab - 1
    with FlopCounterMode(display=False) as counter:
        img, txt, scale = model(images, tokens)
        ClipLoss()(img, txt, scale).backward()
    return counter.get_total_flops() / 2


def synthetic_batches(batch: int, size: int, vocab: int, device: torch.device, nhwc: bool = False):
    """One fixed batch on the device, normalised every step as the trainer normalises loader batches
    (``nhwc``: the normalised images in channels-last memory format)."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8).to(device)
    tokens = torch.randint(1, vocab - 1, (batch, 77), generator=g)
    tokens[:, 20] = vocab - 1
    tokens = tokens.to(device)
    while True:
        images = normalize_images(pixels)
        yield (images.contiguous(memory_format=torch.channels_last) if nhwc else images), tokens


def shard_batches(shard_dir: str, batch: int, size: int, workers: int, device: torch.device):
    """Batches from real WebDataset shards through webclip's loader (decode, crop, tokenize in workers)."""
    from train.data import ShardBatches, list_shards, make_loader
    from train.tokenizer import train_tokenizer

    urls = list_shards(f"{shard_dir}/*.tar")
    tok = train_tokenizer([f"a photo of a thing number {i}" for i in range(200)], vocab_size=1000)
    ds = ShardBatches(urls, tok, size, batch, shuffle=1000)
    for images, tokens, _ in make_loader(ds, workers, pin_memory=device.type == "cuda"):
        yield normalize_images(images.to(device, non_blocking=True)), tokens.to(device, non_blocking=True)


def make_shards(
    directory: str, n: int, per_shard: int = 500, src: int = 256, photos: str | None = None
) -> None:
    """JPEG shards in img2dataset layout: the JPEGs of ``photos`` cycled (``benchmarks/gpu_wheels.sh``
    prepares the COCO photos as the download stage stores them), else smooth random images."""
    import io

    import numpy as np
    from PIL import Image

    from benchmarks.train_loader import write_jpeg_shards

    if photos:
        jpgs = [p.read_bytes() for p in sorted(Path(photos).glob("*.jpg"))]
        if not jpgs:
            sys.exit(f"--photos {photos}: no .jpg files")
    else:
        rng = np.random.default_rng(0)
        jpgs = []
        for _ in range(64):
            im = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize(
                (src, src), Image.BICUBIC
            )
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            jpgs.append(buf.getvalue())
    write_jpeg_shards(Path(directory), jpgs, n, lambda k: f"a photo of a thing number {k % 200}", per_shard)


def time_loop(step, batches, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` after ``warmup`` steps."""
    for _ in range(warmup):
        step(*next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def count_host_syncs(step, batches, steps: int) -> float:
    """Implicit device->host syncs per step that ``torch.cuda.set_sync_debug_mode`` flags (``.item()``,
    ``float(t)``, ``.tolist()``, blocking copies; explicit ``torch.cuda.synchronize()`` is not flagged)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step(*next(batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def profile_steps(step, batches, steps: int, out: Path, name: str, device: torch.device) -> None:
    """torch.profiler over ``steps`` steps: ``<out>/<name>.json.gz`` (Chrome trace; gzipped, as a GPU
    trace outgrows what the device tool brings back) and ``<name>.txt`` (ops by self time, with call
    counts: what the DeepSpeed step adds over the bare loop)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(*next(batches))
        if device.type == "cuda":
            torch.cuda.synchronize()
    prof.export_chrome_trace(str(out / f"{name}.json.gz"))  # torch gzips on the suffix
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    (out / f"{name}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))


GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::linear")


def gemm_kernels(step, batches, steps: int, top: int = 6) -> dict[str, object]:
    """The device kernels launched under the GEMM aten ops over ``steps`` steps, by kernel name: calls
    per step and ms per step of each of the ``top`` (by time), and the share of GEMM time on kernels
    whose names say they were built for an architecture older than Hopper's sm90 (``cutlass_75``,
    ``s1688gemm``, ``sm80``, ``ampere``), which is where a misaligned bias sends cuBLASLt."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(*next(batches))
        torch.cuda.synchronize()
    calls: dict[str, int] = defaultdict(int)
    us: dict[str, float] = defaultdict(float)
    events = prof.events()
    for evt in events:
        if evt.name not in GEMM_OPS:
            continue
        for k in getattr(evt, "kernels", []):  # device kernels correlated with this host op
            calls[k.name] += 1
            us[k.name] += k.duration
    source = "correlated"
    if not us:  # no correlation in this torch build: every device kernel whose name says GEMM
        source = "by_name"
        for evt in events:
            name = evt.name.lower()
            if evt.device_type != torch.autograd.DeviceType.CPU and any(
                x in name for x in ("gemm", "nvjet", "cutlass", "xmma")
            ):
                calls[evt.name] += 1
                us[evt.name] += evt.device_time_total if hasattr(evt, "device_time_total") else 0.0
    total = sum(us.values()) or 1.0
    old = sum(t for n, t in us.items() if any(x in n for x in ("cutlass_75", "s1688", "sm80", "ampere")))
    ranked = sorted(us, key=us.get, reverse=True)[:top]
    return {
        "gemm_kernels_from": source,
        "gemm_ms_per_step": round(total / 1000 / steps, 1),
        "gemm_old_arch_share": round(old / total, 3),
        "gemm_kernels": [
            {
                "kernel": n[:120],
                "calls_per_step": calls[n] / steps,
                "ms_per_step": round(us[n] / 1000 / steps, 2),
            }
            for n in ranked
        ],
    }


def count_host_ops(step, batches, steps: int) -> dict[str, float]:
    """aten ops dispatched per step (views included), counted by torch.profiler on the host.

    On a GPU each is host time (dispatch, and a launch unless it is a view); DeepSpeed's ZeRO hooks
    and ``step()`` are Python loops over parameter tensors, so their counts depend on the number of
    tensors, not their size, and a CPU run counts what a GPU step would dispatch.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(*next(batches))
    names = [e.name for e in prof.events()]
    aten = sum(n.startswith("aten::") for n in names)
    return {"aten_ops_per_step": round(aten / steps), "item_per_step": names.count("aten::item") / steps}


def dynamo_counts() -> dict[str, int]:
    """Graph breaks and compiled graphs so far (0 without --compile)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
    }


def bare_step_fn(
    model_name: str, model_kwargs: dict, device: torch.device, bf16: bool, compile_: bool, nhwc: bool = False
):
    """Plain PyTorch: fp32 weights, bf16 autocast on GPU, fused AdamW, grad clipping."""
    torch.manual_seed(0)
    model = build_model(model_name, **model_kwargs).to(device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    opt = adamw(model.parameters(), lr=1e-4)  # fused where torch has the kernel, as the trainer
    fwd = torch.compile(model) if compile_ else model
    loss_fn = ClipLoss()

    def step(images, tokens):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            img, txt, scale = fwd(images, tokens)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def apply_ds_sets(cfg: dict, sets: list[str]) -> None:
    """``--ds-set a.b=VALUE`` (VALUE as JSON, else a string) into the resolved DeepSpeed config."""
    for item in sets:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = cfg
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value


def ds_step_fn(
    model_name: str,
    model_kwargs: dict,
    device: torch.device,
    batch: int,
    ds_json: str,
    compile_: bool,
    ds_sets: list[str] | None = None,
    flat_params: bool | None = None,
    nhwc: bool = False,
):
    """webclip's trainer step as ``train.trainer.train`` runs it: DeepSpeed engine from the resolved
    config (throughput timer off, no per-step engine monitor), flat parameters per ``train.flat_params``
    (``flat_params``), param groups, gathered loss, master-weight clamp, and the per-step metrics kept
    on the device and read every 10 steps (``MetricsLog``)."""
    import deepspeed

    from train.config import TrainConfig
    from train.dsutil import (
        adamw,
        clamp_logit_scale,
        engine_config,
        model_for_engine,
        param_groups,
        resolve_ds_config,
        skip_cpu_shm_comm_build,
        zero_stage_of,
    )
    from train.flat_params import FlatParameters
    from train.metrics import MetricsLog
    from train.trainer import accumulate_step

    skip_cpu_shm_comm_build()
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(
                RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
            )
        from deepspeed.accelerator import get_accelerator

        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    torch.manual_seed(0)
    model = scalars_as_vectors(build_model(model_name, **model_kwargs))
    if nhwc:  # before flattening: flat parameters' views are contiguous (NCHW) whatever the module had
        model = model.to(memory_format=torch.channels_last)
    tc = TrainConfig(batch_size=batch, model=model_name, flat_params=flat_params)
    log_dir = Path(tempfile.mkdtemp())
    cfg = resolve_ds_config(ds_json, tc, str(log_dir))
    apply_ds_sets(cfg, ds_sets or [])
    model = model_for_engine(model, tc.flat_params_for(zero_stage_of(cfg)))
    opt = adamw(param_groups(model, 0.2), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=engine_config(cfg))
    if compile_:
        engine.compile()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    loss_fn = ClipLoss(rank, world)

    class _NoMonitor:
        def write_events(self, events):
            pass

    metrics = MetricsLog(rank, world, batch, log_dir / "metrics.jsonl", _NoMonitor(), 10**9)
    state = {"step": 0}

    def step(images, tokens):
        loss, scale = accumulate_step(engine, loss_fn, [(images, tokens)])
        clamp_logit_scale(engine, 4.6052)
        state["step"] += 1
        metrics.add(state["step"], loss, scale, engine.get_lr()[0])
        if state["step"] % 10 == 0:
            metrics.flush()

    step.flat_params = isinstance(model, FlatParameters)  # for the benchmark's row
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--deepspeed-config", default="infra/deepspeed/zero2.json")
    ap.add_argument("--mode", choices=["bare", "deepspeed", "both"], default="both")
    ap.add_argument("--data", choices=["synthetic", "shards", "both"], default="synthetic")
    ap.add_argument(
        "--shards", default=None, help="folder of .tar shards (made with --make-shards if absent)"
    )
    ap.add_argument("--make-shards", type=int, default=20000, help="samples to write when --shards is empty")
    ap.add_argument(
        "--photos", default=None, help="folder of JPEGs the made shards cycle (default: synthetic)"
    )
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument(
        "--sync-debug",
        type=int,
        default=0,
        metavar="N",
        help="GPU: count flagged host syncs over N more steps",
    )
    ap.add_argument(
        "--profile", type=Path, default=None, metavar="DIR", help="torch.profiler traces of 3 steps"
    )
    ap.add_argument(
        "--count-ops",
        type=int,
        default=0,
        metavar="N",
        help="aten ops dispatched per step over N more steps (host work; CPU or GPU)",
    )
    ap.add_argument(
        "--gemm-kernels",
        type=int,
        default=0,
        metavar="N",
        help="GPU: the kernels behind addmm/mm/bmm over N more steps (names, calls, time)",
    )
    ap.add_argument("--channels-last", action="store_true", help="NHWC images and conv weights (RN50)")
    ap.add_argument(
        "--ds-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the resolved DeepSpeed config, e.g. bf16.check_grad_overflow=false, "
        "timers.throughput.enabled=true, zero_optimization.reduce_bucket_size=5e8",
    )
    ap.add_argument(
        "--flat-params",
        choices=["auto", "on", "off"],
        default="auto",
        help="train.flat_params for the DeepSpeed loop (auto: on for ZeRO 0-2)",
    )
    ap.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ModelConfig override (VALUE as JSON) for both loops, e.g. vision_width=64 text_width=64: "
        "a ViT-B/16's 302 parameter tensors at a width where the step is host work (DeepSpeed's "
        "per-tensor overhead measured on CPU)",
    )
    args = ap.parse_args()

    model_kwargs: dict = {"vocab_size": 49408}
    for item in args.model_set:
        key, _, raw = item.partition("=")
        model_kwargs[key] = json.loads(raw)
    vocab = model_kwargs["vocab_size"]
    flat = {"auto": None, "on": True, "off": False}[args.flat_params]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    size = build_model(args.model, **model_kwargs).config.image_size
    flops = train_flops_per_sample(args.model, model_kwargs)
    peak = matmul_peak_tflops(device) if gpu else None
    base = {
        "model": args.model,
        "batch": args.batch,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "threads": torch.get_num_threads(),
        "train_gflops_per_sample": round(flops / 1e9, 2),
        "bf16_matmul_peak_tflops": round(peak, 1) if peak else None,
        "compile": args.compile,
        "deepspeed_config": Path(args.deepspeed_config).name,
        "ds_set": args.ds_set,
        "model_set": args.model_set,
        "channels_last": args.channels_last,
    }
    print(json.dumps(base), flush=True)

    sources = ["synthetic", "shards"] if args.data == "both" else [args.data]
    modes = ["bare", "deepspeed"] if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        if args.compile:  # dynamo's counters are per process: count each mode's graphs apart
            from torch._dynamo.utils import counters

            counters.clear()
        if mode == "bare":
            step = bare_step_fn(args.model, model_kwargs, device, gpu, args.compile, args.channels_last)
        else:
            step = ds_step_fn(
                args.model,
                model_kwargs,
                device,
                args.batch,
                args.deepspeed_config,
                args.compile,
                args.ds_set,
                flat,
                args.channels_last,
            )
        for src in sources:
            if src == "synthetic":
                batches = synthetic_batches(args.batch, size, vocab, device, args.channels_last)
            else:
                shard_dir = args.shards or tempfile.mkdtemp(prefix="shards-")
                if not list(Path(shard_dir).glob("*.tar")):
                    make_shards(shard_dir, args.make_shards, photos=args.photos)
                batches = shard_batches(shard_dir, args.batch, size, args.workers, device)
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            sec = time_loop(step, batches, args.steps, args.warmup, device)
            sps = args.batch / sec
            row = {
                "mode": mode,
                "data": src,
                "flat_params": getattr(step, "flat_params", None),
                "ms_per_step": round(sec * 1000, 1),
                "samples_per_s": round(sps, 1),
                "peak_rss_mb": round(peak_rss_mb()),
            }
            if gpu:
                row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                row["mfu"] = round(sps * flops / (peak * 1e12), 3)
                if args.sync_debug:
                    row["host_syncs_per_step"] = count_host_syncs(step, batches, args.sync_debug)
            if args.count_ops:
                row.update(count_host_ops(step, batches, args.count_ops))
            if gpu and args.gemm_kernels:
                row.update(gemm_kernels(step, batches, args.gemm_kernels))
            if args.compile:
                row.update(dynamo_counts())
            if args.profile is not None:
                profile_steps(step, batches, 3, args.profile, f"{mode}-{src}", device)
            results.append(row)
            print(json.dumps({**base, **row}), flush=True)
        del step
        if gpu:
            torch.cuda.empty_cache()
    by = {(r["mode"], r["data"]): r for r in results}
    if ("bare", "synthetic") in by and ("deepspeed", "synthetic") in by:
        over = by[("deepspeed", "synthetic")]["ms_per_step"] / by[("bare", "synthetic")]["ms_per_step"] - 1
        print(json.dumps({"deepspeed_overhead_vs_bare": round(over, 3)}), flush=True)
    if ("deepspeed", "shards") in by and ("deepspeed", "synthetic") in by:
        ratio = by[("deepspeed", "shards")]["samples_per_s"] / by[("deepspeed", "synthetic")]["samples_per_s"]
        print(json.dumps({"shards_vs_synthetic": round(ratio, 3)}), flush=True)


if __name__ == "__main__":
    main()
