"""Wikipedia sources of the vocabulary: word/bigram counts from a ``pages-articles`` dump, page views.

* A dump (``.xml.bz2`` or ``.xml``) is streamed and parsed with ``xml.etree.iterparse``; only
  articles (namespace 0, not redirects) count; wiki markup is removed with ``mwparserfromhell``.
  A *multistream* dump (many concatenated bz2 streams of 100 pages, with an index file of
  ``offset:page_id:title`` lines) is split into byte ranges so Ray tasks count parts in parallel;
  a plain dump is one task.
* Words are runs of letters/digits with inner apostrophes or hyphens, so every word is matchable
  under MetaCLIP's spacing. A bigram is two words separated only by spaces (never across
  punctuation or a line break), again so it can occur in a spaced caption.
* PMI follows NLTK's ``BigramAssocMeasures.pmi`` (MetaCLIP): log2(c(xy)·N) − log2(c(x)·c(y)), N the
  total number of words.
* Page-view files have lines ``domain title views bytes``; MetaCLIP keeps ``en`` lines with at
  least 50 views, drops titles with ``:`` (other namespaces) and sums the views per title.
"""

from __future__ import annotations

import bz2
import io
import itertools
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from pipeline.errors import ConfigError

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
# Anything that breaks a bigram: every char that is not a word char, space, apostrophe or hyphen.
_SEGMENT_BREAK = re.compile(r"[^\w \t'’\-]+")


@dataclass(frozen=True)
class DumpPart:
    """A byte range of a dump to count in one task (``end`` None: to the end of the file)."""

    url: str
    start: int = 0
    end: int | None = None
    multistream: bool = False


# ----------------------------------------------------------------------------- planning
def find_index(dump_url: str) -> str | None:
    """The multistream index beside ``dump_url`` (``…-multistream.xml.bz2`` → ``…-multistream-index.txt[.bz2]``)."""
    if "multistream" not in dump_url:
        return None
    base = re.sub(r"\.xml(\.bz2)?$", "", dump_url)
    fs, _ = fsspec.core.url_to_fs(dump_url)
    for cand in (f"{base}-index.txt.bz2", f"{base}-index.txt"):
        if fs.exists(fsspec.core.url_to_fs(cand)[1]):
            return cand
    return None


def read_index_offsets(index_url: str) -> list[int]:
    """Distinct stream offsets of a multistream index (``offset:page_id:title`` lines), sorted."""
    offsets: set[int] = set()
    with fsspec.open(index_url, "rb", compression="infer") as fh:
        for raw in io.TextIOWrapper(fh, encoding="utf-8", errors="replace"):
            head = raw.split(":", 1)[0]
            if head.isdigit():
                offsets.add(int(head))
    if not offsets:
        raise ConfigError(
            f"multistream index {index_url!r} has no `offset:page_id:title` lines; check the file"
        )
    return sorted(offsets)


