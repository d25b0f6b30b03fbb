"""Benchmark of webclip dedup: detector quality, hashing throughput, search throughput.

    python benchmarks/dedup.py [--part quality|hashing|search|all] [--tau 10] [--out DIR]

1. Quality: every shared photo transformed (resize, JPEG, crops, brightness/contrast, border) is
   searched against the untransformed photos: recall per transform for plain imagehash pHash, for
   webclip's views, and after verification. False pairs: every distinct pair within CIFAR-10 test,
   MNIST test and the photos, before and after verification; the confirmed ones are listed and
   drawn side by side in ``<out>/false_pairs_<set>.png`` for inspection.
2. Hashing: images/s on one core from a tar of 256-px JPEGs, webclip (all views) vs a loop of
   ``Image.open`` + ``imagehash.phash``, in the same run.
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
from dedup.detect import match_views
from dedup.hashing import hash_views
from dedup.phash import correlation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ZOOMS = tuple(DedupConfig().eval_zooms)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ quality
def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue()))


def _crop(img: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    """Remove ``frac`` of each side's length, split at random between the two ends."""
    w, h = img.size
    dx, dy = round(w * frac), round(h * frac)
    left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return img.crop((left, top, w - (dx - left), h - (dy - top)))


def transforms(rng: np.random.Generator) -> dict:
    def resize(f):
        return lambda im: im.resize(
            (max(8, round(im.width * f)), max(8, round(im.height * f))), Image.BICUBIC
        )

    def border(frac):
        def f(im):
            colour = (
                tuple(int(c) for c in rng.choice([0, 255, 128], 3)) if rng.random() < 0.5 else (255, 255, 255)
            )
            return ImageOps.expand(im.convert("RGB"), border=round(max(im.size) * frac), fill=colour)

        return f

    return {
        "resize 0.5": resize(0.5),
        "resize 0.75": resize(0.75),
        "resize 2": resize(2.0),
        "jpeg 30": lambda im: _jpeg(im, 30),
        "jpeg 50": lambda im: _jpeg(im, 50),
        "jpeg 95": lambda im: _jpeg(im, 95),
        "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
        "brightness -20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
        "contrast +20%": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
        "contrast -20%": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
        "crop 2%": lambda im: _crop(im, 0.02, rng),
        "crop 5%": lambda im: _crop(im, 0.05, rng),
        "crop 10%": lambda im: _crop(im, 0.10, rng),
        "border 5%": border(0.05),
    }


def _hash(grays, zooms):
    hashes, thumbs = hash_views(grays, zooms)
    return hashes, thumbs


def _detect(t_h, t_th, e_h, e_th, tau, thr, train_views=("phash", "trim"), eval_views=None, block=65536):
    eval_views = eval_views or list(e_h)
    tv = {v: t_h[v] for v in train_views}
    ev = {v: e_h[v] for v in eval_views}
    p = match_views(tv, np.ones(len(t_h["phash"]), bool), ev, np.ones(len(e_h["phash"]), bool), tau)
    n = len(p["train_row"])
    score = np.zeros(n)
    # Gather thumbnails a block of pairs at a time (MNIST yields millions of candidates).
    t_names, e_names = list(tv), list(ev)
    t_stack, e_stack = np.stack([t_th[v] for v in t_names]), np.stack([e_th[v] for v in e_names])
    t_vi = np.array([t_names.index(v) for v in p["train_view"]], int)
    e_vi = np.array([e_names.index(v) for v in p["eval_view"]], int)
    for i in range(0, n, block):
        sl = slice(i, i + block)
        a = t_stack[t_vi[sl], p["train_row"][sl]]
        b = e_stack[e_vi[sl], p["eval_row"][sl]]
        score[sl] = correlation(a, b)
    return p, score


def quality(tau: int, thresholds: dict[str, float], out: Path) -> None:
    rng = np.random.default_rng(0)
    files = sorted((SHARED / "photos").rglob("*.jpg"))
    photos = [Image.open(f).convert("RGB") for f in files]
    e_h, e_th = _hash([p.convert("L") for p in photos], ZOOMS)
    thr = thresholds["photos"]
    n = len(photos)
    print(f"\n## 1. Detector quality (tau={tau}, verify >= {thr} for photos; {n} photos)\n")
    print("| transform | imagehash pHash | webclip views | webclip views + verify |")
    print("|---|---|---|---|")
    for name, fn in transforms(rng).items():
        t_imgs = [fn(p).convert("L") for p in photos]
        t_h, t_th = _hash(t_imgs, ())
        plain = np.bitwise_count(t_h["phash"] ^ e_h["phash"]) <= tau
        p, score = _detect(t_h, t_th, e_h, e_th, tau, thr)
        same = p["train_row"] == p["eval_row"]
        found = np.zeros(n, bool)
        found[p["train_row"][same]] = True
        ver = np.zeros(n, bool)
        ver[p["train_row"][same & (score >= thr)]] = True
        print(f"| {name} | {plain.mean():.3f} | {found.mean():.3f} | {ver.mean():.3f} |")

    print("\n### False pairs among distinct images (each set against itself, all views)\n")
    print(
        "| set | images | distinct pairs | plain pHash <= tau | views <= tau | confirmed (verify) | threshold |"
    )
    print("|---|---|---|---|---|---|---|")
    from pipeline.evalsets import open_evalset
    from pipeline.evalsets_spec import EvalSetSpec

    sets = {
        "cifar10": EvalSetSpec(name="cifar10", kind="cifar", path=str(SHARED / "eval" / "cifar10_test.npz")),
        "mnist": EvalSetSpec(name="mnist", kind="mnist", path=str(SHARED / "eval" / "mnist")),
    }
    for name in ("photos", "cifar10", "mnist"):
        if name == "photos":
            grays, ids = [p.convert("L") for p in photos], [f.name for f in files]
        else:
            es = open_evalset(sets[name])
            recs = list(es)
            grays, ids = [r.gray() for r in recs], [r.eval_id for r in recs]
        h, th = _hash(grays, ZOOMS)
        t_h = {v: h[v] for v in ("phash", "trim")}
        p, score = _detect(t_h, th, h, th, tau, thresholds[name])
        a, b = p["train_row"], p["eval_row"]
        key = np.minimum(a, b) * len(grays) + np.maximum(a, b)
        distinct = a != b
        pairs_views = len(np.unique(key[distinct]))
        conf = distinct & (score >= thresholds[name])
        confirmed = np.unique(key[conf])
        q, d, _ = __import__("dedup.search", fromlist=["search_pairs"]).search_pairs(
            h["phash"], h["phash"], tau
        )
        plain = int(np.sum(q < d))
        m = len(grays)
        print(
            f"| {name} | {m:,} | {m * (m - 1) // 2:,} | {plain:,} | {pairs_views:,} | {len(confirmed):,} | "
            f"{thresholds[name]} |"
        )
        if len(confirmed):
            best = {}
            for k, s, x, y in zip(key[conf], score[conf], a[conf], b[conf], strict=True):
                best[int(k)] = max(best.get(int(k), (0, 0, 0)), (float(s), int(x), int(y)))
            listed = sorted(best.values(), reverse=True)
            print(
                f"  confirmed {name} pairs (score, id, id): "
                + "; ".join(f"{s:.3f} {ids[x]}~{ids[y]}" for s, x, y in listed[:20])
            )
            _contact_sheet(
                [(grays[x], grays[y], f"{s:.3f}") for s, x, y in listed[:40]], out / f"false_pairs_{name}.png"
            )


