"""What ``deepspeed train/main.py`` runs: train CLIP on a webclip run's shards.

    deepspeed train/main.py --deepspeed_config infra/deepspeed/zero2.json --config run.yaml \\
        [--set train.steps=1000] [--run runs/demo]

Also runs under ``torchrun`` or as a plain ``python train/main.py`` (one process); on a machine
without a GPU set ``DS_ACCELERATOR=cpu`` (gloo). Exit codes: 0 done, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = load_config(args.config, args.overrides, args.run)
        _single_process_env()
        from train.metrics import TrainingDiverged
        from train.trainer import train

        try:
            train(cfg, args.deepspeed_config)
        except TrainingDiverged as exc:  # the run's logs and checkpoints are kept; the message says what next
            print(f"error: {exc}", file=sys.stderr)
            return 3
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
