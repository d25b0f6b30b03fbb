"""The configuration of an evaluation set, shared by dedup (hashing) and eval (zero-shot, probe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.section import InputPath, Section


class EvalSetSpec(Section):
    """One evaluation set: a name, a reader kind and where it lives.

    ``kind``: ``folder`` (one subfolder per class), ``cifar`` (``.npz`` with ``x``, ``y``, ``classes``),
    ``mnist`` (a folder with the idx ``t10k-*`` files), ``webdataset`` (tar files), ``parquet``
    (image bytes + label columns).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="short name used in tables and paths")
    kind: Literal["folder", "cifar", "mnist", "webdataset", "parquet"]
    path: InputPath
    classes: list[str] | None = Field(None, description="class names, overriding what the reader finds")
    limit: int | None = Field(
        None,
        ge=1,
        description="use a seeded, class-stratified sample of N images (quick runs); never the first N",
    )
    seed: int = Field(0, ge=0, description="seed of the `limit` sample (recorded with every result)")
    templates: str = Field("photo", description="prompt template set (eval/templates/<name>.txt) or a file path")
