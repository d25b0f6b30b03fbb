"""Is a JPEG complete? Judged by walking its markers, not by looking at the file's tail.

The walk follows ISO/IEC 10918-1 (Annex B): SOI, then segments each with a two-byte length, then a
start-of-scan whose entropy-coded data runs until the next marker that is neither a stuffed ``FF 00``
nor a restart ``FF D0``–``FF D7``; progressive files repeat tables and scans; EOI ends the image.
Anything after EOI is not part of the image and is fine (a motion photo appends its video there).

Refused: no SOI, a segment running past the end, a file with no scan data, entropy data that runs
to the end with no EOI (a body cut short). Not detectable without decoding, and not tried: a scan
cut short and followed by a forged EOI.
"""

from __future__ import annotations

import numpy as np

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length


def jpeg_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete JPEG, or None if its markers reach EOI after scan data."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != SOI:
        return "no start-of-image marker"
    pos, scans = 2, 0
    while True:
        # a marker: 0xFF, any number of 0xFF fill bytes, then the marker code
        if pos >= n:
            return f"ends after {n} bytes without an end-of-image marker"
        if data[pos] != 0xFF:
            return f"byte {pos}: expected a marker, found 0x{data[pos]:02x}"
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return f"ends after {n} bytes inside a marker"
        code = data[pos]
        pos += 1
        if code == EOI:
            return None if scans else "no scan data before the end-of-image marker"
        if code in _STANDALONE:
            continue
        if pos + 2 > n:
            return f"ends after {n} bytes inside a segment header"
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2 or pos + length > n:
            return f"segment 0xFF{code:02X} at byte {pos - 2} runs past the end ({n} bytes)"
        pos += length
        if code != SOS:
            continue
        # entropy-coded data: skip to the first 0xFF that starts a real marker
        end = _scan_end(data, pos)
        if end < 0:
            return f"scan data runs to the end ({n} bytes) without an end-of-image marker"
        if end > pos:
            scans += 1
        pos = end


def _scan_end(data: bytes, start: int) -> int:
    """Offset of the first 0xFF at or after ``start`` that is not a stuffed ``FF 00`` or a restart
    marker (``FF D0``-``FF D7``), or -1. In numpy: a photo's entropy data holds hundreds of 0xFF
    bytes, and a Python loop over them cost ~0.6 ms per 150 KB image."""
    if start >= len(data) - 1:
        return -1
    arr = np.frombuffer(data, dtype=np.uint8, offset=start)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    nxt = arr[ff + 1]
    real = ff[(nxt != 0x00) & ((nxt < 0xD0) | (nxt > 0xD7))]
    return start + int(real[0]) if len(real) else -1
