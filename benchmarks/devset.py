"""Fetch the dedup development set: real photographs shipped in Debian packages, cut into distinct pictures.

    python benchmarks/devset.py --out /tmp/devset [--tile 320]

Nothing here is in the tests' critical path: the benchmark (``benchmarks/dedup_real.py``) calls it.
Only Debian packages are used, by name, with ``apt-get download`` (no root needed) and
``dpkg-deb -x``: wallpaper packages that ship photographs (lomiri-wallpapers-16.04/-20.04,
mate-backgrounds, ukui-wallpapers, plasma-workspace-wallpapers) and the sample images of OpenCV's
documentation (opencv-doc) and scikit-image (python3-skimage). The photographs were picked by name
from a contact sheet (renders, logos, charts and drawings left out); the lists are below.

The large wallpapers (2–6k px) are cut into non-overlapping tiles of about ``--tile`` px (4:3, 3:4 or
square, alternating), each kept as one distinct picture when it is textured (grey-level standard
deviation ≥ 12 and mean gradient ≥ 4 at 64×64) and does not correlate above 0.85 (as it is or
mirrored, 16×16 pixels) with a tile kept before: different regions of a photograph are different
pictures, but the regions of a gradient or a repeating texture are one. Small sample photos are
kept whole. Look-alikes (hard negatives, never copies): the packages' own series — stereo pairs,
consecutive calibration frames, optical-flow frame pairs, registration test shots, an image and its
edited version — and, per wallpaper, pairs of tiles of the same scene shifted by 35 % of a tile
(a pan between two shots of one scene).

Writes ``<out>/photos/<id>.jpg`` (quality 95), ``<out>/lookalikes/<id>.jpg`` and
``<out>/manifest.json`` (per photo: id, package, source file, box; look-alike pairs).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None

PACKAGES = (
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "ukui-wallpapers",
    "plasma-workspace-wallpapers",
    "opencv-doc",
    "python3-skimage",
)
LOMIRI = "usr/share/backgrounds/"
#: Wallpapers that are photographs (file name stem or plasma folder), tiled.
WALLPAPERS = {
    "lomiri-wallpapers-16.04": "*",
    "lomiri-wallpapers-20.04": "Kleiber*",
    "mate-backgrounds": "Dune Elephants_5640x3172 FreshFlower Garden GreenMeadow LadyBird RainDrops Storm "
    "TwoWings Wood YellowFlower",
    "ukui-wallpapers": "calla city desert",
    "plasma-workspace-wallpapers": "BytheWater ColdRipple DarkestHour EveningGlow FallenLeaf Grey Kite "
    "OneStandsOut Path summer_1am",
}
#: Whole sample photographs (opencv-doc examples/data, skimage data).
SAMPLES = {
    "opencv-doc": "aero1 apple baboon building butterfly fruits home messi5 orange squirrel_cls lena "
    "board stuff",
    "python3-skimage": "astronaut camera chelsea coffee coins gravel hubble_deep_field moon retina rocket "
    "brick grass",
}
#: Look-alike series shipped by the packages: (package, [file stems]); consecutive members are pairs.
SERIES = [
    ("opencv-doc", ["aero1", "aero3"]),
    ("opencv-doc", ["aloeL", "aloeR"]),
    ("opencv-doc", ["ela_original", "ela_modified"]),
    ("opencv-doc", ["graf1", "graf3"]),
    ("opencv-doc", ["left", "right"]),
    ("opencv-doc", ["leuvenA", "leuvenB"]),
    ("opencv-doc", ["rubberwhale1", "rubberwhale2"]),
    ("opencv-doc", ["basketball1", "basketball2"]),
    ("opencv-doc", [f"left{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)]),
    ("opencv-doc", [f"right{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)]),
    ("python3-skimage", ["OriginalX-130Y130", "TransformedX-130Y130"]),
    ("python3-skimage", ["OriginalX130Y130", "TransformedX130Y130"]),
    ("python3-skimage", ["OriginalX75Y75", "TransformedX75Y75"]),
    ("python3-skimage", ["motorcycle_left", "motorcycle_right"]),
]
ASPECTS = ((4, 3), (3, 4), (1, 1))


def fetch(cache: Path) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` of every package into ``cache`` (skipped when done)."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES:
        done = root / pkg / ".extracted"
        if done.exists():
            continue
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
        (root / pkg).mkdir(parents=True, exist_ok=True)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root / pkg)], check=True)
        done.touch()
    return root


def _find(root: Path, pkg: str, stem: str) -> Path | None:
    hits = [
        Path(p)
        for p in glob.glob(str(root / pkg / "**" / f"{stem}.*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    ]
    hits = [h for h in hits if "/html/" not in str(h)]
    return max(hits, key=lambda p: p.stat().st_size) if hits else None


def wallpaper_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for pkg, spec in WALLPAPERS.items():
        if pkg == "plasma-workspace-wallpapers":
            for name in spec.split():
                files = glob.glob(str(root / pkg / "usr/share/wallpapers" / name / "contents/images/*"))
                files = [f for f in files if f.endswith((".jpg", ".png"))]
                if files:
                    out.append((pkg, Path(max(files, key=lambda f: Image.open(f).size[0]))))
        elif spec == "*":
            for f in sorted(glob.glob(str(root / pkg / "**/*.jpg"), recursive=True)):
                out.append((pkg, Path(f)))
        else:
            for stem in spec.split():
                for f in glob.glob(str(root / pkg / "**" / f"{stem}.*"), recursive=True):
                    if f.endswith((".jpg", ".png")):
                        out.append((pkg, Path(f)))
                        break
    # lomiri-16.04 ships a few renders: leave out the ones a contact sheet showed as non-photos
    skip = ("analogpattern", "Infinite-Sea", "Fossa", "Painting-Colors")
    return [(p, f) for p, f in out if not any(s in f.name for s in skip)]


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, "JPEG", quality=95)


def tiles(img: Image.Image, tile: int, k: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping boxes of about ``tile`` px on the longer side, aspect alternating with ``k``."""
    aw, ah = ASPECTS[k % len(ASPECTS)]
    tw = tile if aw >= ah else round(tile * aw / ah)
    th = tile if ah >= aw else round(tile * ah / aw)
    w, h = img.size
    nx, ny = w // tw, h // th
    ox, oy = (w - nx * tw) // 2, (h - ny * th) // 2
    return [
        (ox + i * tw, oy + j * th, ox + (i + 1) * tw, oy + (j + 1) * th) for j in range(ny) for i in range(nx)
    ]


