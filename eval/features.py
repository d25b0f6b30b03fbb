"""Batched image and text embeddings from a CLIP model, on CPU or GPU, and checkpoint loading.

The model is anything with ``encode_image(images[B,3,H,W]) -> [B,D]`` and
``encode_text(tokens[B,L]) -> [B,D]`` (the train package's ``CLIP``); embeddings come back as
float32 CPU tensors, unnormalised (callers normalise where the maths needs it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.errors import ConfigError

_MODEL_CACHE: dict[tuple[str, float, str], tuple[Any, Any, Any]] = {}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device (a clear error if absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"eval.device = {name!r} but CUDA is not available here; use `auto` or `cpu`")
    return dev


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when asked; a no-op on CPU (CPU runs fp32 for exact, portable results)."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def load_checkpoint(path: str, device: torch.device) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, eval_transform)`` from an exported ``model.pt`` or a DeepSpeed checkpoint folder.

    Loaded once per process per (path, modification time, device): every task of a stage reuses it.
    """
    if not os.path.exists(path):
        raise ConfigError(
            f"eval.checkpoint {path!r} does not exist; run `webclip train` first or point eval.checkpoint "
            "at an exported model.pt or a DeepSpeed checkpoint folder"
        )
    key = (os.path.abspath(path), os.path.getmtime(path), str(device))
    if key not in _MODEL_CACHE:
        from train.export import load_model

        model, tokenizer, transform = load_model(path, device)
        model = model.eval()
        _MODEL_CACHE.clear()  # one model at a time: eval sets are evaluated per checkpoint
        _MODEL_CACHE[key] = (model, tokenizer, transform)
    return _MODEL_CACHE[key]


@torch.no_grad()
def encode_texts(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
) -> torch.Tensor:
    """Text embeddings ``[len(texts), D]`` (float32, CPU, unnormalised), in the order of ``texts``."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        with autocast(device, precision):
            out.append(model.encode_text(tokens).float().cpu())
    if not out:
        raise ValueError("encode_texts: no texts")
    return torch.cat(out)


@torch.no_grad()
def encode_images(
    model: Any,
    transform: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    device: torch.device,
    precision: str = "fp32",
    pool: ThreadPoolExecutor | None = None,
) -> torch.Tensor:
    """Image embeddings ``[len(images), D]`` (float32, CPU, unnormalised) of one batch of PIL images."""
    # PIL's resize and crop release the GIL, so a few threads overlap preprocessing with each other.
    tensors = list(pool.map(transform, images)) if pool is not None else [transform(im) for im in images]
    batch = torch.stack(tensors).to(device)
    with autocast(device, precision):
        return model.encode_image(batch).float().cpu()


@dataclass
class ImageFeatures:
    """Features of an eval set in record order: ids, labels, ``[N, D]`` float32 features, failed records."""

    eval_ids: list[str]
    labels: np.ndarray
    features: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)


def evalset_features(
    model: Any,
    transform: Callable[[Image.Image], torch.Tensor],
    evalset: Any,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    desc: str | None = None,
    progress: bool = True,
) -> ImageFeatures:
    """Embed every image of a :class:`pipeline.evalsets.EvalSet`; undecodable images are listed, not raised."""
    ids: list[str] = []
    labels: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    bar = tqdm(
        total=len(evalset),
        desc=desc or f"[eval] {evalset.name}",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0,
        dynamic_ncols=True,
        leave=False,
    )
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for batch in _batches(evalset, batch_size):
            failed.extend(batch.failed)
            if len(batch):
                feats.append(encode_images(model, transform, batch.images, device, precision, pool).numpy())
                ids.extend(batch.eval_ids)
                labels.append(batch.labels)
            bar.update(len(batch) + len(batch.failed))
    bar.close()
    dim = feats[0].shape[1] if feats else 0
    return ImageFeatures(
        ids,
        np.concatenate(labels) if labels else np.empty(0, dtype=np.int64),
        np.concatenate(feats) if feats else np.empty((0, dim), dtype=np.float32),
        failed,
    )


def _batches(evalset: Any, batch_size: int) -> Iterator[Any]:
    return evalset.batches(batch_size=batch_size, mode="RGB")
