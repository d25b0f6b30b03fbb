"""``python -m eval --config FILE [--set KEY=VALUE …] [--run URL] [--force]``: the same as ``webclip eval``."""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
