"""WebDataset shard loader: split by rank and worker, shard + sample shuffle, exact resume, counted drops.

Shards (img2dataset layout: ``<key>.jpg``/``.png``/``.webp``, ``<key>.txt``, ``<key>.json``) are read
with ``webdataset``'s tar expander and key grouping from any URL: a local path, ``pipe:cmd``, or any
fsspec URL (``s3://``, ``gs://``, ``memory://``…).

Determinism and resume: for epoch *e*, the shard order is a shuffle seeded by (seed, e), split
``[rank::world]`` then ``[worker::workers]``; in resampled mode each (rank, worker, e) draws
``len(shards)`` shards with replacement. The sample shuffle buffer runs on *undecoded* samples with an
RNG seeded by (seed, e, rank, worker), and a sample's crop is seeded by (seed, e, key). Every batch
carries its worker's (epoch, samples emitted so far), so the trainer records exactly what it consumed;
on resume each worker replays its epoch's undecoded stream (tar reads only, no decoding) up to that
position. The DataLoader takes batches round-robin from workers, so the worker whose turn is next is
also restored (``worker_offset``).

Bad samples are data: a missing image or caption, an undecodable image, an unreadable tar member or
shard are skipped and counted by reason; the counts travel with the batches.
"""

from __future__ import annotations

import io
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from train.transforms import train_transform

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def list_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs of ``spec``: a list, a brace pattern (``a/{00000..00009}.tar``), an fsspec glob, or
    a folder (its ``*.tar``, as ``<run>/clean`` holds them)."""
    if isinstance(spec, list):
        return list(spec)
    parts = expand_urls(spec)
    if len(parts) == 1 and not parts[0].startswith("pipe:") and not parts[0].endswith(".tar"):
        fs, path = fsspec.core.url_to_fs(parts[0])
        if not any(c in parts[0] for c in "*?[") and fs.isdir(path):  # one stat, never per shard
            parts = [parts[0].rstrip("/") + "/*.tar"]
    urls: list[str] = []
    for part in parts:
        if part.startswith("pipe:") or not any(c in part for c in "*?["):
            urls.append(part)
            continue
        fs, _ = fsspec.core.url_to_fs(part)
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        hits = sorted(fs.glob(part))
        urls += [h if proto in ("file", "local") else f"{proto}://{h.lstrip('/')}" for h in hits]
    return urls


def open_url(url: str) -> Any:
    """A binary stream for ``url``: ``pipe:`` via webdataset's gopen, anything else via fsspec."""
    if url.startswith("pipe:"):
        return gopen.gopen(url, "rb")
    return fsspec.open(url, "rb").open()


class _Counting:
    """A webdataset exception handler that counts errors by kind and continues."""

    def __init__(self, counts: Counter[str]):
        self.counts = counts

    def __call__(self, exn: Exception) -> bool:
        self.counts[f"tar_error:{type(exn).__name__}"] += 1
        return True


def _opened(urls: list[str], counts: Counter[str]) -> Iterator[dict[str, Any]]:
    for url in urls:
        try:
            yield {"url": url, "stream": open_url(url)}
        except Exception:  # a missing/unreadable shard is counted, the others still train
            counts["shard_unreadable"] += 1


