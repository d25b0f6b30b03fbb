"""Substring matching of vocabulary entries in captions, with MetaCLIP's semantics.

MetaCLIP (``metaclip/substr_matching.py``) pads the text with spaces, wraps ``, . ; : ? ! ` `` in
spaces, turns tab/CR/LF into spaces, and reports every entry whose ``" " + entry + " "`` occurs in
that text, case-sensitively. :class:`Matcher` gives exactly that answer for a whole Arrow batch at
a time, with one of two exact engines (``match.engine``):

* ``token_trie`` (default, :mod:`crawl.token_trie`): token ids and a trie walked for all token
  positions at once in NumPy;
* ``aho_corasick`` (:mod:`crawl.aho_corasick`): one ``ahocorasick_rs`` scan of the batch.

Both see the batch spaced by :func:`crawl.spacing.space_batch` (column-wise, no per-row Python) and
return (row, pattern) hits, which this module turns into sorted, unique entry ids per row.
:func:`reference_match` is a plain, independent implementation used by the tests and benchmark.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa

from crawl.spacing import CHARS_TO_SPACE, PUNCTS_TO_WRAP, SpacedBatch, normalize_text, space_batch, spacing

__all__ = [
    "CHARS_TO_SPACE",
    "ENGINES",
    "PUNCTS_TO_WRAP",
    "Matcher",
    "cached_matcher",
    "normalize_text",
    "reference_match",
    "spacing",
]

Engine = Literal["token_trie", "aho_corasick"]
ENGINES: tuple[Engine, ...] = ("token_trie", "aho_corasick")


class _Engine(Protocol):
    def find(self, batch: SpacedBatch) -> tuple[np.ndarray, np.ndarray]: ...


def _make_engine(name: str, patterns: pa.StringArray) -> _Engine:
    if name == "token_trie":
        from crawl.token_trie import TokenTrieEngine

        return TokenTrieEngine(patterns)
    if name == "aho_corasick":
        from crawl.aho_corasick import AhoCorasickEngine

        return AhoCorasickEngine(patterns)
    raise ValueError(f"unknown match engine {name!r}; choose one of {', '.join(ENGINES)}")


class Matcher:
    """Matches entries in batches of texts; build once (per worker), match many batches.

    ``entries[i]`` has id ``entry_ids[i]`` (default ``i``). Empty entries never match (MetaCLIP
    drops them; an empty pattern would match everywhere). Entries equal after normalisation are
    one pattern, and every id of a pattern that occurs is reported.
    """

    def __init__(
        self,
        entries: Sequence[str],
        entry_ids: Sequence[int] | None = None,
        normalize: bool = False,
        engine: Engine = "token_trie",
    ):
        ids = (
            np.arange(len(entries), dtype=np.int32) if entry_ids is None else np.asarray(entry_ids, np.int32)
        )
        if len(ids) != len(entries):
            raise ValueError("entries and entry_ids differ in length")
        self.normalize = normalize
        self.engine_name = engine
        # Entries in id order, empty ones dropped, normalised if asked: dictionary-encoding them gives
        # the distinct patterns in order of their smallest id (so hits sorted by pattern are sorted
        # by id) and, per entry, its pattern.
        order = np.argsort(ids, kind="stable")
        texts = [entries[i] for i in order.tolist()]
        keep = np.fromiter(map(bool, texts), bool, count=len(texts))
        if normalize:
            texts = [normalize_text(e) for e in texts]
        encoded = pa.array(texts, pa.string()).filter(pa.array(keep)).dictionary_encode()
        patterns: pa.StringArray = encoded.dictionary
        pattern_of = encoded.indices.to_numpy().astype(np.int64)
        kept_ids = ids[order][keep]
        by_pattern = np.argsort(pattern_of, kind="stable")  # ids ascend within each group
        sizes = np.bincount(pattern_of, minlength=len(patterns))
        self.n_patterns = len(patterns)
        self._group_offsets = np.zeros(len(patterns) + 1, np.int64)
        np.cumsum(sizes, out=self._group_offsets[1:])
        self._group_ids = kept_ids[by_pattern]
        self._simple = bool(np.all(sizes == 1))
        self._engine = _make_engine(engine, patterns) if len(patterns) else None

    def match_array(self, texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Matched entry ids (sorted, unique) for every text, as an Arrow ``list<int32>`` array."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
        n = len(texts)
        if self._engine is None or n == 0:
            return _list_array(n, np.empty(0, np.int64), np.empty(0, np.int32))
        if self.normalize:
            texts = pa.array(
                [normalize_text(t) if t is not None else "" for t in texts.to_pylist()], pa.string()
            )
        rows, patterns = self._engine.find(space_batch(texts))
        rows, ids = self._unique_ids(rows, patterns)
        return _list_array(n, rows, ids)

    def match(self, text: str) -> list[int]:
        """Matched entry ids of one text (convenience; batches via :meth:`match_array` are far faster)."""
        return self.match_array(pa.array([text], pa.string()))[0].as_py()

    def _unique_ids(self, rows: np.ndarray, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique (row, entry id) pairs, sorted by row then id."""
        if not len(rows):
            return rows, np.empty(0, np.int32)
        # One sort of a combined key (row in the high bits, so shifts split it again): numpy's SIMD
        # sort beats np.unique's hashing by far here.
        bits = np.int64(max(1, (self.n_patterns - 1).bit_length()))
        key = np.sort((rows << bits) | patterns)
        key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        rows, patterns = key >> bits, key & ((np.int64(1) << bits) - 1)
        if self._simple:
            return rows, self._group_ids[patterns]
        # A normalised pattern can stand for several entries: one output per id of its group.
        starts, sizes = self._group_offsets[patterns], np.diff(self._group_offsets)[patterns]
        rows = np.repeat(rows, sizes)
        within = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        ids = self._group_ids[np.repeat(starts, sizes) + within]
        # Groups of different patterns can interleave in id order.
        order = np.lexsort((ids, rows))
        return rows[order], ids[order]


