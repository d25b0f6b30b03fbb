#!/usr/bin/env bash
# Create (or reuse) the project-local virtual environment and install webclip with all it needs.
# Idempotent: a second run with unchanged pyproject.toml takes a second.
#   WEBCLIP_VENV  where the venv lives (default .venv)
#   WEBCLIP_TORCH the torch requirement (default torch==2.13.0: the CPU wheel on these machines;
#                 on a CUDA machine e.g. "torch==2.13.0" from the CUDA index you use)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WEBCLIP_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH=${WEBCLIP_TORCH:-torch==2.13.0}
export NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# System packages: WordNet (vocabulary source) and Chromium (renders the audit page in tests).
missing=()
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: please install ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.webclip-installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  start=$(date +%s)
  pip install -q --upgrade pip wheel setuptools
  # torch first and pinned: an unpinned torch (or one pulled in by a build environment) brings GBs of CUDA.
  pip install -q "$TORCH"
  # DeepSpeed is an sdist that imports torch while building: no build isolation, after torch.
  python -c "import deepspeed" >/dev/null 2>&1 || DS_BUILD_OPS=0 pip install -q --no-build-isolation "deepspeed>=0.16,<0.20"
  pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
  echo "setup: installed into $VENV in $(( $(date +%s) - start ))s"
fi
