"""Image→text and text→image retrieval (recall@1/5/10) on caption datasets.

Readers: a COCO captions JSON (``images`` with ``id``/``file_name``, ``annotations`` with
``image_id``/``caption``) plus its image folder, or WebDataset tars (``<key>.jpg|png|webp`` with
``<key>.txt`` or a ``<key>.json`` holding ``caption``/``text``). An image whose file is missing or
will not decode, or a caption whose image is absent, is a counted drop, never a crash.
"""

from __future__ import annotations

import io
import json
import posixpath
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eval.features import encode_images, encode_texts
from eval.metrics import best_positive_rank
from pipeline.errors import ConfigError
from pipeline.images import to_rgb

KS = (1, 5, 10)
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class CaptionSet:
    """Images (loaded lazily by ``load(i)``) and their captions; ``caption_image[j]`` is caption j's image."""

    name: str
    image_ids: list[str]
    captions: list[str]
    caption_image: np.ndarray
    loader: Any
    dropped: Counter[str] = field(default_factory=Counter)

    def load(self, i: int) -> Image.Image:
        return self.loader(i)


def _coco_image_dir(spec: Any) -> Path:
    if spec.images:
        d = Path(spec.images)
        if not d.is_dir():
            raise ConfigError(f"eval.retrieval {spec.name!r}: images folder {spec.images!r} does not exist")
        return d
    js = Path(spec.path)
    split = js.stem.removeprefix("captions_")  # captions_val2017.json -> val2017
    for cand in (js.parent.parent / split, js.parent / split, js.parent):
        if cand.is_dir() and any(cand.glob("*.jpg")):
            return cand
    raise ConfigError(
        f"eval.retrieval {spec.name!r}: cannot find the images of {spec.path}; set `images:` to their folder"
    )


def load_coco(spec: Any) -> CaptionSet:
    """A COCO-style captions JSON and its image folder."""
    try:
        data = json.loads(Path(spec.path).read_text(encoding="utf-8"))
        images, anns = data["images"], data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"eval.retrieval {spec.name!r}: {spec.path} is not a COCO captions JSON with `images` and "
            f"`annotations` ({type(exc).__name__}: {exc})"
        ) from None
    root = _coco_image_dir(spec)
    dropped: Counter[str] = Counter()
    by_image: dict[Any, list[str]] = {}
    for a in anns:
        cap = a.get("caption") if isinstance(a, dict) else None
        if not isinstance(cap, str) or not cap.strip():
            dropped["empty_caption"] += 1
            continue
        by_image.setdefault(a.get("image_id"), []).append(cap.strip())
    kept: list[tuple[str, Path, list[str]]] = []
    known = set()
    for im in sorted(images, key=lambda d: str(d.get("file_name", ""))):
        known.add(im.get("id"))
        caps = by_image.get(im.get("id"), [])
        path = root / str(im.get("file_name", ""))
        if not caps:
            dropped["image_without_caption"] += 1
        elif not path.is_file():
            dropped["missing_image_file"] += 1
        else:
            kept.append((str(im["id"]), path, caps))
    dropped["caption_of_unknown_image"] += sum(len(v) for k, v in by_image.items() if k not in known)
    kept = _sampled(kept, spec)
    return _assemble(spec.name, kept, lambda p: Image.open(p), dropped)


def load_webdataset(spec: Any) -> CaptionSet:
    """WebDataset tars: ``<key>.<image ext>`` with ``<key>.txt`` (or ``.json`` caption/text)."""
    p = Path(spec.path)
    tars = sorted(p.glob("*.tar")) if p.is_dir() else [p]
    if not tars:
        raise ConfigError(f"eval.retrieval {spec.name!r}: no .tar files in {spec.path}")
    dropped: Counter[str] = Counter()
    kept: list[tuple[str, bytes, list[str]]] = []
    for tar_path in tars:
        try:
            tf = tarfile.open(tar_path)  # noqa: SIM115 - closed by the with below
        except tarfile.TarError as exc:
            raise ConfigError(f"eval.retrieval {spec.name!r}: {tar_path} is not a tar file: {exc}") from None
        groups: dict[str, dict[str, bytes]] = {}
        with tf:
            for m in tf:
                if m.isfile():
                    base = posixpath.basename(m.name)
                    key, _, ext = base.partition(".")
                    key = posixpath.join(posixpath.dirname(m.name), key)
                    groups.setdefault(key, {})[ext.lower()] = tf.extractfile(m).read()  # type: ignore[union-attr]
        for key, g in groups.items():
            img = next((g[e] for e in _IMAGE_EXTS if e in g), None)
            cap = g["txt"].decode("utf-8", "replace").strip() if "txt" in g else None
            if cap is None and "json" in g:
                try:
                    meta = json.loads(g["json"])
                    cap = str(meta.get("caption") or meta.get("text") or "").strip() or None
                except ValueError:
                    dropped["bad_json"] += 1
                    continue
            if img is None:
                dropped["no_image"] += 1
            elif not cap:
                dropped["no_caption"] += 1
            else:
                sid = key if len(tars) == 1 else f"{tar_path.stem}/{key}"
                kept.append((sid, img, [cap]))
    kept = _sampled(kept, spec)
    return _assemble(spec.name, kept, lambda b: Image.open(io.BytesIO(b)), dropped)


