"""Configuration schemas of the dedup and audit stages (pydantic only; no heavy imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.section import Section

# Defaults chosen from measurements on CIFAR-10 test, MNIST test and the shared photos
# (BENCHMARKS.md (dedup section)): tau 10 keeps recall on the transforms; a thumbnail correlation
# of 0.90 (best over ±1 px shifts) removes the false pairs pHash lets through on photos and CIFAR-10;
# line art such as MNIST needs 0.99 (set per eval set in `per_set`).
DEFAULT_TAU = 10
DEFAULT_VERIFY = 0.90


class EvalSetThresholds(Section):
    """Per-eval-set overrides of the search radius and the verification threshold."""

    tau: int | None = Field(
        None, ge=0, le=32, description="Hamming radius for this eval set (None: dedup.tau)"
    )
    verify_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="min thumbnail correlation to confirm a pair (None: dedup.verify_threshold)",
    )


class DedupConfig(Section):
    """Deduplication against evaluation sets, and exact/near duplicates inside the training pool."""

    mode: Literal["remove", "report"] = Field(
        "remove",
        description="remove: clean shards leave out removed samples; report: clean shards keep every sample "
        "and overlaps are only reported (the CLIP paper's All/Overlap/Clean analysis)",
    )
    tau: int = Field(
        DEFAULT_TAU, ge=0, le=32, description="pHash Hamming radius for train-vs-eval candidates"
    )
    verify_threshold: float = Field(
        DEFAULT_VERIFY,
        ge=-1.0,
        le=1.0,
        description="min Pearson correlation of the two aligned 32×32 grayscale thumbnails to confirm a candidate",
    )
    per_set: dict[str, EvalSetThresholds] = Field(
        default_factory=dict, description="overrides by eval set name, e.g. {mnist: {verify_threshold: 0.97}}"
    )
    eval_zooms: list[float] = Field(
        default_factory=lambda: [0.95, 0.9],
        description="centre crops (fraction of each side kept) hashed as extra views of every eval image",
    )
    trim_tolerance: int = Field(16, ge=0, le=128, description="grey levels a uniform border may vary by")
    exact_dups: bool = Field(
        True, description="remove later copies of byte-identical (sha256) training images"
    )
    pool_tau: int | None = Field(
        2,
        ge=0,
        le=16,
        description="remove training images within this pHash distance of an earlier one (None: off)",
    )
    pool_verify_threshold: float = Field(
        0.95, ge=-1.0, le=1.0, description="min thumbnail correlation to confirm a pool near-duplicate"
    )
    fast_decode: bool = Field(
        False,
        description="decode training JPEGs straight to grayscale at reduced scale (libjpeg DCT scaling): "
        "faster, but the phash view is then no longer bit-identical to imagehash on the full decode",
    )
    batch_size: int = Field(256, ge=1, le=65536, description="images hashed per vectorised DCT batch")

    def thresholds(self, name: str) -> tuple[int, float]:
        """(tau, verify_threshold) for the eval set ``name``."""
        o = self.per_set.get(name)
        tau = o.tau if o and o.tau is not None else self.tau
        thr = o.verify_threshold if o and o.verify_threshold is not None else self.verify_threshold
        return tau, thr


class AuditConfig(Section):
    """The audit database ``<run>/audit.duckdb`` and page ``<run>/audit/index.html``."""

    pairs_per_set: int = Field(
        24, ge=0, le=1000, description="thumbnail pairs shown per eval set on the page"
    )
    thumb_px: int = Field(96, ge=16, le=512, description="size of the thumbnails embedded in the page")
    show_rejected: int = Field(
        6,
        ge=0,
        le=1000,
        description="candidate pairs rejected by verification shown per eval set (for review)",
    )
