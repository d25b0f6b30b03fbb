"""Configuration schemas of the crawl stages (vocab, extract, match, balance, download).

Only pydantic models live here (no heavy imports): ``pipeline.config`` composes them into the run's
configuration. Files the stages read are checked in each stage's ``validate()`` so that globs and
remote URLs are allowed and the error names the key, the value and the fix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from crawl.download_config import DownloadConfig
from pipeline.section import Section

__all__ = [
    "BalanceConfig",
    "DownloadConfig",
    "ExtractConfig",
    "ExtractInput",
    "MatchConfig",
    "VocabConfig",
    "WikipediaConfig",
]

VocabSource = Literal["wordnet", "unigram", "bigram", "title", "file"]


class WikipediaConfig(Section):
    """Where Wikipedia word/bigram counts come from: a ``pages-articles`` dump, or a ready counts file."""

    dumps: list[str] = Field(
        default_factory=list,
        description="pages-articles XML dumps (.xml.bz2 or .xml; path, glob or fsspec URL); a multistream "
        "dump's index (…-multistream-index.txt[.bz2] beside it, or `index`) splits it across tasks",
    )
    index: str | None = Field(
        None, description="multistream index file for a single dump (default: found beside it)"
    )
    pages_per_task: int = Field(
        20_000, ge=1, description="pages per Ray task when a multistream index is available"
    )
    max_pages: int | None = Field(None, ge=1, description="read only the first N article pages (quick runs)")
    counts: str | None = Field(
        None,
        description="ready counts instead of a dump: TSV `ngram<TAB>count` (or parquet with columns ngram, "
        "count); a unigram is one word, a bigram two words joined by one space",
    )
    lowercase: bool = Field(False, description="lower-case words before counting (MetaCLIP keeps case)")


class VocabConfig(Section):
    """The query vocabulary: sources applied in order, duplicates dropped, capped at ``max_entries``."""

    sources: list[VocabSource] = Field(
        default_factory=lambda: ["wordnet", "unigram", "bigram", "title", "file"],
        description="sources in the order they are applied; an entry already present is not added again",
    )
    max_entries: int = Field(
        500_000, ge=1, description="size cap; sources fill it in order, deterministically"
    )
    wordnet_dir: str = Field(
        "/usr/share/wordnet",
        description="WordNet 3.0 dict directory with data.noun/verb/adj/adv (Debian: apt-get install wordnet-base)",
    )
    wikipedia: WikipediaConfig = Field(default_factory=WikipediaConfig)
    unigram_min_count: int = Field(100, ge=1, description="keep words occurring at least this often")
    bigram_min_pmi: float = Field(30.0, description="keep bigrams whose PMI (log2, as NLTK) is at least this")
    bigram_min_count: int = Field(1, ge=1, description="ignore bigrams seen fewer times than this")
    pageviews: list[str] = Field(
        default_factory=list,
        description="Wikimedia pageview dump files (`domain title views bytes` per line; .gz/.bz2 ok; globs ok)",
    )
    pageview_domains: list[str] = Field(
        default_factory=lambda: ["en"], description="domain codes whose lines count (en, en.m…)"
    )
    title_min_line_views: int = Field(
        50, ge=0, description="ignore pageview lines with fewer views (MetaCLIP: 50, i.e. count // 50 > 0)"
    )
    title_min_views: int = Field(70, ge=0, description="keep titles whose summed views reach this")
    files: list[str] = Field(
        default_factory=list,
        description="user lists: plain text one entry per line, or a JSON list (e.g. MetaCLIP's metadata.json)",
    )


class ExtractInput(Section):
    """One input of candidate extraction: files of one kind, and how to read their columns.

    Files come from ``path`` (a file, a folder or a glob: a folder or glob keeps only the files of
    ``kind``, by extension and magic bytes, and names the others in the summary) or from
    ``paths_list``, a Common Crawl paths list (``crawl-data/CC-MAIN-…/wat.paths.gz``) whose
    relative paths are read under ``prefix``.
    """

    path: str | None = Field(
        None, description="a file, folder, glob or fsspec URL (e.g. s3://bucket/crawl/*.warc.gz)"
    )
    kind: Literal["warc", "wat", "parquet", "jsonl", "csv", "tsv"]
    paths_list: str | None = Field(
        None,
        description="warc/wat: a Common Crawl paths list instead of `path`, e.g. "
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-33/wat.paths.gz (one relative path per line, "
        "gzip or plain); one task per listed file",
    )
    prefix: str = Field(
        "https://data.commoncrawl.org/",
        description="paths_list: what each listed path is read under: https://data.commoncrawl.org/ "
        "(HTTPS mirror) or s3://commoncrawl/ (anonymous S3, from AWS us-east-1)",
    )
    sample: int | None = Field(
        None, ge=1, description="paths_list: a random sample of this many listed files, seeded by the run's `seed`"
    )
    limit: int | None = Field(None, ge=1, description="paths_list: at most this many files (after `sample`)")
    storage_options: dict[str, Any] | None = Field(
        None,
        description="fsspec options for opening the files (default: {anon: true} under s3://commoncrawl/, "
        "which is public)",
    )
    url_column: str = Field(
        "url", description="tabular: column (or 0-based index for headerless) of the image URL"
    )
    text_column: str = Field("text", description="tabular: column (or 0-based index) of the caption")
    page_url_column: str | None = Field(None, description="tabular: column of the page URL, if any")
    header: bool = Field(True, description="csv/tsv: the first line names the columns")
    source: str | None = Field(None, description="value of the `source` column (default: the input's kind)")

    @model_validator(mode="after")
    def _one_source_of_files(self) -> ExtractInput:
        if (self.path is None) == (self.paths_list is None):
            raise ValueError(
                "give exactly one of `path` (a file, folder or glob) and `paths_list` (a Common Crawl "
                "…/wat.paths.gz or warc.paths.gz URL)"
            )
        if self.paths_list is not None and self.kind not in ("warc", "wat"):
            raise ValueError(f"paths_list lists WARC or WAT files: set kind to warc or wat (not {self.kind!r})")
        if self.paths_list is None:
            for key in ("sample", "limit"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to a paths_list input only; remove it or use paths_list")
        return self

    @model_validator(mode="after")
    def _headerless_columns_are_indices(self) -> ExtractInput:
        if self.kind in ("csv", "tsv") and not self.header:
            for key in ("url_column", "text_column", "page_url_column"):
                value = getattr(self, key)
                if value is not None and not str(value).isdigit():
                    raise ValueError(
                        f"{key}={value!r}: a file without header names columns by 0-based index, e.g. "
                        f"url_column: '1' (CC3M's tsv is `caption<TAB>url`: text_column '0', url_column '1')"
                    )
        return self

    def open_options(self, url: str) -> dict[str, Any]:
        """fsspec options for opening ``url`` of this input: ``storage_options``, else anonymous
        access to Common Crawl's public bucket."""
        if self.storage_options is not None:
            return dict(self.storage_options)
        return {"anon": True} if url.startswith("s3://commoncrawl/") else {}


