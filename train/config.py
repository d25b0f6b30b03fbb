"""Configuration schema of the train stage."""

from __future__ import annotations

from pipeline.section import Section


class TrainConfig(Section):
    """CLIP training."""
