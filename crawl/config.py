"""Configuration schemas of the crawl stages (vocab, extract, match, balance, download)."""

from __future__ import annotations

from crawl.download_config import DownloadConfig
from pipeline.section import Section

__all__ = ["BalanceConfig", "DownloadConfig", "ExtractConfig", "MatchConfig", "VocabConfig"]


class VocabConfig(Section):
    """The query vocabulary (filled in by the curation work)."""


class ExtractConfig(Section):
    """Candidate extraction from crawls and tabular pools."""


class MatchConfig(Section):
    """Substring matching of vocabulary entries in captions."""


class BalanceConfig(Section):
    """Per-entry balancing of matched pairs."""
