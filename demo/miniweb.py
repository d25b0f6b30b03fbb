"""A generated mini-web that makes every stage of the pipeline visibly do its job.

It holds synthetic photos of coloured shapes (learnable: the colour named in the caption is the
colour in the image), captions whose topics follow a long-tailed (Zipf) distribution that balancing
flattens, HTML pages with ``<img alt>`` archived in WARC files plus a CC3M-style TSV pool, broken
links, ``X-Robots-Tag: noai`` images, links to a refused address, near-duplicates (resized,
recompressed, cropped) of evaluation images planted among the training images, and training photos
published at two URLs. The CIFAR-10 evaluation subset is class-balanced.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.sampling import stratified_sample

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (15, 15, 15), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star")
# Topics follow a Zipf law over captions: the head is sampled down by balancing, the tail kept.
TOPICS = (
    "garden", "kitchen", "beach", "street", "forest", "museum", "office", "harbor", "desert", "library",
    "stadium", "bakery", "airport", "castle", "glacier", "vineyard", "lighthouse", "canyon", "monastery",
    "observatory",
)
CAPTION_FORMS = (
    "a {colour} {shape} in the {topic}",
    "photo of a {colour} {shape} near the {topic}",
    "{colour} {shape} seen at the {topic}",
    "a small {colour} {shape} on display at the {topic}",
)
IMAGE_SIZE = 64


@dataclass(frozen=True)
class MiniWebSpec:
    """Sizes of the generated mini-web."""

    n_images: int = 1600
    n_eval_per_class: int = 25
    pages: int = 40
    planted_per_evalset: int = 12
    broken_links: int = 40
    noai_images: int = 25
    refused_links: int = 15
    #: training photos published at two URLs (byte-identical copies, as mirrors and reposts are):
    #: dedup finds them inside the pool (exact_dup)
    pool_copies: int = 6
    #: images in the class-balanced CIFAR-10 subset (when the real test set is available)
    n_cifar: int = 500
    seed: int = 0


def draw_shape(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One synthetic photo: a coloured shape at a random place and size on a textured background."""
    # A grey, low-frequency random background: distinct images get distinct perceptual hashes
    # (a flat background would make every picture of a red circle a "near-duplicate" of the others).
    nrng = np.random.default_rng(rng.randrange(2**32))
    grid = Image.fromarray(nrng.integers(50, 210, (4, 4), dtype=np.uint8)).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    field = np.asarray(grid, np.float32)[..., None] + nrng.normal(0, 8, (IMAGE_SIZE, IMAGE_SIZE, 3))
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    size = rng.randint(22, 44)
    x0, y0 = rng.randint(2, IMAGE_SIZE - size - 2), rng.randint(2, IMAGE_SIZE - size - 2)
    fill = tuple(int(np.clip(c + rng.randint(-18, 18), 0, 255)) for c in COLOURS[colour])
    box = (x0, y0, x0 + size, y0 + size)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    else:
        cx, cy, r = x0 + size / 2, y0 + size / 2, size / 2
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy - rad * np.sin(ang)))
        draw.polygon(pts, fill=fill)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def near_duplicate(img: Image.Image, kind: str) -> Image.Image:
    """The transformations a crawl really contains: resized, recompressed, slightly cropped."""
    w, h = img.size
    if kind == "resized":
        return img.resize((w * 3, h * 3), Image.BICUBIC)
    if kind == "recompressed":
        return Image.open(io.BytesIO(jpeg_bytes(img, quality=35))).convert("RGB")
    dx, dy = max(1, round(w * 0.04)), max(1, round(h * 0.04))
    return img.crop((dx, dy, w - dx, h - dy)).resize((w * 2, h * 2), Image.BICUBIC)


def _zipf_topic(rng: random.Random) -> str:
    weights = [1.0 / (rank + 1) ** 1.3 for rank in range(len(TOPICS))]
    return rng.choices(TOPICS, weights=weights)[0]


def _caption(colour: str, shape: str, rng: random.Random) -> str:
    return rng.choice(CAPTION_FORMS).format(colour=colour, shape=shape, topic=_zipf_topic(rng))