def _sampled(kept: list, spec: Any) -> list:
    """``spec.limit`` images drawn at random with ``spec.seed`` (never the first N), in their order."""
    if not spec.limit:
        return kept
    from pipeline.sampling import random_sample

    return [kept[i] for i in random_sample(len(kept), spec.limit, spec.seed).tolist()]


def _assemble(
    name: str, kept: list[tuple[str, Any, list[str]]], opener: Any, dropped: Counter[str]
) -> CaptionSet:
    sources = [src for _, src, _ in kept]
    captions = [c for _, _, caps in kept for c in caps]
    owner = np.asarray([i for i, (_, _, caps) in enumerate(kept) for _ in caps], dtype=np.int64)

    def load(i: int) -> Image.Image:
        img = opener(sources[i])
        img.load()
        return img

    return CaptionSet(name, [k for k, _, _ in kept], captions, owner, load, dropped)


def load_caption_set(spec: Any) -> CaptionSet:
    """The caption set of a :class:`eval.config.RetrievalSetSpec`."""
    return load_coco(spec) if spec.kind == "coco" else load_webdataset(spec)


@dataclass
class RetrievalResult:
    """Recall@k both ways, per-query ranks, and what was dropped."""

    metrics: dict[str, float]
    image_ranks: np.ndarray  # per kept image: rank of its best caption
    text_ranks: np.ndarray  # per caption: rank of its image
    image_ids: list[str]
    caption_image_ids: list[str]
    dropped: Counter[str]


def evaluate_retrieval(
    model: Any,
    tokenizer: Any,
    transform: Any,
    cs: CaptionSet,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    progress: bool = True,
) -> RetrievalResult:
    """Embed images and captions, rank by cosine similarity, and compute R@1/5/10 both ways."""
    dropped = Counter(cs.dropped)
    ok_idx: list[int] = []
    feats: list[torch.Tensor] = []
    bar = tqdm(
        total=len(cs.image_ids),
        desc=f"[eval] {cs.name} images",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        leave=False,
        mininterval=1.0,
    )
    for start in range(0, len(cs.image_ids), batch_size):
        imgs, idx = [], []
        for i in range(start, min(start + batch_size, len(cs.image_ids))):
            try:
                img = cs.load(i)
                img.load()  # decode now, so a broken file is dropped here
                imgs.append(to_rgb(img))
                idx.append(i)
            except Exception:  # an undecodable image is a counted drop
                dropped["undecodable_image"] += 1
        if imgs:
            feats.append(encode_images(model, transform, imgs, device, precision))
            ok_idx.extend(idx)
        bar.update(min(batch_size, len(cs.image_ids) - start))
    bar.close()
    if not ok_idx:
        raise ConfigError(f"retrieval set {cs.name!r}: no usable image (dropped: {dict(dropped)})")
    img = F.normalize(torch.cat(feats), dim=-1)
    remap = {orig: new for new, orig in enumerate(ok_idx)}
    cap_keep = [j for j, o in enumerate(cs.caption_image) if int(o) in remap]
    dropped["caption_of_dropped_image"] += len(cs.captions) - len(cap_keep)
    captions = [cs.captions[j] for j in cap_keep]
    owner = np.asarray([remap[int(cs.caption_image[j])] for j in cap_keep], dtype=np.int64)
    txt = F.normalize(encode_texts(model, tokenizer, captions, device, batch_size, precision), dim=-1)
    sim = (img @ txt.T).numpy()
    image_pos = [np.flatnonzero(owner == i) for i in range(len(ok_idx))]
    image_ranks = best_positive_rank(sim, image_pos)
    text_ranks = best_positive_rank(sim.T, owner[:, None])
    metrics: dict[str, float] = {}
    for k in KS:
        metrics[f"image_to_text_R@{k}"] = float((image_ranks < k).mean())
    for k in KS:
        metrics[f"text_to_image_R@{k}"] = float((text_ranks < k).mean())
    metrics["n_images"] = float(len(ok_idx))
    metrics["n_captions"] = float(len(captions))
    image_ids = [cs.image_ids[i] for i in ok_idx]
    return RetrievalResult(
        metrics, image_ranks, text_ranks, image_ids, [image_ids[o] for o in owner], dropped
    )
