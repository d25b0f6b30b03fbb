"""Configuration schemas of the dedup and audit stages (pydantic only; no heavy imports)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from pipeline.section import Section

# Defaults chosen from measurements on the shared photos (recall under the transforms),
# CIFAR-10 test and MNIST test (confirmed pairs among all their distinct pairs); BENCHMARKS.md
# (dedup section) has the figures and the reasoning.
DEFAULT_TAU = 10
DEFAULT_VERIFY = 0.96
LINEART_TAU = 8
LINEART_VERIFY = 0.99

Profile = Literal["auto", "natural", "lineart"]


class EvalSetThresholds(Section):
    """Per-eval-set overrides: the profile (which defaults apply), the search radius, the verification threshold."""

    profile: Profile = Field(
        "auto",
        description="natural (photos, CIFAR-like), lineart (digits, sketches: verified on the coarse score "
        "with a stricter threshold), or auto (lineart when the set's thumbnails are mostly near black/white)",
    )
    tau: int | None = Field(
        None, ge=0, le=32, description="Hamming radius for this eval set (None: the profile's)"
    )
    verify_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="min verification score to confirm a pair (None: the profile's)",
    )


class DedupConfig(Section):
    """Deduplication against evaluation sets, and exact/near duplicates inside the training pool."""

    mode: Literal["remove", "report"] = Field(
        "remove",
        description="remove: clean shards leave out removed samples; report: clean shards keep every sample "
        "and overlaps are only reported (the CLIP paper's All/Overlap/Clean analysis)",
    )
    tau: int = Field(
        DEFAULT_TAU,
        ge=0,
        le=32,
        description="pHash Hamming radius for train-vs-eval candidates (natural images)",
    )
    verify_threshold: float = Field(
        DEFAULT_VERIFY,
        ge=-1.0,
        le=1.0,
        description="min verification score (best correlation of the aligned 32×32 thumbnails, refined to "
        "sub-pixel alignment) to confirm a candidate (natural images)",
    )
    lineart_tau: int = Field(LINEART_TAU, ge=0, le=32, description="Hamming radius for line-art eval sets")
    lineart_verify_threshold: float = Field(
        LINEART_VERIFY,
        ge=-1.0,
        le=1.0,
        description="min coarse verification score for line-art eval sets (distinct digits correlate up to ~0.99)",
    )
    lineart_min_extreme: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="profile auto: an eval set is line art when on average at least this fraction of its "
        "thumbnail pixels are near black or white (MNIST ~0.8, photos and CIFAR < 0.2)",
    )
    refine_margin: float = Field(
        0.15,
        ge=0.0,
        le=2.0,
        description="natural images: view pairs whose coarse score is within this of the threshold are "
        "re-scored with sub-pixel/scale alignment (the refinement lifted true pairs by at most 0.12)",
    )
    overlay_drop: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="natural images: verification also scores a pair without the fraction of pixels where "
        "it disagrees most (a caption, watermark or logo on a copy); 0 turns this off",
    )
    overlay_margin: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="the overlay score must pass the threshold by this much to confirm (0.96 + 0.03: distinct "
        "CIFAR-10 images reach 0.985 once their worst pixels are dropped; captioned copies ~0.999)",
    )
    overlay_band: int = Field(
        8,
        ge=0,
        le=14,
        description="natural images: verification also scores a pair without its top or bottom this many rows "
        "of the 30 it compares (a caption band); 0 turns this off",
    )
    clip_rescore_from: float | None = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="natural images: view pairs scoring at least this (and under the threshold) whose training "
        "thumbnail has clipped highlights or shadows are re-scored against the eval view rendered with the "
        "same clipping (a brightness or contrast edit; dedup.tone); a bound on that work, not a threshold. "
        "null turns this off",
    )
    per_set: dict[str, EvalSetThresholds] = Field(
        default_factory=dict,
        description="overrides by eval set name, e.g. {mnist: {profile: lineart}} or {cifar10: {verify_threshold: 0.97}}",
    )
    eval_zooms: list[float] = Field(
        default_factory=lambda: [0.95, 0.9],
        description="crops (fraction of each side kept) hashed as extra views of every eval image",
    )
    eval_square: bool = Field(
        True,
        description="hash the centre square of every eval image as a view (what img2dataset's center_crop keeps)",
    )
    eval_flip: bool = Field(
        True, description="hash the mirrored eval image as a view (horizontally flipped copies)"
    )
    eval_angles: list[float] = Field(
        default_factory=lambda: [5.0, -5.0],
        description="rotations (degrees, counter-clockwise) of every eval image hashed as views: each as "
        "cropped to fill and as its centre 80 % (copies rotated in place, corners filled)",
    )
    hash_at_download: bool = Field(
        True,
        description="the download stage hashes every original image before img2dataset's resizer and "
        "stores the hashes and thumbnails in the shard parquet (orig_* columns)",
    )
    original_decode_min_side: int = Field(
        64,
        ge=0,
        le=4096,
        description="the download-time hashes decode each original at the smallest DCT scale keeping this "
        "many pixels on the shorter side: finer than decode_min_side, so that a picture's box inside a canvas "
        "or a frame is found to within a pixel or two of its own size",
    )
    use_original_hashes: bool = Field(
        True,
        description="dedup uses the shard parquet's original hashes where present (else: the stored image)",
    )
    eval_anchors: int = Field(
        3,
        ge=1,
        le=5,
        description="positions per axis of each eval crop view (3: the 9 anchors corner/edge/centre; 1: centre)",
    )
    decode_min_side: int = Field(
        32,
        ge=0,
        le=4096,
        description="JPEGs (training and eval alike) are decoded at the smallest DCT scale 1/N (N = 1, 2, 4, 8) "
        "keeping at least this many pixels on the shorter side (0: full size)",
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
        0.95, ge=-1.0, le=1.0, description="min coarse thumbnail correlation to confirm a pool near-duplicate"
    )
    pool_join: Literal["partitioned", "single_node"] = Field(
        "partitioned",
        description="partitioned: the pool-duplicate joins run as hash-partitioned Ray tasks (dedup.pool_shuffle); "
        "single_node: one DuckDB on the driver in dedup.work_dir (dedup.pool.PoolIndex, the reference; same results)",
    )
    pool_partition_rows: int = Field(
        2_000_000,
        ge=1,
        description="the pool-duplicate joins (exact by digest, near by band of the pHash) are hash-partitioned "
        "into Ray tasks of about this many rows each (a task holds ~100 bytes per row at peak)",
    )
    batch_size: int = Field(256, ge=1, le=65536, description="images hashed per vectorised DCT batch")
    work_dir: str | None = Field(
        None,
        description="local directory for the single-node reference pool-duplicate database (dedup.pool.PoolIndex) "
        "and its spill files (about 30 bytes per training sample; default: a temporary directory, removed after)",
    )
    memory_limit: str | None = Field(
        None,
        description="memory each pool-duplicate join (DuckDB, one per Ray task) may use before spilling to a "
        "temporary directory, e.g. '2GB' (default: DuckDB's, 80% of RAM)",
    )

    @field_validator("memory_limit")
    @classmethod
    def _memory_size(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", v.strip()):
            raise ValueError(f"memory_limit must be a size such as '8GB' or '512MiB', got {v!r}")
        return v

    @field_validator("eval_angles")
    @classmethod
    def _angles_in_range(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if not 0 < abs(a) <= 20]
        if bad:
            raise ValueError(f"eval_angles must each be non-zero and within ±20 degrees, got {bad}")
        return v

    @field_validator("eval_zooms")
    @classmethod
    def _zooms_in_range(cls, v: list[float]) -> list[float]:
        bad = [z for z in v if not 0 < z < 1]
        if bad:
            raise ValueError(f"eval_zooms must each be in (0, 1) (fraction of each side kept), got {bad}")
        return v

    def thresholds(self, name: str, lineart: bool) -> tuple[str, int, float]:
        """(profile, tau, verify_threshold) for the eval set ``name``; ``lineart``: what profile auto detected."""
        o = self.per_set.get(name)
        profile = o.profile if o and o.profile != "auto" else ("lineart" if lineart else "natural")
        tau, thr = (
            (self.lineart_tau, self.lineart_verify_threshold)
            if profile == "lineart"
            else (self.tau, self.verify_threshold)
        )
        if o and o.tau is not None:
            tau = o.tau
        if o and o.verify_threshold is not None:
            thr = o.verify_threshold
        return profile, tau, thr


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