class ExtractConfig(Section):
    """Candidate (image URL, alt text) extraction from WARC/WAT crawls and tabular pools."""

    inputs: list[ExtractInput] = Field(default_factory=list, description="what to extract from, in order")
    max_text_chars: int = Field(1000, ge=1, description="alt text longer than this is dropped (alt_too_long)")
    min_text_chars: int = Field(
        1, ge=1, description="alt text shorter than this (after trim) is dropped (empty_alt)"
    )
    use_title: bool = Field(True, description="WARC: use an <img>'s title attribute when it has no alt")
    rows_per_part: int = Field(
        500_000, ge=1, description="a tabular input file is split into parts of this many rows"
    )
    dedup_bucket_rows: int = Field(
        5_000_000,
        ge=1,
        description="cross-file duplicate removal hash-partitions the pool's uids into buckets of about this "
        "many (one Ray task holds a bucket: ~100 bytes per uid at peak)",
    )
    dedup_fan_in: int = Field(
        32,
        ge=2,
        le=1024,
        description="the duplicate removal's shuffle merges its per-group uid files (and per-bucket drop files) "
        "this many at a time until at most this many are left, so a bucket task opens at most this many files "
        "instead of one per group: about fan_in x (groups + buckets) opens in all, not groups x buckets",
    )


class MatchConfig(Section):
    """Substring matching of vocabulary entries in captions (MetaCLIP semantics by default)."""

    entries: str | None = Field(
        None,
        description="a ready vocabulary to match against instead of <run>/vocab/entries.parquet: parquet with "
        "entry_id, entry (as the vocab stage writes), or a text file (one entry per line) / JSON list, "
        "whose row order gives entry_id",
    )
    normalize: bool = Field(
        False,
        description="case- and Unicode-insensitive matching (NFKC + casefold of entries and text); "
        "default False = MetaCLIP's exact, case-sensitive semantics",
    )
    engine: Literal["token_trie", "aho_corasick"] = Field(
        "token_trie",
        description="matching engine; both give exactly MetaCLIP's result: token_trie (token ids walked "
        "through a trie of entries, vectorised in NumPy; the fastest) or aho_corasick (ahocorasick_rs "
        "over the spaced bytes of each batch)",
    )
    batch_rows: int = Field(65_536, ge=1, description="rows matched per batch (bounds worker memory)")


class BalanceConfig(Section):
    """Per-entry balancing of matched pairs: keep with probability 1 − ∏(1 − min(1, t/countᵢ))."""

    t: int = Field(20_000, ge=1, description="target pairs per entry (CLIP: 20,000)")
    plot: bool = Field(True, description="write <run>/balance/longtail.png (log-log counts before vs after)")
