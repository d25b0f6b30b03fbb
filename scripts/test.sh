#!/usr/bin/env bash
# The README's test command: set up (or reuse) the environment, lint, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${WEBCLIP_VENV:-.venv}/bin/activate"
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
ruff check .
python -m pytest -q "$@"