def _contact_sheet(pairs, path: Path) -> None:
    cell = 96
    sheet = Image.new("L", (cell * 2 * 4 + 30, cell * ((len(pairs) + 3) // 4)), 255)
    for i, (x, y, _) in enumerate(pairs):
        r, c = divmod(i, 4)
        sheet.paste(x.resize((cell - 4, cell - 4)), (c * (2 * cell + 8), r * cell))
        sheet.paste(y.resize((cell - 4, cell - 4)), (c * (2 * cell + 8) + cell, r * cell))
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
            # img2dataset's default: resize to 256 keeping the ratio (border mode pads to 256×256)
            img = ImageOps.pad(img, (256, 256), color=(255, 255, 255))
            data = io.BytesIO()
            img.save(data, "JPEG", quality=95)
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = len(data.getvalue())
            tf.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


def hashing(n: int, out: Path) -> None:
    import imagehash

    from dedup.hashing import hash_training_samples
    from dedup.shards import iter_samples
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    (out / "shards" / "00000.tar").write_bytes(_tar_of_256px(n))
    run = RunDir(str(out))
    print(f"\n## 2. Hashing throughput, one core, {n} 256-px JPEGs (quality 95) in a tar\n")
    exact, fast = "webclip exact (phash + trim views, sha256)", "webclip fast_decode (JPEG draft to >=64 px)"
    results: dict[str, list[float]] = {}
    out_hashes = {}
    for label in ["imagehash loop", exact, fast] * 2:
        t = time.perf_counter()
        if label.startswith("imagehash"):
            with tarfile.open(out / "shards" / "00000.tar") as tf:
                hs = [
                    int(str(imagehash.phash(Image.open(io.BytesIO(tf.extractfile(m).read())))), 16)
                    for m in tf
                ]
            out_hashes[label] = np.array(hs, dtype=np.uint64)
        else:
            samples = iter_samples(run, "shards/00000.tar")
            table = hash_training_samples(samples, "00000", 256, Stats(), fast_decode=label == fast)
            out_hashes[label] = table.column("phash").to_numpy()
        results.setdefault(label, []).append(n / (time.perf_counter() - t))
    ref = out_hashes["imagehash loop"]
    assert np.array_equal(out_hashes[exact], ref), "pHash view differs from imagehash"
    d_fast = np.bitwise_count(out_hashes[fast] ^ ref)
    print("| method | images/s/core (best of 2) | vs imagehash loop |")
    print("|---|---|---|")
    base = max(results["imagehash loop"])
    for label, v in results.items():
        print(f"| {label} | {max(v):,.0f} | {max(v) / base:.2f}x |")
    print(
        f"\nexact: pHash view identical to imagehash on all {n} images. fast_decode: Hamming distance to "
        f"imagehash's hash median {np.median(d_fast):.0f}, 99th pct {np.quantile(d_fast, 0.99):.0f}, "
        f"max {d_fast.max()}; peak RSS {peak_mb():.0f} MB"
    )


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["quality", "hashing", "search", "all"], default="all")
    ap.add_argument("--tau", type=int, default=DedupConfig().tau)
    ap.add_argument("--verify", type=float, default=DedupConfig().verify_threshold)
    ap.add_argument("--verify-mnist", type=float, default=0.99)
    ap.add_argument("--hash-images", type=int, default=2000)
    ap.add_argument("--train", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/webclip-bench-dedup"))
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    if args.part in ("quality", "all"):
        thresholds = {"photos": args.verify, "cifar10": args.verify, "mnist": args.verify_mnist}
        quality(args.tau, thresholds, args.out)
    if args.part in ("hashing", "all"):
        hashing(args.hash_images, args.out)
    if args.part in ("search", "all"):
        search(args.train, args.eval, 8)


if __name__ == "__main__":
    main()
