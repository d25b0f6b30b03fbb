"""Configuration schema of the download stage."""

from __future__ import annotations

from pipeline.section import Section


class DownloadConfig(Section):
    """Downloading the curated list into WebDataset shards."""
