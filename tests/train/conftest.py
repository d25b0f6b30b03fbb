"""Fixtures of the train tests: small WebDataset shards in img2dataset layout, a trained tokenizer."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "stripe")


def sample_image(color: str, shape: str, rng: np.random.Generator, size: int = 48) -> bytes:
    """A JPEG whose content matches its caption: a colour and a shape on noise."""
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    c = np.array(COLORS[color], dtype=np.uint8)
    if shape == "square":
        arr[12:36, 12:36] = c
    else:
        arr[:, 18:30] = c
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(
    directory: Path, n_shards: int = 4, per_shard: int = 32, corrupt: int = 1, seed: int = 0
) -> list[str]:
    """``<dir>/0000N.tar`` + ``sizes.json``; ``corrupt`` samples in shard 0 have undecodable JPEG bytes."""
    import webdataset as wds

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    sizes = {}
    for s in range(n_shards):
        name = f"{s:05d}.tar"
        with wds.TarWriter(str(directory / name)) as tw:
            for i in range(per_shard):
                color, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(2))]
                key = f"{s:05d}{i:04d}"
                jpg = sample_image(color, shape, rng)
                if s == 0 and i < corrupt:
                    jpg = b"\xff\xd8not a jpeg at all" + bytes(40)
                tw.write(
                    {
                        "__key__": key,
                        "jpg": jpg,
                        "txt": f"a {color} {shape}",
                        "json": json.dumps({"uid": key, "caption": f"a {color} {shape}"}).encode(),
                    }
                )
        sizes[name] = per_shard
    (directory / "sizes.json").write_text(json.dumps(sizes))
    return [str(directory / f"{s:05d}.tar") for s in range(n_shards)]


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> list[str]:
    return write_shards(tmp_path_factory.mktemp("shards") / "clean")


@pytest.fixture(scope="session")
def tokenizer():
    from train.tokenizer import train_tokenizer

    texts = [f"a {c} {s}" for c in COLORS for s in SHAPES] * 20
    return train_tokenizer(texts, vocab_size=1000)
