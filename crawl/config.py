"""Configuration schemas of the crawl stages (vocab, extract, match, balance, download)."""

from __future__ import annotations

from pipeline.section import Section


class VocabConfig(Section):
    """The query vocabulary (filled in by the curation work)."""


class ExtractConfig(Section):
    """Candidate extraction from crawls and tabular pools."""


class MatchConfig(Section):
    """Substring matching of vocabulary entries in captions."""


class BalanceConfig(Section):
    """Per-entry balancing of matched pairs."""


class DownloadConfig(Section):
    """Downloading the curated list into WebDataset shards."""
