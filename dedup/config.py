"""Configuration schemas of the dedup and audit stages."""

from __future__ import annotations

from pipeline.section import Section


class DedupConfig(Section):
    """Deduplication against evaluation sets."""


class AuditConfig(Section):
    """The audit database and page."""
