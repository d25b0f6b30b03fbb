"""Configuration schema of the eval stage (pydantic models only; no heavy imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.section import InputPath, Section

#: The documented regularisation grid of the linear probe: C = 10^k for k = -6 … 6 (13 values).
#: The CLIP paper sweeps the L2 strength over 1e-6 … 1e6 (its appendix A.3); this is the same range
#: on a decade grid, which is what a CPU budget affords.
DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-6, 7))

Task = Literal["zeroshot", "retrieval", "linear_probe"]


class RetrievalSetSpec(Section):
    """One caption dataset for image→text and text→image retrieval."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="short name used in tables and paths")
    kind: Literal["coco", "webdataset"] = Field(
        description="coco: a COCO captions JSON (images + annotations); webdataset: .tar files with "
        "<key>.jpg|png|webp and <key>.txt (or .json with a 'caption'/'text' field)"
    )
    path: InputPath = Field(
        description="the captions JSON (coco) or a .tar / a folder of .tar files (webdataset)"
    )
    images: str | None = Field(
        None,
        description="coco only: the folder of the images; default: the folder named after the JSON "
        "(captions_val2017.json -> ../val2017), then the JSON's own folder",
    )
    limit: int | None = Field(
        None, ge=1, description="use a seeded random sample of N images (quick runs); never the first N"
    )
    seed: int = Field(0, ge=0, description="seed of the `limit` sample (recorded with the results)")


class LinearProbeSpec(Section):
    """A linear probe: logistic regression on image-encoder features, C swept on a validation split."""

    train: str = Field(description="name of the top-level `evalsets:` entry the probe is trained on")
    test: str | None = Field(
        None, description="eval set the probe is reported on; None: hold out `test_fraction` of `train`"
    )
    val: str | None = Field(
        None, description="eval set for the C sweep; None: carve `val_fraction` out of the training split"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training split used to pick C")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share held out as test when `test` is None")
    c_grid: list[float] = Field(
        default_factory=lambda: list(DEFAULT_C_GRID),
        min_length=1,
        description="inverse L2 strengths tried (sklearn C); default 1e-6 … 1e6, one per decade",
    )
    max_iter: int = Field(1000, ge=10, description="L-BFGS iterations per fit")

    @model_validator(mode="after")
    def _positive_grid(self) -> LinearProbeSpec:
        bad = [c for c in self.c_grid if not c > 0]
        if bad:
            raise ValueError(f"c_grid values must be > 0, got {bad}")
        return self


class EvalConfig(Section):
    """Zero-shot, retrieval, linear probe and the All/Overlap/Clean overlap analysis."""

    checkpoint: str | None = Field(
        None,
        description="model to evaluate: an exported model.pt (with model.json + tokenizer beside it) or a "
        "DeepSpeed checkpoint folder; None: <run>/train/export/model.pt",
    )
    checkpoint_name: str | None = Field(
        None, description="label of the checkpoint in results tables; default: its path relative to the run"
    )
    evalsets: list[str] | None = Field(
        None, description="names of the top-level `evalsets:` to classify zero-shot; None: all of them"
    )
    tasks: list[Task] = Field(
        default_factory=lambda: ["zeroshot", "retrieval", "linear_probe"],
        description="which kinds of evaluation run; each runs on what it is given: zeroshot on `evalsets`, "
        "retrieval on `retrieval`, linear_probe on `linear_probe`",
    )
    retrieval: list[RetrievalSetSpec] = Field(default_factory=list, description="caption sets for retrieval")
    linear_probe: list[LinearProbeSpec] = Field(default_factory=list, description="linear probes to run")
    device: str = Field("auto", description="torch device: auto (cuda when available), cpu, cuda, cuda:1 …")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype on CUDA; CPU always runs fp32"
    )
    batch_size: int = Field(256, ge=1, le=65536, description="images (or texts) per forward pass")
    top_k: int = Field(5, ge=1, le=100, description="k of the top-k list stored with each prediction")
    cache: bool = Field(True, description="cache zero-shot class embeddings under <run>/eval/cache/")
    ci_level: float = Field(
        0.995, gt=0, lt=1, description="Clopper–Pearson level on Overlap accuracy (paper: 99.5%)"
    )
