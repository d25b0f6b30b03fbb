"""Host-sync points per optimizer step of the real trainer, counted on CPU.

On a GPU each of these makes the host wait for the device, draining the queue of launched kernels:
``get_accelerator().synchronize()`` (DeepSpeed's timers), ``Tensor.item()``, ``Tensor.tolist()``,
``float(t)``/``int(t)``/``bool(t)`` of a tensor. On the CPU accelerator they cost nothing, but the calls
are the same Python code paths, so counting them here says how many syncs a GPU step would make
(where DeepSpeed's CPU and CUDA paths agree). Runs ``train/main.py``'s ``main`` in-process for
``--steps`` and for twice as many, and reports the difference per step (setup and export cancel out).

    DS_ACCELERATOR=cpu python benchmarks/train_host_syncs.py --deepspeed-config infra/deepspeed/zero2_fp32.json
    DS_ACCELERATOR=cpu python benchmarks/train_host_syncs.py --repo /path/to/other/checkout   # compare
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def count_calls(counts: collections.Counter) -> list:
    """Wrap the sync points so each call increments ``counts[name]``; returns the undo list."""
    import torch
    from deepspeed.accelerator import get_accelerator

    undo = []

    def wrap(owner, attr, name):
        orig = getattr(owner, attr)

        def wrapper(*a, **k):
            counts[name] += 1
            return orig(*a, **k)

        setattr(owner, attr, wrapper)
        undo.append((owner, attr, orig))

    accel = get_accelerator()
    wrap(accel, "synchronize", "accelerator.synchronize")
    for attr in ("item", "tolist", "__float__", "__int__", "__bool__"):
        wrap(torch.Tensor, attr, f"Tensor.{attr}")
    return undo


def run(repo: Path, shards: list[str], args: argparse.Namespace, steps: int) -> collections.Counter:
    sys.path.insert(0, str(repo))
    from train.main import main

    counts: collections.Counter = collections.Counter()
    run_dir = tempfile.mkdtemp(prefix="syncs-")
    argv = [
        "--run",
        run_dir,
        "--deepspeed_config",
        args.deepspeed_config,
        "--set",
        f"train.data={json.dumps(shards)}",
        "--set",
        f"train.model={args.model}",
        "--set",
        f"train.batch_size={args.batch}",
        "--set",
        f"train.steps={steps}",
        "--set",
        f"train.log_every={args.log_every}",
        "--set",
        "train.checkpoint_every=0",
        "--set",
        "train.workers=0",
    ]
    undo = count_calls(counts)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            assert main(argv) == 0
    finally:
        for owner, attr, orig in undo:
            setattr(owner, attr, orig)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--deepspeed-config", default="infra/deepspeed/zero2_fp32.json")
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--log-every", type=int, default=10)
    args = ap.parse_args()
    args.deepspeed_config = str((args.repo / args.deepspeed_config).resolve())

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.train.conftest import write_shards

    shards = write_shards(Path(tempfile.mkdtemp(prefix="syncs-shards-")), corrupt=0)
    short = run(args.repo, shards, args, args.steps)
    long = run(args.repo, shards, args, 2 * args.steps)
    per_step = {k: round((long[k] - short[k]) / args.steps, 2) for k in sorted(set(long) | set(short))}
    print(
        json.dumps(
            {
                "repo": str(args.repo),
                "deepspeed_config": Path(args.deepspeed_config).name,
                "model": args.model,
                "log_every": args.log_every,
                "per_step": per_step,
                "total_per_step": round(sum(per_step.values()), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
