"""Configuration schema of the eval stage."""

from __future__ import annotations

from pipeline.section import Section


class EvalConfig(Section):
    """Zero-shot, retrieval, linear probe and overlap analysis."""
