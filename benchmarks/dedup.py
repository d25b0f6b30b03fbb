"""Benchmark of webclip dedup: detector quality, hashing throughput, search throughput.

    python benchmarks/dedup.py [--part quality|hashing|download-hash|search|all] [--out DIR]

1. Quality, through webclip's own pipeline (decoder, views, search, verification, the default
   thresholds of ``DedupConfig``): every shared photo is transformed (resize, JPEG, crops,
   brightness/contrast, border, and the two img2dataset resize modes), stored as a JPEG as a shard
   would hold it, decoded and hashed as a training image, and searched against all photos hashed as
   eval images: recall per transform for plain imagehash pHash (full decode, the reference), for
   webclip's candidates and after verification. False pairs: every distinct pair within CIFAR-10
   test, MNIST test and the photos (each set against itself, training views vs eval views, the
   set's profile detected as the stage does), before and after verification; the confirmed ones
   are listed and drawn side by side in ``<out>/confirmed_pairs_<set>.png`` for inspection.
2. Hashing: images/s on one core from a tar of 256-px JPEGs, webclip (``phash`` + ``trim`` views,
   sha256, tar parsing) vs a loop of ``Image.open`` + ``imagehash.phash``, interleaved in the same run;
   CPU seconds of this process (per core, robust to other load) and wall seconds.
3. Search: 1,000,000 training hashes vs 100,000 eval hashes at tau = 8, webclip's multi-index
   search vs FAISS ``IndexBinaryFlat`` range search (brute force), one thread, same run; the results
   must be identical.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup.config import DedupConfig
from dedup.decode import decode_gray
from dedup.detect import EvalViews, best_view_pair, match_views
from dedup.hashing import eval_gray, eval_thumbs, extreme_fraction
from dedup.phash import phash_thumbs
from dedup.score import verify_scores
from dedup.search import search_pairs
from dedup.verify import ThumbStack, clip_rescore
from dedup.views import TRAIN_VIEWS, eval_views, train_thumbs
from pipeline.evalsets import EvalRecord

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CFG = DedupConfig()
VIEWS = eval_views(
    tuple(CFG.eval_zooms), CFG.eval_anchors, CFG.eval_square, CFG.eval_flip, tuple(CFG.eval_angles)
)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ quality
def _jpeg_bytes(img: Image.Image, q: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _crop(img: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    """Remove ``frac`` of each side's length, split at random between the two ends."""
    w, h = img.size
    dx, dy = round(w * frac), round(h * frac)
    left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return img.crop((left, top, w - (dx - left), h - (dy - top)))


def transforms(rng: np.random.Generator) -> dict:
    """name -> function(RGB image) -> the bytes a training shard would hold (JPEG q95 unless the
    transform is a JPEG quality)."""

    def resize(f):
        return lambda im: _jpeg_bytes(
            im.resize((max(8, round(im.width * f)), max(8, round(im.height * f))), Image.BICUBIC)
        )

    def border(frac):
        def f(im):
            colour = (
                tuple(int(c) for c in rng.choice([0, 255, 128], 3)) if rng.random() < 0.5 else (255, 255, 255)
            )
            return _jpeg_bytes(ImageOps.expand(im, border=round(max(im.size) * frac), fill=colour))

        return f

    return {
        "resize 0.5": resize(0.5),
        "resize 0.75": resize(0.75),
        "resize 2": resize(2.0),
        "jpeg 30": lambda im: _jpeg_bytes(im, 30),
        "jpeg 50": lambda im: _jpeg_bytes(im, 50),
        "jpeg 95": lambda im: _jpeg_bytes(im, 95),
        "brightness +20%": lambda im: _jpeg_bytes(ImageEnhance.Brightness(im).enhance(1.2)),
        "brightness -20%": lambda im: _jpeg_bytes(ImageEnhance.Brightness(im).enhance(0.8)),
        "contrast +20%": lambda im: _jpeg_bytes(ImageEnhance.Contrast(im).enhance(1.2)),
        "contrast -20%": lambda im: _jpeg_bytes(ImageEnhance.Contrast(im).enhance(0.8)),
        "crop 2%": lambda im: _jpeg_bytes(_crop(im, 0.02, rng)),
        "crop 5%": lambda im: _jpeg_bytes(_crop(im, 0.05, rng)),
        "crop 10%": lambda im: _jpeg_bytes(_crop(im, 0.10, rng)),
        "border 5%": border(0.05),
        # img2dataset at 256 px: webclip's download default (centre square crop) and border mode.
        "download center_crop 256": lambda im: _jpeg_bytes(ImageOps.fit(im, (256, 256), Image.BICUBIC)),
        "download border 256": lambda im: _jpeg_bytes(ImageOps.pad(im, (256, 256), Image.BICUBIC)),
    }


