"""Zero-shot throughput: images/s on CIFAR-10 test with a ViT-B/32-sized CLIP (random init), CPU or GPU.

What is timed, on the first ``--n`` CIFAR-10 test images:

* ``pipeline``: the eval stage's path, end to end: read the eval set, decode, eval transform
  (resize 32 -> 224, centre crop, normalise), encode in batches, cosine-classify against the
  prompt-ensemble classifier, top-k. This is the number the stage's throughput is.
* ``reference``: the same model's ``encode_image`` alone on a pre-built tensor batch: the ceiling
  set by the model (what CLIP_benchmark's loop reduces to once its DataLoader keeps up).
* ``classifier``: building the 10-class × 18-template CIFAR-10 classifier (180 prompts).

Weights are random: the speed of a ViT-B/32 does not depend on what it learned. Prints one JSON line.

    python benchmarks/eval.py --n 256                    # CPU
    python benchmarks/eval.py --n 10000 --device cuda    # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.features import evalset_features, resolve_device  # noqa: E402
from eval.zeroshot import build_classifier, classify, load_templates, packaged_classes  # noqa: E402
from train.model import build_model  # noqa: E402
from train.transforms import eval_transform  # noqa: E402


def _default_cifar() -> Path:
    for cand in (
        REPO.parent / "shared" / "data" / "eval" / "cifar10_test.npz",
        REPO / ".device" / "eval" / "cifar10_test.npz",
    ):
        if cand.is_file():
            return cand
    return REPO.parent / "shared" / "data" / "eval" / "cifar10_test.npz"


class _ArrayBatches:
    """Stand-in reader for machines without pydantic/fsspec (a bare GPU box): the same batches as
    ``pipeline.evalsets``' cifar reader (``Image.fromarray`` per image), without its config layer."""

    def __init__(self, path: Path, n: int):
        with np.load(path) as d:
            self.x, self.y = d["x"][:n], d["y"][:n].astype(np.int64)
        self.name = "cifar10"

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, mode: str = "RGB"):
        from PIL import Image

        for s in range(0, len(self.x), batch_size):
            ids = [f"{i:06d}" for i in range(s, min(s + batch_size, len(self.x)))]
            yield _Batch(
                ids, self.y[s : s + len(ids)], [Image.fromarray(a) for a in self.x[s : s + len(ids)]]
            )


class _Batch:
    def __init__(self, eval_ids, labels, images):
        self.eval_ids, self.labels, self.images, self.failed = eval_ids, labels, images, []

    def __len__(self) -> int:
        return len(self.eval_ids)


READER = "pipeline.evalsets"


def _evalset(path: Path, n: int):
    global READER
    try:
        from pipeline.evalsets import open_evalset
        from pipeline.evalsets_spec import EvalSetSpec
    except ImportError:
        READER = "array fallback (pipeline.evalsets not importable here)"
        return _ArrayBatches(path, n)
    return open_evalset(
        EvalSetSpec(name="cifar10", kind="cifar", path=str(path), limit=n, templates="cifar10")
    )


class _WordTokenizer:
    """Fallback where ftfy/regex are missing: whitespace words -> ids, SOT/EOT, padded to 77."""

    def __init__(self, texts: list[str]):
        words = sorted({w for t in texts for w in t.lower().split()})
        self.ids = {w: i + 1 for i, w in enumerate(words)}
        self.vocab_size = len(words) + 3  # 0 pad, words, SOT, EOT (EOT highest: the model pools there)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 77, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [
                self.vocab_size - 2,
                *[self.ids.get(w, 1) for w in t.lower().split()][:75],
                self.vocab_size - 1,
            ]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def _tokenizer(texts: list[str]):
    try:
        from train.tokenizer import train_tokenizer
    except ImportError:
        return _WordTokenizer(texts)
    return train_tokenizer(texts, vocab_size=2000, min_frequency=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", type=Path, default=_default_cifar(), help="CIFAR-10 test .npz (x, y, classes)")
    ap.add_argument("--n", type=int, default=256, help="images timed (the first N of the test set)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if not args.cifar.is_file():
        sys.exit(f"CIFAR-10 test set not found at {args.cifar}; pass --cifar")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)

    classes = packaged_classes("cifar10")
    templates = load_templates("cifar10")
    texts = [t.format(c) for c in classes for t in templates]
    tokenizer = _tokenizer(texts)
    model = build_model(args.model, vocab_size=tokenizer.vocab_size).to(device).eval()
    transform = eval_transform(model.config.image_size)

    t0 = time.perf_counter()
    weights = build_classifier(model, tokenizer, classes, templates, device, args.batch_size, args.precision)
    _sync(device)
    classifier_s = time.perf_counter() - t0

    # warm-up: one small batch through the whole path (allocator, kernels, autotuning)
    evalset_features(
        model,
        transform,
        _evalset(args.cifar, min(args.batch_size, args.n)),
        device,
        args.batch_size,
        args.precision,
        progress=False,
    )
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    es = _evalset(args.cifar, args.n)
    t0 = time.perf_counter()
    feats = evalset_features(model, transform, es, device, args.batch_size, args.precision, progress=False)
    res = classify(feats, weights)
    _sync(device)
    pipeline_s = time.perf_counter() - t0

    batch = torch.randn(args.batch_size, 3, model.config.image_size, model.config.image_size, device=device)
    from eval.features import autocast

    with torch.no_grad(), autocast(device, args.precision):
        model.encode_image(batch)
        _sync(device)
        reps = max(1, args.n // args.batch_size)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.encode_image(batch)
        _sync(device)
        ref_s = time.perf_counter() - t0

    out = {
        "benchmark": "eval.zeroshot",
        "model": args.model,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "precision": args.precision if device.type == "cuda" else "fp32",
        "n_images": len(feats.eval_ids),
        "batch_size": args.batch_size,
        "pipeline_images_per_s": round(len(feats.eval_ids) / pipeline_s, 1),
        "reference_encode_only_images_per_s": round(reps * args.batch_size / ref_s, 1),
        "classifier_build_s": round(classifier_s, 3),
        "classifier_prompts": len(texts),
        "top1_random_init_not_meaningful": round(res.metrics["top1"], 4),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_MiB": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda"
        else None,
        "reader": READER,
        "tokenizer": type(tokenizer).__name__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    assert np.isfinite(res.metrics["top1"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
