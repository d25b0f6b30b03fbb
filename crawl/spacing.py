"""MetaCLIP's text spacing, one string at a time (the reference) and for a whole batch in NumPy.

MetaCLIP (``metaclip/substr_matching.py``) pads the text with spaces, wraps ``, . ; : ? ! ` `` in
spaces and turns tab/CR/LF into spaces; an entry matches when ``" " + entry + " "`` occurs in that
text. :func:`space_batch` writes the spaced form of every row of an Arrow string array into one
byte buffer, so both matching engines scan a batch without any per-row Python.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: MetaCLIP's punctuation wrapped in spaces, and characters turned into a space.
PUNCTS_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
CHARS_TO_SPACE = ("\t", "\n", "\r")

#: Ends every row's segment in a batch buffer. 0xFF never occurs in UTF-8, so no pattern or token
#: can contain it: a match can never straddle two rows.
ROW_END = 0xFF
SPACE = 0x20

# All of these characters are ASCII, and an ASCII byte is never part of a multi-byte UTF-8
# character, so working on bytes is the same as working on code points.
_PUNCT_BYTES = tuple(ord(p) for p in PUNCTS_TO_WRAP)
_TO_SPACE_BYTES = tuple(ord(c) for c in CHARS_TO_SPACE)
_MAX_TO_SPACE = max(_TO_SPACE_BYTES)


def _is_punct(raw: np.ndarray) -> np.ndarray:
    # a few SIMD comparisons beat a 256-entry table lookup per byte by ~2x
    mask = np.equal(raw, _PUNCT_BYTES[0])
    tmp = np.empty_like(mask)
    for b in _PUNCT_BYTES[1:]:
        np.equal(raw, b, out=tmp)
        mask |= tmp
    return mask


def string_buffers(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets relative to the first row as int64, the rows' UTF-8 bytes) of a string array, zero-copy."""
    n = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], np.int32, count=n + 1, offset=texts.offset * 4).astype(
        np.int64
    )
    data = texts.buffers()[2]
    if data is None or not n:
        return np.zeros(n + 1, np.int64), np.empty(0, np.uint8)
    raw = np.frombuffer(data, np.uint8)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], raw


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


@dataclass(frozen=True)
class SpacedBatch:
    """The spaced rows of a batch, back to back in one UTF-8 byte buffer.

    Row ``r`` occupies ``data[starts[r]:starts[r + 1]]``, which is ``spacing(text_r)`` followed by
    the byte :data:`ROW_END`; the buffer ends with one more space, so every row segment, and the
    whole buffer, is followed by a space. ``data`` has 8 spare bytes past ``size`` so that 8-byte
    words can be read at any position inside it.
    """

    data: np.ndarray  # uint8, length size + 8
    starts: np.ndarray  # int64, n + 1; starts[n] = size - 1 (the final space)
    size: int

    @property
    def n_rows(self) -> int:
        return len(self.starts) - 1

    def view(self) -> np.ndarray:
        """The ``size`` meaningful bytes."""
        return self.data[: self.size]


def space_batch(texts: pa.Array | pa.ChunkedArray) -> SpacedBatch:
    """:func:`spacing` of every row (nulls read as empty text) into one :class:`SpacedBatch`."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")  # a null row's bytes need not be empty in Arrow
    n = len(texts)
    offsets, raw = string_buffers(texts)
    # Only wrapped punctuation and row ends move bytes, so positions are computed for those alone
    # and every other byte is copied through a boolean mask (no per-byte index arrays).
    punct = np.flatnonzero(_is_punct(raw))
    # row r starts after its input bytes' offset, 2 extra bytes per earlier punctuation mark and 3
    # per earlier row (leading space, trailing space, ROW_END)
    starts = offsets + 2 * np.searchsorted(punct, offsets) + 3 * np.arange(n + 1)
    size = int(starts[-1]) + 1
    row_of_punct = np.searchsorted(offsets, punct, side="right") - 1
    punct_out = punct + 2 * np.arange(len(punct)) + 3 * row_of_punct + 2
    copied = np.ones(size, bool)
    copied[punct_out - 1] = False
    copied[punct_out + 1] = False
    copied[starts[:-1]] = False
    copied[starts[1:] - 2] = False
    copied[starts[1:] - 1] = False
    copied[-1] = False
    out = np.full(size + 8, SPACE, np.uint8)
    body = out[:size]
    body[copied] = raw
    # tab, CR, LF become spaces; they are rare, so find candidates with one cheap comparison
    low = np.flatnonzero(body <= _MAX_TO_SPACE)
    body[low[np.isin(body[low], _TO_SPACE_BYTES)]] = SPACE
    out[starts[1:] - 1] = ROW_END
    return SpacedBatch(out, starts, size)
