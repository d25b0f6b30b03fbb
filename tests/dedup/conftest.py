"""Helpers for dedup tests: write download-stage shards (img2dataset webdataset layout) and a small run."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_shard(run: Path, index: int, samples: list[dict]) -> None:
    """``<run>/shards/NNNNN.{tar,parquet}`` + ``_stats.json`` as img2dataset writes them.

    Each sample: key, uid, url, caption, entry_ids and ``jpg`` bytes, or ``status`` (a failure).
    """
    shard_dir = run / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    name = f"{index:05d}"
    rows = []
    with tarfile.open(shard_dir / f"{name}.tar", "w") as tf:
        for s in samples:
            ok = s.get("status", "success") == "success"
            meta = {k: s[k] for k in ("key", "uid", "url", "caption", "entry_ids")}
            meta.update(status="success" if ok else s["status"])
            rows.append({**meta, "error_message": None if ok else s["status"], "width": 0, "height": 0})
            if not ok:
                continue
            for ext, data in (
                ("jpg", s["jpg"]),
                ("json", json.dumps(meta).encode()),
                ("txt", s["caption"].encode()),
            ):
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("key", pa.string()),
                ("uid", pa.string()),
                ("url", pa.string()),
                ("caption", pa.string()),
                ("entry_ids", pa.list_(pa.int32())),
                ("status", pa.string()),
                ("error_message", pa.string()),
                ("width", pa.int32()),
                ("height", pa.int32()),
            ]
        ),
    )
    pq.write_table(table, shard_dir / f"{name}.parquet")
    n_ok = sum(r["status"] == "success" for r in rows)
    (shard_dir / f"{name}_stats.json").write_text(json.dumps({"count": len(rows), "successes": n_ok}))


def build_training_shards(run: Path, shared_data: Path) -> dict[str, list[str]]:
    """Two shards mixing overlaps with CIFAR/MNIST eval images, distinct photos, duplicates and a broken file.

    Returns the keys planted for each expectation.
    """
    cifar = np.load(shared_data / "eval" / "cifar10_test.npz")["x"]
    from pipeline.evalsets import _read_idx

    mnist = _read_idx(next((shared_data / "eval" / "mnist").glob("t10k-images*")))
    photos = sorted((shared_data / "photos").rglob("*.jpg"))[:16]
    expect: dict[str, list[str]] = {
        k: [] for k in ("cifar", "mnist", "exact_dup", "clean", "broken", "bordered")
    }
    samples: list[list[dict]] = [[], []]

    def add(shard: int, img_bytes: bytes, kind: str, entry: int) -> None:
        key = f"{shard:05d}{len(samples[shard]):04d}"
        samples[shard].append(
            dict(
                key=key,
                uid=f"u{key}",
                url=f"http://img.test/{key}.jpg",
                caption=f"a photo of {kind} {key}",
                entry_ids=[entry],
                jpg=img_bytes,
            )
        )
        expect[kind].append(key)

    for i in (3, 17, 42):  # CIFAR test images 3, 17, 42, upscaled and re-encoded as a crawl would
        add(0, jpeg(Image.fromarray(cifar[i]).resize((128, 128), Image.BICUBIC), 85), "cifar", 1)
    add(
        0,
        jpeg(ImageOps.expand(Image.fromarray(cifar[5]).resize((96, 96)), border=8, fill=(255, 255, 255))),
        "bordered",
        2,
    )
    for i in (0, 1):  # MNIST test images 0 and 1
        add(1, jpeg(Image.fromarray(mnist[i]).resize((112, 112), Image.BICUBIC), 92), "mnist", 3)
    for shard, p in enumerate(photos):
        img = Image.open(p).convert("RGB")
        img.thumbnail((160, 160))
        add(shard % 2, jpeg(img), "clean", 4 + shard)
    dup = samples[0][-1]["jpg"]
    add(1, dup, "exact_dup", 99)
    add(1, b"\xff\xd8\xff\xe0 not really a jpeg", "broken", 100)
    samples[1].append(
        dict(
            key="000019999",
            uid="ufail",
            url="http://img.test/x",
            caption="failed",
            entry_ids=[5],
            status="failed_to_download",
        )
    )
    for shard, rows in enumerate(samples):
        write_shard(run, shard, rows)
    return expect


def evalset_specs(shared_data: Path) -> list[str]:
    """``--set`` overrides configuring CIFAR-10 and MNIST test (first 300 images each) as eval sets."""
    eval_dir = shared_data / "eval"
    return [
        f"evalsets=[{{name: cifar10, kind: cifar, path: '{eval_dir / 'cifar10_test.npz'}', limit: 300}}, "
        f"{{name: mnist, kind: mnist, path: '{eval_dir / 'mnist'}', limit: 300}}]",
    ]


@pytest.fixture
def evalset_overrides(shared_data) -> list[str]:
    return evalset_specs(shared_data)
