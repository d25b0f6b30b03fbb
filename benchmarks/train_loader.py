"""Loader throughput: webclip's shard loader vs open_clip's webdataset pipeline, same shards, same run.

    python benchmarks/train_loader.py                      # per core: each loader in this process
    python benchmarks/train_loader.py --workers 2          # through a DataLoader with 2 worker processes

What a GPU step needs from the CPU: ViT-B/16 at the 40 % MFU target on an H100 takes about 2,700
samples/s and ViT-B/32 several times that, all from the loader workers of one node (16 cores on the
lent machine). The figure that decides it is samples/s per core (``--workers 0``: the loader runs in
this process, one thread), and what a batch costs to move: bytes per sample from worker to trainer
(and again for the pinned copy and the host-to-device copy).

Shards: the 239 real COCO photos of ``../shared/data/photos/coco_mini``, cycled, written as webclip's
download stage writes them by default (img2dataset ``center_crop`` to 256 px, JPEG q95: ``c256``) and
as the original JPEGs (``resize_mode: no``, about 640×480: ``orig``).

Reference: the pipeline open_clip builds for WebDataset training (``open_clip/src/training/data.py``
``get_wds_dataset``): tar samples → shuffle → ``decode("pilrgb")`` → per-sample transform
(torchvision ``RandomResizedCrop(scale=(0.9, 1.0), BICUBIC)`` → ``ToTensor`` → ``Normalize``, written
here with Pillow/NumPy as there is no CPU torchvision) and per-sample tokenisation → ``batched``.
Both crop with the same box sampling to the same size.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from PIL import Image

from train.data import ShardBatches, list_shards, make_loader
from train.tokenizer import Tokenizer, train_tokenizer
from train.transforms import CLIP_MEAN, CLIP_STD, random_resized_crop_box

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "coco_mini"
CAPTIONS = [f"a photo number {i}" for i in range(97)]


def center_crop(img: Image.Image, side: int) -> Image.Image:
    """img2dataset's ``center_crop`` resize mode (what webclip's download stage stores by default)."""
    # img2dataset's center_crop: shorter side to `side` (area-averaging downscale), the central square
    w, h = img.size
    s = side / min(w, h)
    img = img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.LANCZOS)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def make_shards(directory: Path, n: int, side: int | None, per_shard: int = 500) -> list[str]:
    """``n`` samples cycling the COCO photos (img2dataset layout); ``side=None`` keeps the originals."""
    photos = sorted(PHOTOS.glob("*/*.jpg"))
    if not photos:
        sys.exit(f"no photos under {PHOTOS}: this benchmark reads ../shared/data beside the checkout")
    encoded = []
    for p in photos:
        if side is None:
            encoded.append(p.read_bytes())
            continue
        buf = io.BytesIO()
        center_crop(Image.open(p).convert("RGB"), side).save(buf, format="JPEG", quality=95)
        encoded.append(buf.getvalue())
    write_jpeg_shards(directory, encoded, n, lambda k: CAPTIONS[k % len(CAPTIONS)], per_shard)
    return list_shards(str(directory / "*.tar"))


def write_jpeg_shards(
    directory: Path, jpgs: list[bytes], n: int, caption: Callable[[int], str], per_shard: int = 500
) -> None:
    """``n`` samples cycling ``jpgs`` as ``<directory>/0000N.tar`` (img2dataset layout), sample k
    captioned ``caption(k)``; also what ``benchmarks/train.py`` writes its shards with."""
    import webdataset as wds

    directory.mkdir(parents=True, exist_ok=True)
    for s in range(math.ceil(n / per_shard)):
        with wds.TarWriter(str(directory / f"{s:05d}.tar")) as tw:
            for i in range(min(per_shard, n - s * per_shard)):
                k = s * per_shard + i
                tw.write({"__key__": f"{k:09d}", "jpg": jpgs[k % len(jpgs)], "txt": caption(k)})


def open_clip_pipeline(urls: list[str], tokenizer: Tokenizer, size: int, batch: int, shuffle: int):
    """open_clip's ``get_wds_dataset`` training pipeline (see module docstring)."""
    import webdataset as wds

    mean = np.array(CLIP_MEAN, dtype=np.float32)
    std = np.array(CLIP_STD, dtype=np.float32)
    rng = random.Random(0)

    def preprocess(img: Image.Image) -> torch.Tensor:
        box = random_resized_crop_box(img.width, img.height, rng, (0.9, 1.0), (3 / 4, 4 / 3))
        arr = np.asarray(img.resize((size, size), Image.BICUBIC, box=box), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1)))

    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(shuffle),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda t: tokenizer([t])[0]),
        wds.to_tuple("image", "text"),
        wds.batched(batch, partial=False),
    ).repeat(nepochs=1000)


def measure(batches, n_batches: int, batch: int) -> tuple[float, int]:
    """(samples/s over ``n_batches`` after the first, bytes per sample of the batch crossing to the trainer)."""
    it = iter(batches)
    first = next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        images, tokens = next(it)[:2]
    rate = n_batches * batch / (time.perf_counter() - t)
    del first
    return rate, (images.nbytes + tokens.nbytes) // batch


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000, help="samples per shard set (cycled photos)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=12, help="batches timed per measurement (after one)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurements per loader")
    ap.add_argument("--workers", type=int, default=0, help="0: in this process (per-core rate)")
    ap.add_argument("--sets", default="c256,orig")
    ap.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.workers == 0:
        import cv2

        cv2.setNumThreads(1)

    root = Path(args.dir or tempfile.mkdtemp(prefix="loader-bench-"))
    tokenizer = train_tokenizer(CAPTIONS * 3, vocab_size=1000)
    sides = {"c256": 256, "orig": None}
    for name in args.sets.split(","):
        urls = make_shards(root / name, args.samples, sides[name])
        loaders = {
            "webclip": lambda u=urls: ShardBatches(u, tokenizer, args.size, args.batch, shuffle=1000),
            "open_clip": lambda u=urls: open_clip_pipeline(u, tokenizer, args.size, args.batch, 1000),
        }
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        nbytes: dict[str, int] = {}
        for _ in range(args.rounds):
            for label, build in loaders.items():
                ds = build()
                batches = (
                    make_loader(ds, args.workers) if label == "webclip" else _wds_loader(ds, args.workers)
                )
                rate, nbytes[label] = measure(batches, args.batches, args.batch)
                rates[label].append(rate)
        for label, rs in rates.items():
            per_core = statistics.median(rs) / max(1, args.workers)
            print(
                json.dumps(
                    {
                        "loader": label,
                        "shards": name,
                        "workers": args.workers,
                        "samples_per_s": round(statistics.median(rs), 1),
                        "samples_per_s_range": [round(min(rs), 1), round(max(rs), 1)],
                        "samples_per_s_per_core": round(per_core, 1),
                        "bytes_per_sample": nbytes[label],
                        "speedup_vs_open_clip": round(
                            statistics.median(rs) / statistics.median(rates["open_clip"]), 2
                        ),
                        "peak_rss_mb": round(peak_rss_mb(), 1),
                    }
                ),
                flush=True,
            )


def _wds_loader(pipeline, workers: int):
    """open_clip's ``WebLoader``: a DataLoader over the already-batched pipeline."""
    if workers == 0:
        return pipeline
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers, prefetch_factor=4)


if __name__ == "__main__":
    main()
