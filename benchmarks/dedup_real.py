"""Dedup on real photographs through the real download path: recall per copy type, false flags, look-alikes.

    python benchmarks/dedup_real.py [--source devset|coco] [--eval 300] [--path real|library] [--out DIR]

Photos: ``devset`` — the development set of ``benchmarks/devset.py`` (real photographs from Debian
packages, fetched here at benchmark time; not tuned on), or ``coco`` — the shared COCO photos
(``../shared/data/photos``; what the detector was tuned on). ``--eval`` of them (seeded shuffle) are
the evaluation set; the others are distinct training photos. Every eval photo is added to the
training set in each of the copy types below; look-alike pairs (the dev set's series: stereo
pairs, consecutive frames, pans of one scene) put one member in the eval set and the other in the
training set.

``--path real`` (the acceptance measurement): the training images are served by a loopback HTTP
server, a curated list points at them, and ``python -m pipeline.cli run --stages download,dedup``
runs with the default configuration (``download.resize_mode=center_crop`` 256, the downloader
hashing each original) plus the run directory, the eval set (kind folder), the loopback
allow-list and ``ray.num_cpus``. Recall counts a copy as found when ``dedup/overlaps.parquet``
has its (training sample, eval photo) pair confirmed. ``--path library``: the same hashing, search
and verification called in-process on the original bytes (quick, for development).

Beside it: plain ``imagehash.phash`` of the copy's and the eval photo's full decodes at Hamming
≤ 10. False flags: confirmed pairs between an eval photo and a training sample that is neither its
copy nor its look-alike (distinct photos, and copies of *other* eval photos), over all such pairs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
TAU_PLAIN = 10

# ------------------------------------------------------------------ copies
TARGETS = {
    "exact": 0.99,
    "resize 0.5": 0.99,
    "jpeg q30": 0.99,
    "grayscale": 0.99,
    "brightness +20%": 0.99,
    "contrast -20%": 0.99,
    "crop 5% centred": 0.95,
    "crop 5% off-centre": 0.95,
    "border 5%": 0.95,
    "caption overlay": 0.95,
    "watermark overlay": 0.95,
    "crop 10% centred": 0.85,
    "crop 10% anywhere": 0.85,
    "hflip": 0.85,
    "rotate 5 in place": 0.85,
    "rotate 5 crop-fill": 0.85,
    "squash 0.75": 0.85,
    "canvas 70%": 0.80,
}


def _jpeg(img: Image.Image, q: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _caption(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A meme/news-style caption: a line of white text with a black outline across the bottom."""
    out = img.copy()
    d = ImageDraw.Draw(out)
    size = max(10, img.height // 11)
    words = ["when", "the", "weekend", "finally", "arrives", "best", "view", "ever", "2019", "#travel"]
    text = " ".join(rng.choice(words, 4))
    y = img.height - int(size * 1.6)
    d.text(
        (img.width // 20, y),
        text,
        font=_font(size),
        fill="white",
        stroke_width=max(1, size // 12),
        stroke_fill="black",
    )
    return out


def _watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A semi-transparent watermark (site name) across the middle."""
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    size = max(10, img.width // 9)
    name = str(rng.choice(["© stockphotos", "photostock.com", "SAMPLE", "© pixabank"]))
    d.text((img.width // 10, img.height // 2 - size // 2), name, font=_font(size), fill=(255, 255, 255, 110))
    return Image.alpha_composite(base, layer).convert("RGB")


def _crop(img: Image.Image, frac: float, fx: float, fy: float) -> Image.Image:
    """Remove ``frac`` of each side's length, ``fx``/``fy`` of it from the left/top end."""
    w, h = img.size
    dx, dy = round(w * frac), round(h * frac)
    left, top = round(dx * fx), round(dy * fy)
    return img.crop((left, top, w - (dx - left), h - (dy - top)))


def _rotate_fill(img: Image.Image, angle: float) -> Image.Image:
    from dedup.views import fill_keep

    k = fill_keep(angle, img.width, img.height)
    rot = img.rotate(angle, Image.BICUBIC)
    return _crop(rot, 1 - k, 0.5, 0.5).resize(img.size, Image.BICUBIC)


def _canvas(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pasted so that it covers 70 % of the side of a plain canvas of the same aspect, anywhere on it."""
    w, h = img.size
    cw, ch = round(w / 0.7), round(h / 0.7)
    colour = (
        tuple(int(c) for c in rng.choice([255, 240, 30, 0, 128], 3)) if rng.random() < 0.5 else (255,) * 3
    )
    canvas = Image.new("RGB", (cw, ch), colour)
    canvas.paste(img, (int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))))
    return canvas


def make_copies(data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Every copy type of one eval photo, as the bytes a training image would be published with."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    corner = (float(rng.integers(0, 2)), float(rng.integers(0, 2)))
    sign = 1 if rng.random() < 0.5 else -1
    colour = (255, 255, 255) if rng.random() < 0.5 else tuple(int(c) for c in rng.choice([0, 128, 255], 3))
    return {
        "exact": data,
        "resize 0.5": _jpeg(img.resize((max(8, w // 2), max(8, h // 2)), Image.BICUBIC)),
        "jpeg q30": _jpeg(img, 30),
        "grayscale": _jpeg(img.convert("L")),
        "brightness +20%": _jpeg(ImageEnhance.Brightness(img).enhance(1.2)),
        "contrast -20%": _jpeg(ImageEnhance.Contrast(img).enhance(0.8)),
        "crop 5% centred": _jpeg(_crop(img, 0.05, 0.5, 0.5)),
        "crop 5% off-centre": _jpeg(_crop(img, 0.05, *corner)),
        "border 5%": _jpeg(ImageOps.expand(img, border=round(max(w, h) * 0.05), fill=colour)),
        "caption overlay": _jpeg(_caption(img, rng)),
        "watermark overlay": _jpeg(_watermark(img, rng)),
        "crop 10% centred": _jpeg(_crop(img, 0.10, 0.5, 0.5)),
        "crop 10% anywhere": _jpeg(_crop(img, 0.10, float(rng.random()), float(rng.random()))),
        "hflip": _jpeg(ImageOps.mirror(img)),
        "rotate 5 in place": _jpeg(img.rotate(5 * sign, Image.BICUBIC)),
        "rotate 5 crop-fill": _jpeg(_rotate_fill(img, 5 * sign)),
        "squash 0.75": _jpeg(img.resize((max(8, round(w * 0.75)), h), Image.BICUBIC)),
        "canvas 70%": _jpeg(_canvas(img, rng)),
    }


# ------------------------------------------------------------------ data
def load_photos(source: str, out: Path) -> tuple[dict[str, bytes], list[tuple[str, bytes, str, bytes, str]]]:
    """``{photo id: bytes}`` and look-alike pairs ``(id_a, bytes_a, id_b, bytes_b, kind)``."""
    if source == "coco":
        files = sorted((SHARED / "photos").rglob("*.jpg"))
        return {f.stem: f.read_bytes() for f in files}, []
    import importlib.util

    # by path: putting benchmarks/ on sys.path would shadow the dedup package with benchmarks/dedup.py
    spec = importlib.util.spec_from_file_location("devset", REPO / "benchmarks" / "devset.py")
    devset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(devset)

    root = out / "devset"
    if not (root / "manifest.json").exists():
        devset.build(root, Path(os.path.expanduser("~/.cache/webclip-devset")), 320)
    m = json.loads((root / "manifest.json").read_text())
    photos = {p["id"]: (root / "photos" / f"{p['id']}.jpg").read_bytes() for p in m["photos"]}

    def read(i: str) -> bytes:
        p = root / "photos" / f"{i}.jpg"
        return (p if p.exists() else root / "lookalikes" / f"{i}.jpg").read_bytes()

    pairs = [(x["a"], read(x["a"]), x["b"], read(x["b"]), x["kind"]) for x in m["lookalikes"]]
    return photos, pairs


def plan(photos: dict[str, bytes], pairs: list, n_eval: int, seed: int):
    """Eval photos, training items ``(uid, bytes, role, eval id, kind)`` and the look-alike pairs used."""
    rng = np.random.default_rng(seed)
    ids = sorted(photos)
    rng.shuffle(ids)
    # look-alike members: an 'a' goes to the eval side, a 'b' to the training side; a member never both
    eval_side, train_side, used = {}, {}, []
    for a, da, b, db, kind in pairs:
        if a in train_side or b in eval_side or a == b:
            continue
        eval_side[a], train_side[b] = da, db
        used.append((a, b, kind))
    plain = [i for i in ids if i not in eval_side and i not in train_side]
    evals = {i: photos[i] for i in plain[:n_eval]}
    evals.update({a: d for a, d in eval_side.items()})
    items = []
    for i in plain[n_eval:]:
        items.append((f"distinct-{i}", photos[i], "distinct", None, "distinct"))
    for b, d in train_side.items():
        items.append((f"lookalike-{b}", d, "lookalike", None, "lookalike"))
    for n, i in enumerate(plain[:n_eval]):
        for kind, data in make_copies(photos[i], np.random.default_rng(seed * 1000 + n)).items():
            items.append((f"copy-{n:05d}-{kind.replace(' ', '_').replace('%', 'pc')}", data, "copy", i, kind))
    return evals, items, used


# ------------------------------------------------------------------ the real path
class _Server:
    def __init__(self, files: dict[str, bytes]):
        files_ = files

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = files_.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def run_real(
    out: Path, evals: dict[str, bytes], items: list, cpus: int, extra: list[str]
) -> tuple[list[dict], dict]:
    """Serve, download and dedup with the CLI; returns (overlap rows with uid, summary)."""
    import shutil

    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    eval_dir = out / "evalset" / "photo"
    shutil.rmtree(out / "evalset", ignore_errors=True)
    eval_dir.mkdir(parents=True)
    for i, d in evals.items():
        (eval_dir / f"{i}.jpg").write_bytes(d)
    server = _Server({f"{uid}.jpg": d for uid, d, *_ in items})
    try:
        (run / "curated").mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "uid": [u for u, *_ in items],
                    "url": [f"http://127.0.0.1:{server.port}/{u}.jpg" for u, *_ in items],
                    "text": [f"a photo {u}" for u, *_ in items],
                    "entry_ids": pa.array([[1]] * len(items), pa.list_(pa.int32())),
                }
            ),
            run / "curated" / "part-00000.parquet",
        )
        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            "--stages",
            "download,dedup",
            "--run",
            str(run),
            "--set",
            f"evalsets=[{{name: photos, kind: folder, path: '{out / 'evalset'}'}}]",
            "--set",
            "download.allow_addresses=[127.0.0.1/32]",
            "--set",
            f"ray.num_cpus={cpus}",
            "--set",
            "download.samples_per_shard=2000",
            *[x for e in extra for x in ("--set", e)],
        ]
        t0 = time.time()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if res.returncode:
            print(res.stdout[-3000:], res.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"webclip run failed ({res.returncode})")
        print(res.stderr[-1500:], file=sys.stderr)
    finally:
        server.close()
    ov = pq.read_table(run / "dedup" / "overlaps.parquet").to_pylist()
    summary = json.loads((run / "dedup" / "summary.json").read_text())
    summary["wall_s"] = round(wall, 1)
    for r in ov:
        r["eval_photo"] = r["eval_id"].split("/", 1)[1].rsplit(".", 1)[0]
    return ov, summary


# ------------------------------------------------------------------ in-process
def run_library(evals: dict[str, bytes], items: list) -> tuple[list[dict], dict]:
    """The same decisions in-process: original hashes as the downloader takes them (from img2dataset's
    decode, :func:`crawl.original_hashes.hash_as_downloaded`), eval views, search, verify."""
    from crawl.original_hashes import hash_as_downloaded
    from dedup.config import DedupConfig
    from dedup.decode import decode_gray
    from dedup.detect import EvalViews, best_view_pair, match_views
    from dedup.hashing import eval_thumbs
    from dedup.phash import phash_thumbs
    from dedup.score import verify_scores
    from dedup.verify import ThumbStack, clip_rescore
    from dedup.views import TRAIN_VIEWS, eval_views
    from pipeline.evalsets import EvalRecord

    cfg = DedupConfig()
    views = eval_views(
        tuple(cfg.eval_zooms), cfg.eval_anchors, cfg.eval_square, cfg.eval_flip, tuple(cfg.eval_angles)
    )
    eids = list(evals)
    e_th = np.stack(
        [eval_thumbs(decode_gray(evals[i], cfg.decode_min_side)[0], views, cfg.trim_tolerance) for i in eids]
    )
    e_hash = phash_thumbs(e_th.reshape(-1, 32, 32)).reshape(len(eids), len(views))
    t_h, t_th = [], []
    for _, d, *_ in items:
        h, th = hash_as_downloaded(d, cfg.original_decode_min_side, cfg.trim_tolerance)
        t_h.append(h)
        t_th.append(th)
    t_h, t_th = np.stack(t_h), np.stack(t_th)
    train = {v.name: t_h[:, i] for i, v in enumerate(TRAIN_VIEWS)}
    ev = {v.name: e_hash[:, i] for i, v in enumerate(views)}
    pairs = match_views(
        train, np.ones(len(items), bool), EvalViews.build(ev, np.ones(len(eids), bool), cfg.tau)
    )
    a = t_th[pairs["train_row"], pairs["train_view"]]
    b = e_th[pairs["eval_row"], pairs["eval_view"]]
    score = verify_scores(
        a,
        b,
        cfg.verify_threshold - cfg.refine_margin,
        overlay=(cfg.overlay_drop, cfg.overlay_margin),
        band=cfg.overlay_band,
    )
    score, _ = clip_rescore(
        [EvalRecord(i, 0, image_bytes=evals[i]) for i in eids],
        pairs,
        score,
        ThumbStack(list(range(len(items))), t_th),
        ThumbStack(list(range(len(eids))), e_th),
        views,
        cfg.clip_rescore_from,
        cfg.verify_threshold,
        cfg.original_decode_min_side,
        cfg.trim_tolerance,
    )
    best = best_view_pair(pairs, score)
    rows = []
    for k in best:
        rows.append(
            {
                "uid": items[pairs["train_row"][k]][0],
                "eval_photo": eids[pairs["eval_row"][k]],
                "confirmed": bool(score[k] >= cfg.verify_threshold),
                "verify_score": float(score[k]),
                "train_view": TRAIN_VIEWS[pairs["train_view"][k]].name,
                "eval_view": views[pairs["eval_view"][k]].name,
                "distance": int(pairs["distance"][k]),
            }
        )
    return rows, {}


# ------------------------------------------------------------------ scoring
def plain_phash(evals: dict[str, bytes], items: list) -> dict[str, bool]:
    """Per copy uid: plain imagehash pHash of the copy within ``TAU_PLAIN`` of its eval photo's."""
    import imagehash

    def ph(d: bytes) -> int:
        return int(str(imagehash.phash(Image.open(io.BytesIO(d)))), 16)

    eh = {i: ph(d) for i, d in evals.items()}
    return {uid: bin(ph(d) ^ eh[e]).count("1") <= TAU_PLAIN for uid, d, role, e, _ in items if role == "copy"}


def report(rows: list[dict], evals: dict, items: list, used: list, plain: dict[str, bool]) -> dict:
    by_uid = {u: (role, e, kind) for u, _, role, e, kind in items}
    lookalike_of = {f"lookalike-{b}": a for a, b, _ in used}
    cand, conf = set(), set()
    false_conf, false_cand, look_conf, look_cand = [], 0, [], 0
    for r in rows:
        role, e, kind = by_uid[r["uid"]]
        if role == "copy" and r["eval_photo"] == e:
            cand.add(r["uid"])
            if r["confirmed"]:
                conf.add(r["uid"])
        elif role == "lookalike" and lookalike_of.get(r["uid"]) == r["eval_photo"]:
            look_cand += 1
            if r["confirmed"]:
                look_conf.append(r)
        else:
            false_cand += 1
            if r["confirmed"]:
                false_conf.append(r)
    per = {}
    for kind in TARGETS:
        uids = [u for u, _, role, _, k in items if role == "copy" and k == kind]
        per[kind] = {
            "n": len(uids),
            "plain_phash": sum(plain.get(u, False) for u in uids) / max(len(uids), 1),
            "candidate": sum(u in cand for u in uids) / max(len(uids), 1),
            "confirmed": sum(u in conf for u in uids) / max(len(uids), 1),
            "target": TARGETS[kind],
        }
    n_eval = len(evals)
    n_distinct = sum(role == "distinct" for _, _, role, _, _ in items)
    n_copies = sum(role == "copy" for _, _, role, _, _ in items)
    return {
        "per_type": per,
        "eval_photos": n_eval,
        "distinct_pairs": n_eval * n_distinct,
        "other_copy_pairs": (n_eval - 1) * n_copies,
        "false_candidates": false_cand,
        "false_confirmed": len(false_conf),
        "false_confirmed_rows": false_conf[:20],
        "lookalike_pairs": len(used),
        "lookalike_candidates": look_cand,
        "lookalike_confirmed": len(look_conf),
        "lookalike_confirmed_rows": look_conf[:20],
    }


def print_report(rep: dict) -> None:
    print(
        f"\n{'copy':22s} {'n':>5s} {'plain pHash':>12s} {'candidate':>10s} {'confirmed':>10s} {'target':>7s}"
    )
    for kind, r in rep["per_type"].items():
        mark = "" if r["confirmed"] >= r["target"] else "  (below)"
        print(
            f"{kind:22s} {r['n']:5d} {r['plain_phash']:12.3f} {r['candidate']:10.3f} {r['confirmed']:10.3f} "
            f"{r['target']:7.2f}{mark}"
        )
    print(
        f"\nfalse flags: {rep['false_confirmed']} confirmed ({rep['false_candidates']} candidates) over "
        f"{rep['distinct_pairs']:,} distinct-photo pairs + {rep['other_copy_pairs']:,} pairs of an eval photo "
        f"with another photo's copy"
    )
    for r in rep["false_confirmed_rows"]:
        print(
            "   ",
            {
                k: r.get(k)
                for k in ("uid", "eval_photo", "verify_score", "train_view", "eval_view", "distance")
            },
        )
    print(
        f"look-alikes: {rep['lookalike_confirmed']} of {rep['lookalike_pairs']} pairs confirmed "
        f"({rep['lookalike_candidates']} candidates); reported apart, not false flags"
    )
    for r in rep["lookalike_confirmed_rows"]:
        print("   ", {k: r.get(k) for k in ("uid", "eval_photo", "verify_score", "train_view", "eval_view")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["devset", "coco"], default="devset")
    ap.add_argument(
        "--eval", type=int, default=300, help="eval photos (the rest are distinct training photos)"
    )
    ap.add_argument("--path", choices=["real", "library"], default="real")
    ap.add_argument("--out", default="/tmp/webclip-dedup-real")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set", dest="extra", action="append", default=[], help="extra config override (real path)"
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos, pairs = load_photos(args.source, out)
    evals, items, used = plan(photos, pairs, args.eval, args.seed)
    print(
        f"{len(photos)} photos ({args.source}); eval {len(evals)}, training items {len(items)} "
        f"({sum(r == 'copy' for _, _, r, _, _ in items)} copies), look-alike pairs {len(used)}",
        file=sys.stderr,
    )
    t0 = time.time()
    rows, summary = (
        run_real(out, evals, items, args.cpus, args.extra)
        if args.path == "real"
        else run_library(evals, items)
    )
    print(f"{args.path} path: {time.time() - t0:.1f} s", file=sys.stderr)
    plain = plain_phash(evals, items)
    rep = report(rows, evals, items, used, plain)
    rep["summary"] = summary
    rep["args"] = vars(args)
    (out / f"report_{args.source}_{args.path}.json").write_text(json.dumps(rep, indent=1, default=str))
    print_report(rep)
    if summary:
        print("dedup summary hash_source:", summary.get("hash_source"), "wall", summary.get("wall_s"), "s")


if __name__ == "__main__":
    main()
