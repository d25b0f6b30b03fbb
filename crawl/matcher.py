"""Substring matching of vocabulary entries in captions, with MetaCLIP's semantics.

MetaCLIP (``metaclip/substr_matching.py``) pads the text with spaces, wraps ``, . ; : ? ! ` `` in
spaces, turns tab/CR/LF into spaces, and reports every entry whose ``" " + entry + " "`` occurs in
that text, case-sensitively. :class:`Matcher` gives exactly that answer, fast:

* the spacing is done column-wise by Arrow compute kernels (no per-row Python);
* the spaced rows of a batch sit back to back in one Arrow UTF-8 buffer, which is scanned in one
  call by ``ahocorasick_rs.BytesAhoCorasick`` (overlapping matches, so no match hides another);
  a hit is assigned to its row by its byte offset, and a hit that straddles two rows is discarded,
  so the result is the same as scanning each row alone. Matching UTF-8 bytes is equivalent to
  matching code points because every pattern starts and ends with an ASCII space and UTF-8 is
  self-synchronising.

:func:`reference_match` is a plain, independent implementation used by the tests and benchmark.
"""

from __future__ import annotations

import itertools
import threading
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: MetaCLIP's punctuation wrapped in spaces, and characters turned into a space.
PUNCTS_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
CHARS_TO_SPACE = ("\t", "\n", "\r")


def spacing(text: str) -> str:
    """MetaCLIP's text spacing, one string at a time (the reference behaviour)."""
    spaced = f" {text} "
    for p in PUNCTS_TO_WRAP:
        spaced = spaced.replace(p, f" {p} ")
    for c in CHARS_TO_SPACE:
        spaced = spaced.replace(c, " ")
    return spaced


def normalize_text(text: str) -> str:
    """Case- and Unicode-insensitive form used when ``match.normalize`` is on: NFKC, then casefold."""
    return unicodedata.normalize("NFKC", text).casefold()


def spacing_array(texts: pa.Array) -> pa.Array:
    """:func:`spacing` over an Arrow string array (nulls become empty text), column-wise."""
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    texts = pc.fill_null(texts, "")
    for p in PUNCTS_TO_WRAP:
        texts = pc.replace_substring(texts, p, f" {p} ")
    for c in CHARS_TO_SPACE:
        texts = pc.replace_substring(texts, c, " ")
    return pc.binary_join_element_wise("", texts, "", " ")