def _seen(small: np.ndarray, kept: list[np.ndarray], limit: float = 0.85) -> bool:
    """Whether the 64×64 tile correlates above ``limit`` (as it is or mirrored) with a kept tile's 16×16
    thumbnail; appends it to ``kept`` when not. Plain pixel correlation: no part of the detector."""
    t = np.asarray(Image.fromarray(small).resize((16, 16), Image.BILINEAR), np.float64).ravel()
    t = (t - t.mean()) / (t.std() + 1e-9)
    f = t.reshape(16, 16)[:, ::-1].ravel()
    if kept:
        m = np.stack(kept)
        if max((m @ t).max(), (m @ f).max()) / len(t) > limit:
            return True
    kept.append(t)
    return False


def build(out: Path, cache: Path, tile: int) -> dict:
    root = fetch(cache)
    photos, lookalikes = [], []
    kept: list[np.ndarray] = []
    for n, (pkg, f) in enumerate(wallpaper_files(root)):
        img = Image.open(f).convert("RGB")
        if max(img.size) > 14 * tile:  # the largest wallpapers: halve first so a tile shows a scene
            img = img.resize((img.width // 2, img.height // 2), Image.LANCZOS)
        boxes = tiles(img, tile, n)
        for b in boxes:
            crop = img.crop(b)
            small = np.asarray(crop.convert("L").resize((64, 64), Image.BILINEAR), np.float32)
            texture = np.abs(np.diff(small, axis=0)).mean() + np.abs(np.diff(small, axis=1)).mean()
            if small.std() < 12 or texture < 4:
                continue  # a flat or smooth tile (clear sky, a wall, a blur) is no picture of its own
            if _seen(small, kept):
                continue  # another tile (of a repeating texture, a gradient) already looks like it
            pid = f"w{n:02d}_{b[0]}_{b[1]}"
            _save(crop, out / "photos" / f"{pid}.jpg")
            photos.append({"id": pid, "package": pkg, "source": f.name, "box": list(b)})
        # one pan look-alike per wallpaper: the first textured tile shifted by 35 % of its width
        for b in boxes:
            w = b[2] - b[0]
            shifted = (b[0] + int(0.35 * w), b[1], b[2] + int(0.35 * w), b[3])
            pid = f"w{n:02d}_{b[0]}_{b[1]}"
            if shifted[2] <= img.width and any(p["id"] == pid for p in photos):
                lid = f"pan_{pid}"
                _save(img.crop(shifted), out / "lookalikes" / f"{lid}.jpg")
                lookalikes.append({"a": pid, "b": lid, "kind": "pan 35%"})
                break
    in_series = {s for _, stems in SERIES for s in stems}
    for pkg, spec in SAMPLES.items():
        for stem in spec.split():
            if stem in in_series:
                continue  # a look-alike series member is never also a distinct photo
            f = _find(root, pkg, stem)
            if f is None:
                continue
            pid = f"s_{stem}"
            _save(Image.open(f), out / "photos" / f"{pid}.jpg")
            photos.append({"id": pid, "package": pkg, "source": f.name, "box": None})
    for pkg, stems in SERIES:
        files = [_find(root, pkg, s) for s in stems]
        for a, b in itertools.pairwise(files):
            if a is None or b is None:
                continue
            ida, idb = f"l_{a.stem}", f"l_{b.stem}"
            for f, i in ((a, ida), (b, idb)):
                if not (out / "lookalikes" / f"{i}.jpg").exists():
                    _save(Image.open(f), out / "lookalikes" / f"{i}.jpg")
            lookalikes.append({"a": ida, "b": idb, "kind": f"{pkg} series"})
    manifest = {"photos": photos, "lookalikes": lookalikes, "packages": list(PACKAGES), "tile": tile}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/webclip-devset")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/webclip-devset"))
    ap.add_argument("--tile", type=int, default=320)
    args = ap.parse_args()
    m = build(Path(args.out), Path(args.cache), args.tile)
    print(
        f"{len(m['photos'])} photos ({sum(p['box'] is None for p in m['photos'])} whole), "
        f"{len(m['lookalikes'])} look-alike pairs in {args.out}"
    )


if __name__ == "__main__":
    main()
