"""Zero-shot accuracy during training: what the trainer logs next to the loss every N steps (rank 0).

The trainer calls :func:`zero_shot_metrics` on rank 0 while the other ranks wait at a barrier; it
evaluates a seeded, class-stratified sample of ``limit`` images of each eval set (the set's own
``seed``; the same records at every step) with the same prompt-ensemble code as the eval stage, then
puts the model back in training mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pipeline.evalsets_spec import EvalSetSpec


def zero_shot_metrics(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    transform: Callable[[Any], torch.Tensor],
    specs: Sequence[EvalSetSpec],
    device: str | torch.device,
    limit: int | None = 1000,
    batch_size: int = 256,
    precision: str = "fp32",
) -> dict[str, float]:
    """``{"zeroshot/<set>/top1": …, "…/top5": …, "…/mean_per_class_recall": …}`` and the baselines
    beside them: ``…/chance_top1``, ``…/majority_top1``, ``…/n_classes_present`` (:mod:`eval.baselines`).

    ``model`` is the bare CLIP module (``engine.module`` under DeepSpeed); ``limit`` is the size of
    the stratified sample per set (None: all, or the set's own ``limit``). Training mode is restored.
    """
    from eval.baselines import label_baselines
    from eval.features import evalset_features
    from eval.zeroshot import build_classifier, classify, load_templates, resolve_classnames
    from pipeline.evalsets import open_evalset

    device = torch.device(device)
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for spec in specs:
            if limit is not None:
                spec = spec.model_copy(update={"limit": min(limit, spec.limit or limit)})
            es = open_evalset(spec)
            classnames = resolve_classnames(spec, es.classes)
            weights = build_classifier(
                model, tokenizer, classnames, load_templates(spec.templates), device, batch_size, precision
            )
            feats = evalset_features(model, transform, es, device, batch_size, precision, progress=False)
            res = classify(feats, weights)
            res.metrics.update(label_baselines(res.labels))
            for key in ("top1", "top5", "mean_per_class_recall", "chance_top1", "majority_top1", "n_classes_present"):
                out[f"zeroshot/{spec.name}/{key}"] = float(res.metrics[key])
    finally:
        model.train(was_training)
    return out