def shuffle_buffer(data: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle with a fixed-size buffer (webdataset's ``shuffle`` semantics, seeded)."""
    if size <= 1:
        yield from data
        return
    buf: list[Any] = []
    for item in data:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


class ShardBatches(IterableDataset):
    """An endless stream of ``(images, tokens, meta)`` batches for one rank (see module docstring).

    ``images`` is ``uint8 [B, S, S, 3]``: normalise on the device with
    ``train.transforms.normalize_images``.
    """

    def __init__(
        self,
        urls: list[str],
        tokenize: Callable[[list[str]], torch.Tensor],
        image_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: int = 1000,
        resampled: bool = False,
        start: dict[int, tuple[int, int]] | None = None,
        worker_offset: int = 0,
    ):
        if not urls:
            raise ValueError("no shards to train on")
        self.urls = urls
        self.tokenize = tokenize
        self.image_size = image_size
        self.transform = train_transform(image_size)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.resampled = shuffle, resampled
        self.start = start or {}
        self.worker_offset = worker_offset

    def shards_for(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        """The shards worker ``worker`` of this rank reads in ``epoch``, in order."""
        if self.resampled:
            rng = random.Random(f"resample-{self.seed}-{epoch}-{self.rank}-{worker}")
            return [rng.choice(self.urls) for _ in range(len(self.urls))]
        order = list(self.urls)
        random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        return order[self.rank :: self.world_size][worker::num_workers]

    def _decode(
        self, sample: dict[str, Any], epoch: int, counts: Counter[str]
    ) -> tuple[np.ndarray, str] | None:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            counts["missing_image"] += 1
            return None
        if "txt" not in sample:
            counts["missing_text"] += 1
            return None
        try:
            text = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            counts["bad_text"] += 1
            return None
        if not text:
            counts["empty_text"] += 1
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBomb etc. are counted, not printed
                # opened lazily: the transform reads the header, picks the crop, then decodes
                # (a large JPEG at reduced scale)
                img = Image.open(io.BytesIO(sample[ext]))
                rng = random.Random(f"crop-{self.seed}-{epoch}-{sample['__key__']}")
                return self.transform(img, rng), text
        except Exception:  # any decoder failure is a corrupt sample
            counts["corrupt_image"] += 1
            return None

    def _new_batch(self, in_worker: bool) -> torch.Tensor:
        """The ``uint8 [B, S, S, 3]`` batch crops are written into, in shared memory inside a loader
        worker so the DataLoader sends it to the trainer without copying it again."""
        batch = torch.empty((self.batch_size, self.image_size, self.image_size, 3), dtype=torch.uint8)
        return batch.share_memory_() if in_worker else batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        info = get_worker_info()
        num_workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.worker_offset) % num_workers
        epoch, skip = self.start.get(worker, (0, 0))
        counts: Counter[str] = Counter()
        while True:
            shards = self.shards_for(epoch, worker, num_workers)
            if not shards:
                raise ValueError(
                    f"rank {self.rank} worker {worker} has no shard: {len(self.urls)} shards for "
                    f"{self.world_size} ranks x {num_workers} workers; use fewer workers, more shards or "
                    "train.resampled=true"
                )
            handler = _Counting(counts)
            raw = group_by_keys(tar_file_expander(_opened(shards, counts), handler=handler), handler=handler)
            rng = random.Random(f"buffer-{self.seed}-{epoch}-{self.rank}-{worker}")
            emitted = 0
            images = self._new_batch(info is not None)
            pixels = images.numpy()  # a view: crops are written straight into the batch
            texts: list[str] = []
            for sample in shuffle_buffer(raw, self.shuffle, rng):
                emitted += 1
                if emitted <= skip:  # resume: replay undecoded samples up to the saved position
                    continue
                counts["read"] += 1
                item = self._decode(sample, epoch, counts)
                if item is None:
                    continue
                pixels[len(texts)] = item[0]
                texts.append(item[1])
                if len(texts) == self.batch_size:
                    meta = {"worker": worker, "epoch": epoch, "pos": emitted, "counts": dict(counts)}
                    counts = Counter()
                    yield images, self.tokenize(texts), meta
                    images, texts = self._new_batch(info is not None), []
                    pixels = images.numpy()
            if emitted == 0:
                raise ValueError(f"rank {self.rank} worker {worker}: shards {shards[:3]}… hold no samples")
            counts["epoch_remainder"] += len(texts)  # an incomplete last batch is dropped
            epoch, skip = epoch + 1, 0


class DataPosition:
    """What the trainer consumed: per worker (epoch, position), batch count, drop counts."""

    def __init__(self, num_workers: int, state: dict[str, Any] | None = None):
        self.num_workers = max(1, num_workers)
        self.workers: dict[int, tuple[int, int]] = {}
        self.batches = 0
        self.counts: Counter[str] = Counter()
        if state:
            if state.get("num_workers") != self.num_workers:
                # positions are per worker split; a different worker count starts the next epoch afresh
                epoch = max((e for e, _ in state.get("workers", {}).values()), default=-1) + 1
                self.workers = {w: (epoch, 0) for w in range(self.num_workers)}
                warnings.warn(
                    f"loader workers changed ({state.get('num_workers')} -> {self.num_workers}); "
                    f"resuming data at epoch {epoch} instead of the exact position",
                    stacklevel=2,
                )
            else:
                self.workers = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("workers", {}).items()}
                self.batches = int(state.get("batches", 0))
            self.counts = Counter(state.get("counts", {}))

    def update(self, meta: dict[str, Any]) -> None:
        self.workers[int(meta["worker"])] = (int(meta["epoch"]), int(meta["pos"]))
        self.counts.update(meta["counts"])
        self.batches += 1

    def state(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "workers": {str(k): list(v) for k, v in self.workers.items()},
            "batches": self.batches,
            "counts": dict(self.counts),
        }

    @property
    def worker_offset(self) -> int:
        return self.batches % self.num_workers


def make_loader(dataset: ShardBatches, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over an already-batched stream (``batch_size=None``)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