class Matcher:
    """An Aho-Corasick automaton over ``" " + entry + " "`` patterns; build once, match many batches.

    ``entries[i]`` has id ``entry_ids[i]`` (default ``i``). Entries that are empty, or that collide
    after normalisation, are handled: every id whose pattern occurs is reported.
    """

    def __init__(
        self, entries: Sequence[str], entry_ids: Sequence[int] | None = None, normalize: bool = False
    ):
        import ahocorasick_rs

        ids = (
            np.arange(len(entries), dtype=np.int32) if entry_ids is None else np.asarray(entry_ids, np.int32)
        )
        if len(ids) != len(entries):
            raise ValueError("entries and entry_ids differ in length")
        self.normalize = normalize
        # Group ids by pattern: usually one id per pattern; duplicates only after normalisation.
        by_pattern: dict[bytes, list[int]] = {}
        for entry, eid in zip(entries, ids.tolist(), strict=True):
            if not entry:
                continue  # MetaCLIP drops empty entries; an empty pattern would match everywhere
            key = normalize_text(entry) if normalize else entry
            by_pattern.setdefault(f" {key} ".encode(), []).append(eid)
        patterns = list(by_pattern)
        self.n_patterns = len(patterns)
        groups = list(by_pattern.values())
        self._simple = all(len(g) == 1 for g in groups)
        self._pattern_first = np.array([g[0] for g in groups], dtype=np.int32)
        self._groups = groups
        self._lock = threading.Lock()
        self._ac = ahocorasick_rs.BytesAhoCorasick(patterns) if patterns else None

    def match_array(self, texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Matched entry ids (sorted, unique) for every text, as an Arrow ``list<int32>`` array."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
        n = len(texts)
        if self.normalize:
            texts = pa.array(
                [normalize_text(t) if t is not None else "" for t in texts.to_pylist()], pa.string()
            )
        spaced = spacing_array(texts)
        offsets = np.frombuffer(spaced.buffers()[1], dtype=np.int32, count=n + 1, offset=spaced.offset * 4)
        data = spaced.buffers()[2]
        if self._ac is None or n == 0 or data is None:
            return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int32()))
        base = int(offsets[0])
        hay = np.frombuffer(data, dtype=np.uint8)[base : int(offsets[-1])]  # zero-copy u8 view
        # The automaton is read-only; the lock only guards against the documented buffer caveat
        # when a worker runs batches in threads.
        with self._lock:
            hits = self._ac.find_matches_as_indexes(hay, overlapping=True)
        rows_ids = self._rows_and_ids(hits, offsets - base)
        return self._to_list_array(n, *rows_ids)

    def _rows_and_ids(
        self, hits: list[tuple[int, int, int]], offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if not hits:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        flat = np.fromiter(itertools.chain.from_iterable(hits), dtype=np.int64, count=3 * len(hits))
        pat, start, end = flat[0::3], flat[1::3], flat[2::3]
        row = np.searchsorted(offsets, start, side="right") - 1
        inside = end <= offsets[row + 1]  # a hit across two rows' padding is not a match
        pat, row = pat[inside], row[inside]
        # unique (row, pattern) pairs, sorted by row; hits arrive almost sorted, so a sort + diff
        # beats np.unique's hash path by far
        key = np.sort(row * self.n_patterns + pat)
        if len(key) > 1:
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        row, pat = key // self.n_patterns, key % self.n_patterns
        if self._simple:
            return row, self._pattern_first[pat]
        rows_out, ids_out = [], []
        for r, p in zip(row.tolist(), pat.tolist(), strict=True):
            for eid in self._groups[p]:
                rows_out.append(r)
                ids_out.append(eid)
        return np.asarray(rows_out, np.int64), np.asarray(ids_out, np.int32)

    @staticmethod
    def _to_list_array(n: int, rows: np.ndarray, ids: np.ndarray) -> pa.ListArray:
        # Sort ids within each row so output does not depend on automaton pattern order; with
        # ascending ids (the usual case) they already are.
        if len(ids) > 1 and not np.all((rows[1:] > rows[:-1]) | (ids[1:] > ids[:-1])):
            order = np.lexsort((ids, rows))
            rows, ids = rows[order], ids[order]
        counts = np.bincount(rows, minlength=n)
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(counts, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.astype(np.int32)))

    def match(self, text: str) -> list[int]:
        """Matched entry ids of one text (convenience; batches via :meth:`match_array` are far faster)."""
        return self.match_array(pa.array([text], pa.string()))[0].as_py()


# ----------------------------------------------------------------------------- per-worker cache
_CACHE: dict[tuple, Matcher] = {}
_CACHE_LOCK = threading.Lock()


def cached_matcher(key: tuple, build) -> Matcher:
    """The matcher for ``key`` in this worker process, built by ``build()`` the first time only.

    ``key`` must identify what defines the automaton (entries file URL, its size/mtime, normalize),
    so a Ray worker that runs many match tasks builds the automaton once.
    """
    with _CACHE_LOCK:
        m = _CACHE.get(key)
        if m is None:
            _CACHE.clear()  # one vocabulary at a time: a 500k automaton is hundreds of MB
            m = _CACHE[key] = build()
        return m


# ----------------------------------------------------------------------------- the plain reference
def reference_match(texts: Iterable[str], entries: Sequence[str], normalize: bool = False) -> list[list[int]]:
    """Plain reference: entry ``i`` matches iff ``" " + entries[i] + " "`` is a substring of ``spacing(text)``.

    Implemented without Aho-Corasick: a pattern starts and ends with a space, so it occurs iff some
    slice of the spaced text between two space positions (inclusive) equals it; every such slice no
    longer than the longest pattern is looked up in a dict. Returns sorted ids per text.
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