def _list_array(n: int, rows: np.ndarray, ids: np.ndarray) -> pa.ListArray:
    """``list<int32>`` of ``n`` rows from (row, id) pairs sorted by row."""
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.astype(np.int32, copy=False)))


# ----------------------------------------------------------------------------- per-worker cache
_CACHE: dict[tuple, Matcher] = {}
_CACHE_LOCK = threading.Lock()


def cached_matcher(key: tuple, build: Callable[[], Matcher]) -> Matcher:
    """The matcher for ``key`` in this worker process, built by ``build()`` the first time only.

    ``key`` must identify what defines the matcher (entries file URL, its size/mtime, normalize,
    engine), so a Ray worker that runs many match tasks builds it once.
    """
    with _CACHE_LOCK:
        m = _CACHE.get(key)
        if m is None:
            _CACHE.clear()  # one vocabulary at a time: a 500k matcher is hundreds of MB
            m = _CACHE[key] = build()
        return m


# ----------------------------------------------------------------------------- the plain reference
def reference_match(texts: Iterable[str], entries: Sequence[str], normalize: bool = False) -> list[list[int]]:
    """Plain reference: entry ``i`` matches iff ``" " + entries[i] + " "`` is a substring of ``spacing(text)``.

    Implemented without Aho-Corasick or tokens: a pattern starts and ends with a space, so it
    occurs iff some slice of the spaced text between two space positions (inclusive) equals it;
    every such slice no longer than the longest pattern is looked up in a dict. Returns sorted ids
    per text.
    """
    norm = normalize_text if normalize else (lambda s: s)
    index: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        if e:
            index.setdefault(f" {norm(e)} ", []).append(i)
    max_len = max((len(p) for p in index), default=0)
    out = []
    for text in texts:
        s = spacing(norm(text or ""))
        spaces = [i for i, ch in enumerate(s) if ch == " "]
        found: set[int] = set()
        for a, i in enumerate(spaces):
            for j in spaces[a + 1 :]:
                if j - i + 1 > max_len:
                    break
                ids = index.get(s[i : j + 1])
                if ids:
                    found.update(ids)
        out.append(sorted(found))
    return out
