#!/usr/bin/env bash
# Prepare what the lent GPU machine lacks (it has torch, OpenCV, pyarrow, tensorboard... but no
# DeepSpeed, webdataset, pydantic or ftfy, and no network): wheels for its Python 3.12 in .whl/ and
# this venv's DeepSpeed (pure Python; its ops are JIT-built there if ever used) in .whl/site/.
# .whl/ is git-ignored; name it in the device tool's `carry`. Run here, from the repo root, once.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl/site
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in webdataset==0.2.111 braceexpand==0.1.7 ftfy==6.3.1 wcwidth==0.9.4 hjson==3.1.0 \
    pydantic==2.14.3 pydantic_core==2.50.4 annotated_types==0.8.0 typing_inspection==0.4.5 \
    typing_extensions==4.16.0; do
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLAT[@]}" -d .whl "$pkg"
done
# find the package without importing it (DeepSpeed prints to stdout on import)
ds=$(.venv/bin/python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("deepspeed").origin))')
rm -rf .whl/site/deepspeed
cp -r "$ds" .whl/site/
find .whl/site -name __pycache__ -prune -exec rm -rf {} +
# the COCO photos as the download stage stores them (center_crop 256 px, JPEG q95): the loader part
# cycles them (../shared/data does not travel to the device)
.venv/bin/python - <<'PY'
import sys
sys.path.insert(0, ".")
from pathlib import Path
from PIL import Image
from benchmarks.train_loader import PHOTOS, center_crop
out = Path(".whl/photos")
out.mkdir(exist_ok=True)
for p in sorted(PHOTOS.glob("*/*.jpg")):
    center_crop(Image.open(p).convert("RGB"), 256).save(out / p.name, format="JPEG", quality=95)
PY
du -sh .whl
