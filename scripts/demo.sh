#!/usr/bin/env bash
# The README's first command: set up (or reuse) the environment, then run the whole pipeline on a
# generated mini-web served on loopback, with an embedded local Ray and DeepSpeed on the CPU.
# Extra arguments go to `python -m demo` (e.g. --run runs/demo2 --port 8766 --steps 500).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${WEBCLIP_VENV:-.venv}/bin/activate"
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
exec python -m demo "$@"
