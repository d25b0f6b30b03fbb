"""The crawl job: vocab → extract → match → balance → download (→ dedup), skipping completed stages.

It runs the same way three ways::

    python crawl/main.py --config crawl.yaml                      # embedded Ray on this machine
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python crawl/main.py --config crawl.yaml                  # any cluster (README: From laptop to cluster)
    ray submit infra/ray/cluster.yaml crawl/main.py -- --config /home/ray/webclip/crawl.yaml   # `ray up`'s head

Under ``ray job submit`` and ``ray submit`` Ray sets ``RAY_ADDRESS`` (or a head runs locally), so the
runner connects to the cluster instead of starting an embedded one. Which stages run: the config's
``stages`` list (``--stages`` overrides it) restricted to the crawl stages; dedup runs only when its
stage is installed and ``evalsets`` are configured. Rerunning the same command resumes: finished
stages and finished shards are skipped.

Exit codes: 0 done, 2 bad configuration or input (nothing written), 3 shards failed after retries,
130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# `python crawl/main.py` from a checkout: make the checkout importable. Under `ray submit` the
# script is copied alone to the head, where webclip is installed by the cluster's setup_commands.
_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "pipeline" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: The stages that make up the crawl, in pipeline order.
CRAWL_STAGES = ("vocab", "extract", "match", "balance", "download", "dedup")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crawl/main.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML configuration file (defaults for every key not given)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set download.image_size=224 (repeatable)",
    )
    parser.add_argument("--run", help="run directory URL: a path, s3://…, gs://… (overrides `run:`)")
    parser.add_argument("--stages", help="comma-separated subset of " + ",".join(CRAWL_STAGES))
    parser.add_argument("--force", action="store_true", help="redo finished tasks instead of skipping them")
    return parser


def crawl_stages(config, requested: Sequence[str] | None = None) -> list[str]:
    """The crawl stages to run for ``config``: requested (or ``config.stages``) ∩ crawl stages."""
    from pipeline.errors import ConfigError

    wanted = list(requested) if requested else list(config.stages)
    unknown = [s for s in wanted if s not in CRAWL_STAGES]
    if requested and unknown:
        raise ConfigError(f"--stages: {unknown} are not crawl stages; valid: {', '.join(CRAWL_STAGES)}")
    names = [s for s in CRAWL_STAGES if s in wanted]
    if "dedup" in names and (importlib.util.find_spec("dedup.stage") is None or not config.evalsets):
        # dedup needs evaluation sets to compare against; without them the crawl ends at download
        names.remove("dedup")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Run the crawl; returns the process exit code."""
    from pipeline.cli import guarded

    args = build_parser().parse_args(argv)
    return guarded("crawl", lambda: _crawl(args))


def _crawl(args: argparse.Namespace) -> int:
    from pipeline.cli import run_stages
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    config = load_config(args.config, args.overrides, args.run)
    names = crawl_stages(config, args.stages.split(",") if args.stages else None)
    if not names:
        raise ConfigError(f"no crawl stage selected; `stages` must include some of {', '.join(CRAWL_STAGES)}")
    print(f"crawl: run {config.run}: stages {' → '.join(names)}", file=sys.stderr)
    run_stages(config, names, force=args.force)
    print(f"crawl: done; shards in {config.run.rstrip('/')}/shards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