def plan_parts(dump_url: str, index_url: str | None, pages_per_task: int) -> list[DumpPart]:
    """Split a dump into tasks: by groups of streams when an index is known, else the whole file."""
    index_url = index_url or find_index(dump_url)
    if not index_url:
        return [DumpPart(dump_url)]
    offsets = read_index_offsets(index_url)
    streams_per_task = max(1, pages_per_task // 100)  # a dump stream holds 100 pages
    starts = offsets[::streams_per_task]
    ends: list[int | None] = [*starts[1:], None]
    return [DumpPart(dump_url, s, e, True) for s, e in zip(starts, ends, strict=True)]


# ----------------------------------------------------------------------------- reading pages
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _iter_pages_xml(fh) -> Iterator[tuple[str, int, bool, str]]:
    """(title, ns, is_redirect, wikitext) for each <page> of an XML stream."""
    title, ns, redirect, text = "", 0, False, ""
    for _event, elem in ET.iterparse(fh, events=("end",)):
        tag = _local(elem.tag)
        if tag == "title":
            title = elem.text or ""
        elif tag == "ns":
            ns = int(elem.text or 0)
        elif tag == "redirect":
            redirect = True
        elif tag == "text":
            text = elem.text or ""
        elif tag == "page":
            yield title, ns, redirect, text
            title, ns, redirect, text = "", 0, False, ""
            elem.clear()


def iter_pages(part: DumpPart) -> Iterator[tuple[str, int, bool, str]]:
    """Pages of one dump part: a whole (bz2 or plain) file, or a byte range of a multistream dump."""
    if not part.multistream:
        with fsspec.open(part.url, "rb", compression="infer") as fh:
            yield from _iter_pages_xml(fh)
        return
    with fsspec.open(part.url, "rb") as fh:
        fh.seek(part.start)
        raw = fh.read() if part.end is None else fh.read(part.end - part.start)
    # A byte range holds several concatenated bz2 streams; each decompresses on its own.
    chunks, data = [], raw
    while data:
        dec = bz2.BZ2Decompressor()
        chunks.append(dec.decompress(data))
        data = dec.unused_data
    xml = b"".join(chunks)
    last = xml.rfind(b"</page>")
    body = xml[: last + len(b"</page>")] if last >= 0 else b""  # drop the closing </mediawiki>
    yield from _iter_pages_xml(io.BytesIO(b"<pages>" + body + b"</pages>"))


def strip_markup(wikitext: str) -> str:
    """Plain text of an article: templates, links, refs and tags removed by mwparserfromhell."""
    import mwparserfromhell

    return mwparserfromhell.parse(wikitext).strip_code(normalize=True, collapse=True)


def count_text(text: str, unigrams: Counter, bigrams: Counter, lowercase: bool = False) -> int:
    """Add ``text``'s words and adjacent word pairs to the counters; returns the number of words."""
    n = 0
    for line in text.splitlines():
        for segment in _SEGMENT_BREAK.split(line):
            words = _WORD.findall(segment.lower() if lowercase else segment)
            if not words:
                continue
            n += len(words)
            unigrams.update(words)
            bigrams.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    return n


def counts_table(unigrams: Counter, bigrams: Counter) -> pa.Table:
    """Counts as a table: ngram string, n int8 (1 or 2), count int64."""
    grams = list(unigrams) + list(bigrams)
    return pa.table(
        {
            "ngram": pa.array(grams, pa.string()),
            "n": pa.array([1] * len(unigrams) + [2] * len(bigrams), pa.int8()),
            "count": pa.array(list(unigrams.values()) + list(bigrams.values()), pa.int64()),
        }
    )


def read_counts_file(url: str) -> pa.Table:
    """A ready counts file: TSV ``ngram<TAB>count`` or parquet (ngram, count) → the counts table."""
    if url.endswith(".parquet"):
        with fsspec.open(url, "rb") as fh:
            import pyarrow.parquet as pq

            t = pq.read_table(fh)
        if not {"ngram", "count"} <= set(t.column_names):
            raise ConfigError(f"vocab.wikipedia.counts {url!r}: parquet needs columns ngram, count")
        grams, counts = t.column("ngram").to_pylist(), t.column("count").to_pylist()
    else:
        grams, counts = [], []
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                    raise ConfigError(
                        f"vocab.wikipedia.counts {url!r} line {lineno}: expected `ngram<TAB>count`, got {line[:80]!r}"
                    )
                grams.append(parts[0])
                counts.append(int(parts[1]))
    n = [2 if " " in g.strip() else 1 for g in grams]
    return pa.table(
        {
            "ngram": pa.array(grams, pa.string()),
            "n": pa.array(n, pa.int8()),
            "count": pa.array(counts, pa.int64()),
        }
    )


def bigram_pmi(bigram_count: int, c1: int, c2: int, total: int) -> float:
    """NLTK's PMI of a bigram: log2(c(xy)·N) − log2(c(x)·c(y))."""
    return math.log2(bigram_count * total) - math.log2(c1 * c2)


# ----------------------------------------------------------------------------- page views
def count_pageviews(url: str, domains: set[str], min_line_views: int) -> tuple[Counter, int, int]:
    """Summed views per title (``_`` → space) from one pageview file; also (lines read, lines malformed)."""
    views: Counter = Counter()
    lines = bad = 0
    with fsspec.open(url, "rb", compression="infer") as fh:
        for raw in fh:
            lines += 1
            parts = raw.split(b" ")
            if len(parts) < 3 or not parts[2].strip().isdigit():
                bad += 1
                continue
            if parts[0].decode("ascii", "replace") not in domains:
                continue
            count = int(parts[2])
            if count < min_line_views:
                continue
            try:
                title = parts[1].decode("utf-8").replace("_", " ").strip()
            except UnicodeDecodeError:
                bad += 1
                continue
            if title and ":" not in title:  # other namespaces (Special:, File:…) are not article names
                views[title] += count
    return views, lines, bad