def build(out: Path, port: int, spec: MiniWebSpec = MiniWebSpec(), cifar_npz: Path | None = None) -> dict:
    """Write the mini-web under ``out`` for a server on 127.0.0.1:``port``; returns its manifest.

    Layout: ``site/`` (what the server serves: ``img/``, ``noai/``, ``pages/``), ``warc/*.warc.gz``,
    ``pool.tsv`` (caption<TAB>url), ``vocab.txt``, ``evalsets/shapes/<colour>/*.png`` (held out),
    ``evalsets/cifar10.npz`` (a CIFAR-10 test subset, when the real one is available).
    """
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    rng = random.Random(spec.seed)
    site = out / "site"
    for sub in ("img", "noai", "pages"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    pairs: list[tuple[str, str]] = []  # (url, caption)
    colours = list(COLOURS)

    # training images with captions
    for i in range(spec.n_images):
        colour, shape = rng.choice(colours), rng.choice(SHAPES)
        (site / "img" / f"{i:05d}.jpg").write_bytes(jpeg_bytes(draw_shape(colour, shape, rng)))
        pairs.append((f"{base}/img/{i:05d}.jpg", _caption(colour, shape, rng)))

    # the held-out evaluation set: one folder per colour, never served
    eval_root = out / "evalsets" / "shapes"
    eval_images: list[tuple[str, Image.Image]] = []
    for colour in colours:
        (eval_root / colour).mkdir(parents=True, exist_ok=True)
        for j in range(spec.n_eval_per_class):
            img = draw_shape(colour, rng.choice(SHAPES), rng)
            img.save(eval_root / colour / f"{j:03d}.png")
            eval_images.append((colour, img))

    # near-duplicates of evaluation images planted among the training images
    planted: list[dict] = []
    kinds = ("resized", "recompressed", "cropped")
    for k, (colour, img) in enumerate(rng.sample(eval_images, spec.planted_per_evalset)):
        name = f"planted-shapes-{k:03d}.jpg"
        (site / "img" / name).write_bytes(jpeg_bytes(near_duplicate(img, kinds[k % 3])))
        pairs.append((f"{base}/img/{name}", _caption(colour, rng.choice(SHAPES), rng)))
        planted.append({"evalset": "shapes", "url": f"{base}/img/{name}", "kind": kinds[k % 3]})
    if cifar_npz is not None and cifar_npz.is_file():
        data = np.load(cifar_npz)
        # a class-balanced subset (the file is sorted by class: its first 500 are all airplanes)
        keep = stratified_sample(data["y"], spec.n_cifar, spec.seed)
        x, y = data["x"][keep], data["y"][keep]
        np.savez_compressed(out / "evalsets" / "cifar10.npz", x=x, y=y, classes=data["classes"])
        for k, idx in enumerate(rng.sample(range(len(keep)), spec.planted_per_evalset)):
            img = Image.fromarray(x[idx])
            name = f"planted-cifar-{k:03d}.jpg"
            (site / "img" / name).write_bytes(jpeg_bytes(near_duplicate(img, kinds[k % 3]).resize((96, 96))))
            label = str(data["classes"][y[idx]])
            pairs.append((f"{base}/img/{name}", f"a {rng.choice(colours)} {label} in the {_zipf_topic(rng)}"))
            planted.append({"evalset": "cifar10", "url": f"{base}/img/{name}", "kind": kinds[k % 3]})

    # the same photo at two URLs; captions on the vocabulary's rarest topic, so balancing keeps both
    copy_rng = random.Random(spec.seed + 1)  # its own stream: the images above stay as they were
    for k in range(spec.pool_copies):
        colour, shape = copy_rng.choice(colours), copy_rng.choice(SHAPES)
        data = jpeg_bytes(draw_shape(colour, shape, copy_rng))
        for mirror in ("a", "b"):
            (site / "img" / f"copy-{k:03d}{mirror}.jpg").write_bytes(data)
            pairs.append((f"{base}/img/copy-{k:03d}{mirror}.jpg", f"a {colour} {shape} at the {TOPICS[-1]}"))

    # what the download stage must refuse or report
    for k in range(spec.noai_images):
        colour, shape = rng.choice(colours), rng.choice(SHAPES)
        (site / "noai" / f"{k:04d}.jpg").write_bytes(jpeg_bytes(draw_shape(colour, shape, rng)))
        pairs.append((f"{base}/noai/{k:04d}.jpg", _caption(colour, shape, rng)))
    for k in range(spec.broken_links):
        pairs.append((f"{base}/img/missing-{k:04d}.jpg", _caption(rng.choice(colours), rng.choice(SHAPES), rng)))
    for k in range(spec.refused_links):
        # 127.0.0.2 is loopback too, but not in the demo's allow-list: refused before any connection
        pairs.append((f"http://127.0.0.2:{port}/img/{k:05d}.jpg",
                      _caption(rng.choice(colours), rng.choice(SHAPES), rng)))

    rng.shuffle(pairs)
    half = len(pairs) // 2
    web_pairs, pool_pairs = pairs[:half], pairs[half:]

    # HTML pages archived as WARC responses (relative URLs for same-host images, as real pages have)
    (out / "warc").mkdir(exist_ok=True)
    per_page = -(-len(web_pairs) // spec.pages)
    n_files = 4
    writers = []
    for f in range(n_files):
        fh = open(out / "warc" / f"miniweb-{f:02d}.warc.gz", "wb")  # noqa: SIM115 - closed below
        writers.append((fh, WARCWriter(fh, gzip=True)))
    for p in range(spec.pages):
        chunk = web_pairs[p * per_page:(p + 1) * per_page]
        imgs = []
        for url, caption in chunk:
            src = url.removeprefix(base) if url.startswith(base) else url
            imgs.append(f'<figure><img src="{src}" alt="{caption}" width="64"></figure>')
        html = (f"<!doctype html><html><head><title>Mini-web page {p}</title></head><body>"
                f"<h1>Page {p}</h1>{''.join(imgs)}<img src='/img/logo.png' alt=''></body></html>")
        page_url = f"{base}/pages/{p:03d}.html"
        (site / "pages" / f"{p:03d}.html").write_text(html)
        body = html.encode()
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                              ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
        _, writer = writers[p % n_files]
        writer.write_record(writer.create_warc_record(page_url, "response", payload=io.BytesIO(body),
                                                      http_headers=headers))
    for fh, _ in writers:
        fh.close()

    with open(out / "pool.tsv", "w", encoding="utf-8") as fh:
        for url, caption in pool_pairs:
            fh.write(f"{caption}\t{url}\n")
    vocab = [*colours, *SHAPES, *TOPICS]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    manifest = {"port": port, "pairs": len(pairs), "planted": planted, "spec": spec.__dict__,
                "classes": colours}
    (out / "miniweb.json").write_text(json.dumps(manifest, indent=2))
    return manifest
