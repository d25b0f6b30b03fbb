"""What ``deepspeed train/main.py`` runs: train CLIP on a webclip run's shards.

    deepspeed train/main.py --deepspeed_config infra/deepspeed/zero2.json --config run.yaml \\
        [--set train.steps=1000] [--run runs/demo]

Also runs under ``torchrun`` or as a plain ``python train/main.py`` (one process); on a machine
without a GPU set ``DS_ACCELERATOR=cpu`` (gloo). Exit codes: 0 done, 2 bad configuration or a
checkpoint that cannot be resumed as configured, 3 diverged, 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

# `deepspeed train/main.py` runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.config import load_config
from pipeline.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="webclip YAML configuration")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run", help="run directory (overrides `run:`)")
    p.add_argument("--deepspeed_config", help="DeepSpeed JSON (default: train.deepspeed_config)")
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def _single_process_env() -> None:
    """Env for ``init_distributed`` when started without a launcher: a world of one on a free port."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


_interrupted = False


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM (the deepspeed launcher answers Ctrl-C by terminating its ranks) end the run
    as Ctrl-C does, once: the second signal of the pair must not interrupt the first's clean exit."""
    global _interrupted
    if not _interrupted:
        _interrupted = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = load_config(args.config, args.overrides, args.run)
        _single_process_env()
        from train.metrics import TrainingDiverged, TrainingInterrupted
        from train.trainer import train

        try:
            train(cfg, args.deepspeed_config)
        except TrainingDiverged as exc:  # the run's logs and checkpoints are kept; the message says what next
            print(f"error: {exc}", file=sys.stderr)
            return 3
        except TrainingInterrupted as exc:  # no collective teardown: other ranks may be gone already
            _say_last(str(exc))
            return 130
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (imports, tokenizer, engine set-up)
        _say_last("interrupted while setting up, before the first step; rerun the same command to start")
        return 130
    return 0


def _say_last(msg: str) -> None:
    """Print ``msg`` on rank 0 as the last line the user sees.

    Ctrl-C reaches the whole process group: the ``deepspeed`` runner and its ``launch`` child print
    their own lines as they go, and ``launch`` waits for this rank to exit before it does. Under a
    launcher, a detached grandchild of this rank (outside the process tree ``launch`` terminates and
    waits for) prints the line once the launcher processes have exited (``launch`` gives each rank up to
    30 s to stop; a rank blocked in a collective takes a while), at most 120 s later; without
    one the line is printed now.
    """
    import psutil

    if os.environ.get("RANK", "0") != "0":
        return
    try:
        launchers = [p for p in psutil.Process().parents() if _is_launcher(p)]
    except psutil.Error:
        launchers = []
    if not launchers:
        print(msg, file=sys.stderr, flush=True)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: the announcer is not to be stopped
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    os.setsid()
    if os.fork():
        os._exit(0)  # the grandchild is re-parented away from the launcher's tree
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(_alive(p) for p in launchers):
        time.sleep(0.05)
    print(msg, file=sys.stderr, flush=True)
    os._exit(0)


def _is_launcher(proc: object) -> bool:
    """``deepspeed`` (the console script or ``-m deepspeed.launcher.runner``), its ``launch`` child,
    or ``torchrun``."""
    import psutil

    try:
        argv = list(proc.cmdline())  # type: ignore[attr-defined]
    except psutil.Error:
        return False
    head = [Path(a).name for a in argv[:2]]
    return any("deepspeed.launcher" in a or "torch.distributed.run" in a for a in argv[:4]) or any(
        h in ("deepspeed", "torchrun") for h in head
    )


def _alive(proc: object) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # type: ignore[attr-defined]
    except psutil.Error:
        return False


def _close_process_group() -> None:
    """Destroy the process group on the way out (NCCL warns, and may leak, otherwise)."""
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    code = main()
    # every rank got here together: tear the process group down (NCCL warns otherwise), unless more
    # trainings follow in this process (tests/train/run_many.py: DeepSpeed caches its groups)
    if code in (0, 3) and not os.environ.get("WEBCLIP_KEEP_PROCESS_GROUP"):
        _close_process_group()
    sys.exit(code)