TARGETS = {
    "crop 2%": 0.95,
    "crop 5%": 0.95,
    "crop 10%": 0.80,
    "border 5%": 0.95,
    "download center_crop 256": None,
    "download border 256": None,
}


def _eval_side(grays: list[np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Eval view hashes, view thumbnails (N, V, 32, 32) and the mean extreme fraction (profile auto)."""
    th = np.stack([eval_thumbs(g, VIEWS, CFG.trim_tolerance) for g in grays])
    h = phash_thumbs(th.reshape(-1, 32, 32)).reshape(len(grays), len(VIEWS))
    return {v.name: h[:, i] for i, v in enumerate(VIEWS)}, th, float(extreme_fraction(th[:, 0]).mean())


def _train_side(grays: list[np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    th, _ = train_thumbs(grays, CFG.trim_tolerance)
    return {v.name: phash_thumbs(th[:, i]) for i, v in enumerate(TRAIN_VIEWS)}, th


def _detect(t_h, t_th, e_h, e_th, profile: str, tau: int, thr: float, recs=None, block: int = 65536):
    """Best view pair per (train, eval) image within tau and its verification score, as the stage does
    (``recs``: the eval records, for the re-scoring of clipped tone edits; ``None`` skips it)."""
    # as the stage does: line-art sets are not searched through flips and rotations
    skip = frozenset(v.name for v in VIEWS if v.flip or v.angle) if profile == "lineart" else frozenset()
    p = match_views(t_h, np.ones(len(t_th), bool), EvalViews.build(e_h, np.ones(len(e_th), bool), tau, skip))
    score = np.zeros(len(p["train_row"]), np.float32)
    refine_from = thr - CFG.refine_margin if profile == "natural" else None
    overlay = (
        (CFG.overlay_drop, CFG.overlay_margin) if profile == "natural" and CFG.overlay_drop > 0 else None
    )
    for i in range(0, len(score), block):
        sl = slice(i, i + block)
        a = t_th[p["train_row"][sl], p["train_view"][sl]]
        b = e_th[p["eval_row"][sl], p["eval_view"][sl]]
        score[sl] = verify_scores(a, b, refine_from, overlay=overlay, band=CFG.overlay_band if overlay else 0)
    if profile == "natural" and CFG.clip_rescore_from is not None and recs is not None:
        score, _ = clip_rescore(
            recs,
            p,
            score,
            ThumbStack(list(range(len(t_th))), t_th),
            ThumbStack(list(range(len(e_th))), e_th),
            VIEWS,
            CFG.clip_rescore_from,
            thr,
            CFG.original_decode_min_side,
            CFG.trim_tolerance,
        )
    best = best_view_pair(p, score)
    return {k: v[best] for k, v in p.items()}, score[best]


def _set_thresholds(name: str, extreme: float) -> tuple[str, int, float]:
    return CFG.thresholds(name, extreme >= CFG.lineart_min_extreme)


def quality(out: Path) -> None:
    import imagehash

    rng = np.random.default_rng(0)
    files = sorted((SHARED / "photos").rglob("*.jpg"))
    raw = [f.read_bytes() for f in files]
    recs = [EvalRecord(f.name, 0, image_bytes=d) for f, d in zip(files, raw, strict=True)]
    photos = [Image.open(io.BytesIO(d)).convert("RGB") for d in raw]
    e_h, e_th, extreme = _eval_side([decode_gray(d, CFG.decode_min_side)[0] for d in raw])
    profile, tau, thr = _set_thresholds("photos", extreme)
    ref = [imagehash.phash(Image.open(io.BytesIO(d))) for d in raw]
    n = len(photos)
    print(
        f"\n## 1. Detector quality ({n} photos; profile {profile}: tau={tau}, verify >= {thr}, "
        f"refine from {thr - CFG.refine_margin:.2f}; {len(VIEWS)} eval views, decode min side {CFG.decode_min_side})\n"
    )
    print("| transform | imagehash pHash <= tau | webclip candidates | webclip confirmed | target |")
    print("|---|---|---|---|---|")
    for name, fn in transforms(rng).items():
        t_bytes = [fn(p) for p in photos]
        plain = np.array(
            [
                (imagehash.phash(Image.open(io.BytesIO(b))) - r) <= tau
                for b, r in zip(t_bytes, ref, strict=True)
            ]
        )
        t_h, t_th = _train_side([decode_gray(b, CFG.decode_min_side)[0] for b in t_bytes])
        p, score = _detect(t_h, t_th, e_h, e_th, profile, tau, thr, recs)
        same = p["train_row"] == p["eval_row"]
        found = np.zeros(n, bool)
        found[p["train_row"][same]] = True
        ver = np.zeros(n, bool)
        ver[p["train_row"][same & (score >= thr)]] = True
        target = TARGETS.get(name, 0.99)
        print(
            f"| {name} | {plain.mean():.3f} | {found.mean():.3f} | {ver.mean():.3f} | "
            f"{'' if target is None else f'>= {target}'} |"
        )
    _small_set_recall()
    _false_pairs(files, raw, out)


def _small_set_recall() -> None:
    """Recall on the small eval sets themselves: each image upscaled (and cropped) as a crawl would
    store it, against the set hashed as eval images, at that set's profile."""
    from pipeline.evalsets import open_evalset

    rng = np.random.default_rng(1)
    print("\n### Recall on the small eval sets (first 1,000 images; 256-px JPEG q95 copies)\n")
    print("| set | profile, tau, threshold | transform | candidates | confirmed |")
    print("|---|---|---|---|---|")
    for name, spec in _specs().items():
        recs = list(open_evalset(spec.model_copy(update={"limit": 1000})))
        grays = [eval_gray(r, CFG.decode_min_side) for r in recs]
        e_h, e_th, extreme = _eval_side(grays)
        profile, tau, thr = _set_thresholds(name, extreme)
        for tname, fn in {
            "upscale to 256": lambda im: im,
            "upscale, crop 5%": lambda im: _crop(im, 0.05, rng),
            "upscale, crop 10%": lambda im: _crop(im, 0.10, rng),
        }.items():
            t_bytes = [_jpeg_bytes(fn(r.rgb().resize((256, 256), Image.BICUBIC))) for r in recs]
            t_h, t_th = _train_side([decode_gray(b, CFG.decode_min_side)[0] for b in t_bytes])
            p, score = _detect(t_h, t_th, e_h, e_th, profile, tau, thr, recs)
            same = p["train_row"] == p["eval_row"]
            found = np.zeros(len(recs), bool)
            found[p["train_row"][same]] = True
            ver = np.zeros(len(recs), bool)
            ver[p["train_row"][same & (score >= thr)]] = True
            print(f"| {name} | {profile}, {tau}, {thr} | {tname} | {found.mean():.3f} | {ver.mean():.3f} |")


def _specs() -> dict:
    from pipeline.evalsets_spec import EvalSetSpec

    return {
        "cifar10": EvalSetSpec(name="cifar10", kind="cifar", path=str(SHARED / "eval" / "cifar10_test.npz")),
        "mnist": EvalSetSpec(name="mnist", kind="mnist", path=str(SHARED / "eval" / "mnist")),
    }


def _false_pairs(files: list[Path], raw: list[bytes], out: Path) -> None:
    from pipeline.evalsets import open_evalset

    print("\n### Confirmed pairs among distinct images (each set against itself, all views)\n")
    print(
        "| set | images | distinct pairs | profile | tau | plain pHash <= tau | candidates (views) | "
        "confirmed | threshold |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    specs = _specs()
    listings = []
    for name in ("photos", "cifar10", "mnist"):
        if name == "photos":
            grays = [decode_gray(d, CFG.decode_min_side)[0] for d in raw]
            recs = [EvalRecord(f.name, 0, image_bytes=d) for f, d in zip(files, raw, strict=True)]
            ids = [f.name for f in files]
            show = [Image.open(io.BytesIO(d)).convert("RGB") for d in raw]
        else:
            recs = list(open_evalset(specs[name]))
            grays = [eval_gray(r, CFG.decode_min_side) for r in recs]
            ids = [r.eval_id for r in recs]
            show = [r.rgb() for r in recs]
        e_h, e_th, extreme = _eval_side(grays)
        profile, tau, thr = _set_thresholds(name, extreme)
        t_h, t_th = _train_side(grays)
        p, score = _detect(t_h, t_th, e_h, e_th, profile, tau, thr, recs)
        a, b = p["train_row"], p["eval_row"]
        m = len(grays)
        key = np.minimum(a, b) * m + np.maximum(a, b)
        distinct = a != b
        candidates = len(np.unique(key[distinct]))
        conf = distinct & (score >= thr)
        q, d, _ = search_pairs(e_h["phash"], e_h["phash"], tau)
        plain = int(np.sum(q < d))
        best: dict[int, tuple[float, int, int, str]] = {}
        for k, s, x, y, ev in zip(
            key[conf], score[conf], a[conf], b[conf], p["eval_view"][conf], strict=True
        ):
            best[int(k)] = max(best.get(int(k), (0.0, 0, 0, "")), (float(s), int(x), int(y), VIEWS[ev].name))
        print(
            f"| {name} | {m:,} | {m * (m - 1) // 2:,} | {profile} | {tau} | {plain:,} | {candidates:,} | "
            f"{len(best):,} | {thr} |"
        )
        if best:
            listed = sorted(best.values(), reverse=True)
            listings.append(
                f"  confirmed {name} pairs (score, id~id, eval view): "
                + "; ".join(f"{s:.3f} {ids[x]}~{ids[y]} {v}" for s, x, y, v in listed)
            )
            _contact_sheet(
                [(show[x], show[y], f"{s:.3f} {ids[x]}~{ids[y]}") for s, x, y, _ in listed[:60]],
                out / f"confirmed_pairs_{name}.png",
            )
    print()
    for line in listings:
        print(line)


def _contact_sheet(pairs, path: Path) -> None:
    from PIL import ImageDraw

    cell, cols = 96, 3
    rows = (len(pairs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (2 * cell + 150), rows * (cell + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (x, y, label) in enumerate(pairs):
        r, c = divmod(i, cols)
        left, top = c * (2 * cell + 150), r * (cell + 6)
        sheet.paste(x.resize((cell, cell)), (left, top))
        sheet.paste(y.resize((cell, cell)), (left + cell + 2, top))
        for j, part in enumerate(label.split(" ")):
            draw.text((left + 2 * cell + 6, top + 4 + 14 * j), part, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"  drawn: {path}")


# ------------------------------------------------------------------ hashing
def _tar_of_256px(n: int) -> bytes:
    files = sorted((SHARED / "photos").rglob("*.jpg"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            img = Image.open(files[i % len(files)]).convert("RGB")
            # img2dataset border mode: resize to 256 keeping the ratio, pad to 256×256 (every image
            # then has a border, so webclip hashes a trimmed view for each: its slowest case)
            img = ImageOps.pad(img, (256, 256), color=(255, 255, 255))
            data = io.BytesIO()
            img.save(data, "JPEG", quality=95)
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = len(data.getvalue())
            tf.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


def hashing(n: int, rounds: int, out: Path) -> None:
    import imagehash

    from dedup.hashing import hash_training_samples
    from dedup.shards import iter_samples
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    tar_path = out / "shards" / "00000.tar"
    tar_path.write_bytes(_tar_of_256px(n))
    run = RunDir(str(out))
    print(f"\n## 2. Hashing throughput, one process, {n} 256-px JPEGs (quality 95, padded) in a tar\n")
    ours = f"webclip (phash + trim + inner views, sha256, tar parsing; decode min side {CFG.decode_min_side})"
    orig = "webclip, original hashes in the shard parquet (sha256, tar parsing, no decode)"
    _write_original_hashes(run)
    results: dict[str, list[tuple[float, float]]] = {}
    out_hashes = {}
    for label in ["imagehash loop", ours, orig] * rounds:  # interleaved: all see the same machine load
        cpu, wall = time.process_time(), time.perf_counter()
        if label.startswith("imagehash"):
            with tarfile.open(tar_path) as tf:
                hs = [
                    int(str(imagehash.phash(Image.open(io.BytesIO(tf.extractfile(m).read())))), 16)
                    for m in tf
                ]
            out_hashes[label] = np.array(hs, dtype=np.uint64)
        else:
            originals = None
            if label == orig:  # what a dedup shard task does when the downloader hashed the originals
                from dedup.original import load_shard_table, params_tag, read_originals

                originals = read_originals(
                    load_shard_table(run, "00000", with_thumbs=False),
                    params_tag(CFG.original_decode_min_side, CFG.trim_tolerance),
                )
            table = hash_training_samples(
                iter_samples(run, "shards/00000.tar"),
                "00000",
                CFG.batch_size,
                Stats(),
                CFG.decode_min_side,
                CFG.trim_tolerance,
                originals,
            )
            out_hashes[label] = table.column("phash").to_numpy()
        results.setdefault(label, []).append((time.process_time() - cpu, time.perf_counter() - wall))
    # Bit-identity of the phash view: imagehash on the image webclip decodes.
    with tarfile.open(tar_path) as tf:
        decoded_ref = np.array(
            [
                int(
                    str(
                        imagehash.phash(
                            Image.fromarray(decode_gray(tf.extractfile(m).read(), CFG.decode_min_side)[0])
                        )
                    ),
                    16,
                )
                for m in tf
            ],
            dtype=np.uint64,
        )
    identical = np.array_equal(out_hashes[ours], decoded_ref)
    # (the original-hash rows hash these same stored images here, at a finer decode: close, not equal)
    d_full = np.bitwise_count(out_hashes[ours] ^ out_hashes["imagehash loop"])
    print("| method | images/s per CPU-second (best) | vs imagehash | images/s wall (best) | vs imagehash |")
    print("|---|---|---|---|---|")
    base_cpu = n / min(c for c, _ in results["imagehash loop"])
    base_wall = n / min(w for _, w in results["imagehash loop"])
    for label, v in results.items():
        cpu, wall = n / min(c for c, _ in v), n / min(w for _, w in v)
        print(f"| {label} | {cpu:,.0f} | {cpu / base_cpu:.2f}x | {wall:,.0f} | {wall / base_wall:.2f}x |")
    print(
        f"\n{rounds} interleaved rounds. phash view bit-identical to imagehash.phash on the image webclip "
        f"decodes: {identical} ({n} images). Against imagehash on the full-size decode: Hamming distance median "
        f"{np.median(d_full):.0f}, 99th pct {np.quantile(d_full, 0.99):.0f}, max {d_full.max()}; "
        f"peak RSS {peak_mb():.0f} MB"
    )
    if not identical:
        raise SystemExit("phash view differs from imagehash on the decoded image")


def _write_original_hashes(run) -> None:
    """``shards/00000.parquet`` with the download-time ``orig_*`` columns of the tar's images (untimed:
    the downloader pays for these; here they stand in for the originals)."""
    import pyarrow as pa

    from dedup.original import hash_original, original_columns, params_tag
    from dedup.shards import iter_samples

    keys, rows = [], []
    for s in iter_samples(run, "shards/00000.tar"):
        keys.append(s.key)
        rows.append(hash_original(s.image, CFG.original_decode_min_side, CFG.trim_tolerance))
    cols = original_columns(rows, params_tag(CFG.original_decode_min_side, CFG.trim_tolerance))
    run.write_parquet("shards/00000.parquet", pa.table({"key": keys, **cols}))


# ------------------------------------------------------------------ hashing at download
def download_hash_cost(rounds: int) -> None:
    """CPU ms per image of the download-time hashing (issue 18), on the real COCO photos: img2dataset's
    own decode (paid anyway), the hash from a second decode of the bytes (before), and the hash from
    the resizer's decode (now: :meth:`crawl.original_hashes.OriginalHasher.record` with the pixels).
    CPU time (``time.process_time``), best of ``rounds``: stable on a shared machine."""
    import cv2

    from crawl.original_hashes import OriginalHasher
    from dedup.original import hash_original

    raw = [f.read_bytes() for f in sorted((SHARED / "photos").rglob("*.jpg"))]
    bufs = [np.frombuffer(d, np.uint8) for d in raw]
    decoded = [cv2.imdecode(b, cv2.IMREAD_UNCHANGED) for b in bufs]
    hasher = OriginalHasher(CFG.original_decode_min_side, CFG.trim_tolerance)

    def cpu_ms(fn) -> float:
        best = float("inf")
        for _ in range(rounds):
            t = time.process_time()
            for i in range(len(raw)):
                fn(i)
            best = min(best, time.process_time() - t)
        return best / len(raw) * 1e3

    sides = {
        "img2dataset's decode (`cv2.imdecode`, paid anyway)": lambda i: cv2.imdecode(
            bufs[i], cv2.IMREAD_UNCHANGED
        ),
        "hash from a second decode of the bytes (`hash_original`, before)": lambda i: hash_original(
            raw[i], CFG.original_decode_min_side, CFG.trim_tolerance
        ),
        "hash from the resizer's decode (`OriginalHasher.record`, now)": lambda i: hasher.record(
            i, raw[i], (bufs[i], decoded[i])
        ),
    }
    print(f"\n## Hashing at download: CPU ms per image ({len(raw)} COCO photos, best of {rounds})\n")
    print("| work | CPU ms / image |")
    print("|---|---|")
    for name, fn in sides.items():
        print(f"| {name} | {cpu_ms(fn):.2f} |")
    print(f"\nhashed from the decode: {hasher.from_decode} of {len(raw) * rounds} calls")


# ------------------------------------------------------------------ search
def search(n_train: int, n_eval: int, tau: int) -> None:
    import faiss

    from dedup.search import faiss_flat_pairs, search_pairs

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    ev = rng.integers(0, np.iinfo(np.uint64).max, n_eval, dtype=np.uint64, endpoint=True)
    tr = rng.integers(0, np.iinfo(np.uint64).max, n_train, dtype=np.uint64, endpoint=True)
    # Plant near duplicates at every distance 0..tau+1 so the result is not empty.
    k = n_train // 100
    planted = ev[rng.integers(0, n_eval, k)]
    for i in range(k):
        for b in rng.choice(64, size=int(i % (tau + 2)), replace=False):
            planted[i] ^= np.uint64(1) << np.uint64(int(b))
    tr[:k] = planted
    print(f"\n## 3. Search: {n_train:,} training vs {n_eval:,} eval hashes at tau={tau}, one thread\n")
    t = time.perf_counter()
    ours = search_pairs(tr, ev, tau)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = faiss_flat_pairs(tr, ev, tau)
    t_ref = time.perf_counter() - t
    same = all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))
    print("| method | seconds | training queries/s/core |")
    print("|---|---|---|")
    print(f"| webclip multi-index hashing | {t_ours:.2f} | {n_train / t_ours:,.0f} |")
    print(f"| FAISS IndexBinaryFlat range_search | {t_ref:.2f} | {n_train / t_ref:,.0f} |")
    print(f"\n{len(ours[0]):,} pairs; identical to brute force: {same}; peak RSS {peak_mb():.0f} MB")
    if not same:
        raise SystemExit("search results differ from brute force")
    shard_search(12_000, 210_000, 10)  # the views before issue 18: 1.2 training x 21 eval views
    shard_search(22_000, 260_000, 10)  # issue 18: phash + inner (+ trim) x 26 eval views


def shard_search(n_train: int, n_eval_hashes: int, tau: int) -> None:
    """What one ``dedup_search`` task does: a shard's training view hashes probe an eval index built
    once per worker (the build is not timed: it is paid once per worker process)."""
    from dedup.search import HammingIndex, faiss_flat_pairs

    rng = np.random.default_rng(1)
    ev = rng.integers(0, np.iinfo(np.uint64).max, n_eval_hashes, dtype=np.uint64, endpoint=True)
    tr = rng.integers(0, np.iinfo(np.uint64).max, n_train, dtype=np.uint64, endpoint=True)
    tr[:100] = ev[:100] ^ np.uint64(0b111)  # a few planted pairs at distance 3
    index = HammingIndex.build(ev, tau)
    index.search(tr[:10])  # the compiled kernel is loaded outside the clock
    t = time.perf_counter()
    ours = index.search(tr)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = faiss_flat_pairs(tr, ev, tau)
    t_ref = time.perf_counter() - t
    same = all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))
    print(
        f"\n## 3b. One shard task: {n_train:,} training hashes vs an index of {n_eval_hashes:,} eval view hashes at tau={tau}\n"
    )
    print("| method | seconds | training queries/s/core |")
    print("|---|---|---|")
    print(
        f"| webclip multi-index hashing, compiled probe loop (index prebuilt) | {t_ours:.2f} | {n_train / t_ours:,.0f} |"
    )
    print(f"| FAISS IndexBinaryFlat range_search | {t_ref:.2f} | {n_train / t_ref:,.0f} |")
    print(f"\n{len(ours[0]):,} pairs; identical to brute force: {same}; peak RSS {peak_mb():.0f} MB")
    if not same:
        raise SystemExit("search results differ from brute force")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["quality", "hashing", "download-hash", "search", "all"], default="all")
    ap.add_argument("--hash-images", type=int, default=2000)
    ap.add_argument("--hash-rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/webclip-bench-dedup"))
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; load average {os.getloadavg()}")
    if args.part in ("quality", "all"):
        quality(args.out)
    if args.part in ("hashing", "all"):
        hashing(args.hash_images, args.hash_rounds, args.out)
    if args.part in ("download-hash", "all"):
        download_hash_cost(args.hash_rounds)
    if args.part in ("search", "all"):
        search(args.train, args.eval, 8)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
