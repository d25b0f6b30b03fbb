"""Zero-shot classification with prompt ensembles (CLIP paper §3.1.4).

Each class's classifier weight is the normalised mean of the normalised text embeddings of its
prompts (``template.format(classname)`` for every template of the set); an image is assigned the
class of highest cosine similarity. Templates and class names ship as files in
``eval/templates/`` (``<name>.txt``: one template per line with ``{}``; ``<name>.classes.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.features import ImageFeatures, encode_texts
from eval.metrics import classification_metrics, topk_indices
from pipeline.errors import ConfigError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def available_template_sets() -> list[str]:
    """Names of the template sets shipped in ``eval/templates/``."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def load_templates(name_or_path: str) -> list[str]:
    """Templates of a shipped set (``imagenet``, ``cifar10``, ``photo``…) or of a text file path.

    One template per line with exactly one ``{}`` for the class name; blank lines and ``#`` lines skipped.
    """
    path = Path(name_or_path)
    if not (path.suffix == ".txt" and path.is_file()):
        path = TEMPLATE_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise ConfigError(
            f"templates {name_or_path!r}: no such template set or file; shipped sets: "
            f"{', '.join(available_template_sets())}, or give the path of a .txt file"
        )
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ConfigError(
            f"templates file {path}: every line needs exactly one '{{}}' for the class name"
            + (f"; bad: {bad[:3]}" if bad else "; the file has no templates")
        )
    return templates


def packaged_classes(name: str) -> list[str] | None:
    """Class names shipped with a template set (``eval/templates/<name>.classes.json``), if any."""
    path = TEMPLATE_DIR / f"{name}.classes.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def resolve_classnames(spec: Any, reader_classes: list[str]) -> list[str]:
    """The names put into prompts for an eval set.

    ``spec.classes`` when given; else the class names shipped with the template set when there are
    as many as the reader found (CLIP's cleaned names, e.g. "aquarium fish"); else the reader's
    names with ``_`` read as spaces (folder names like ``golden_retriever``).
    """
    if spec.classes:
        return list(spec.classes)
    shipped = packaged_classes(spec.templates)
    if shipped is not None and len(shipped) == len(reader_classes):
        return shipped
    return [c.replace("_", " ") for c in reader_classes]


def ensemble_classifier(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """``[D, C]`` zero-shot weights from prompt embeddings ``[C, T, D]`` (class, template, dim).

    weight_c = normalise(mean_t normalise(e_{c,t})): each prompt counts equally whatever its norm.
    """
    if prompt_embeddings.ndim != 3:
        raise ValueError(f"expected [classes, templates, dim], got shape {tuple(prompt_embeddings.shape)}")
    per_prompt = F.normalize(prompt_embeddings, dim=-1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T.contiguous()


def build_classifier(
    model: Any,
    tokenizer: Any,
    classnames: list[str],
    templates: list[str],
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
) -> torch.Tensor:
    """Encode every (class, template) prompt and ensemble them into ``[D, C]`` float32 weights."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, device, batch_size, precision)
    return ensemble_classifier(emb.reshape(len(classnames), len(templates), -1))


def classifier_key(checkpoint_id: str, classnames: list[str], templates: list[str]) -> str:
    """Cache key of a classifier: what defines it (the checkpoint, the class names and the templates)."""
    h = hashlib.sha256(json.dumps([checkpoint_id, classnames, templates]).encode()).hexdigest()
    return h[:16]


def cached_classifier(
    run: Any | None,
    rel_dir: str,
    checkpoint_id: str,
    dataset: str,
    build: Any,
    classnames: list[str],
    templates: list[str],
) -> tuple[torch.Tensor, bool]:
    """The classifier from ``<run>/<rel_dir>/<dataset>-<key>.npy`` if cached, else ``build()`` it and cache it.

    Returns (weights, was_cached). ``run`` None disables the cache.
    """
    rel = f"{rel_dir}/{dataset}-{classifier_key(checkpoint_id, classnames, templates)}.npy"
    if run is not None and run.exists(rel):
        return torch.from_numpy(np.load(io.BytesIO(run.read_bytes(rel)))), True
    weights = build()
    if run is not None:
        buf = io.BytesIO()
        np.save(buf, weights.numpy())
        run.write_bytes(rel, buf.getvalue())
    return weights, False


@dataclass
class ZeroShotResult:
    """Per-sample predictions and the metrics of one zero-shot evaluation."""

    eval_ids: list[str]
    labels: np.ndarray
    topk: np.ndarray  # [N, k] class ids, best first
    metrics: dict[str, float]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pred(self) -> np.ndarray:
        return self.topk[:, 0] if len(self.topk) else np.empty(0, dtype=np.int64)


def classify(features: ImageFeatures, classifier: torch.Tensor, top_k: int = 5) -> ZeroShotResult:
    """Cosine-similarity classification of image ``features`` against ``[D, C]`` weights."""
    feats = F.normalize(torch.from_numpy(features.features).float(), dim=-1)
    scores = (feats @ classifier.float()).numpy()
    metrics = classification_metrics(features.labels, scores, top_k)
    metrics["failed"] = float(len(features.failed))
    topk = topk_indices(scores, top_k)
    return ZeroShotResult(features.eval_ids, features.labels, topk, metrics, features.failed)
