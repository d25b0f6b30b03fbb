"""Stable identifiers and deterministic per-(row, entry) coin flips.

``uid`` is the hex XXH3-128 of ``url + "\\x00" + text`` (UTF-8): the same pair has the same uid on
every machine, run and Python version. Balancing turns ``(uid, entry_id, seed)`` into a uniform
number in [0, 1) with a vectorised SplitMix64 mix, so a row's fate never depends on which worker
sees it or in which order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

UID_HEX_CHARS = 32


def make_uid(url: str, text: str) -> str:
    """The stable uid of an (image URL, text) pair: 32 hex characters."""
    return xxhash.xxh3_128_hexdigest(f"{url}\x00{text}".encode("utf-8", "surrogatepass"))


#: Each byte's hex digit value, 255 for a byte that is not a hex digit.
HEX_VALUES = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    HEX_VALUES[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    HEX_VALUES[_c] = 10 + _i
# two hex characters read as one little-endian uint16 -> their byte value, 256 if either is not hex
_HEX_PAIR = np.full(1 << 16, 256, np.uint16)
_valid = np.flatnonzero(HEX_VALUES != 255)
_hi, _lo = (a.ravel() for a in np.meshgrid(_valid, _valid, indexing="ij"))
_HEX_PAIR[_hi | (_lo << 8)] = (HEX_VALUES[_hi].astype(np.uint16) << 4) | HEX_VALUES[_lo]


def as_string_array(uids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous ``string`` array of ``uids``."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks() if uids.num_chunks != 1 else uids.chunk(0)
    return uids.cast(pa.string())


def uid_block(uids: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """uint8 [n, 32]: the uids' characters, zero-copy, when every uid has exactly 32 (None otherwise)."""
    uids = as_string_array(uids)
    n = len(uids)
    if n == 0 or uids.null_count:
        return None
    offsets = np.frombuffer(uids.buffers()[1], np.int32, count=n + 1, offset=uids.offset * 4)
    if not np.all(np.diff(offsets) == UID_HEX_CHARS):
        return None
    return np.frombuffer(uids.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(n, UID_HEX_CHARS)


def u64_hex(values: np.ndarray) -> np.ndarray:
    """uint8 [n, 16]: each value's 16 lower-case hex digits, the characters :func:`uid_to_u64` reads back."""
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    return np.frombuffer(b"0123456789abcdef", np.uint8)[
        (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)
    ]


def uid_to_u64(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first 64 bits of each 32-hex uid as uint64; any other string is hashed (XXH3-64) instead.

    Row by row, so a uid's value never depends on the rest of its batch (balancing must decide the
    same for any task split).
    """
    uids = as_string_array(uids)
    n = len(uids)
    if n == 0:
        return np.empty(0, np.uint64)
    # the first 16 characters as 8 two-character pairs, each looked up as one byte value (3x faster
    # than nibble by nibble); 8 bytes read as one big-endian uint64
    block = uid_block(uids)
    if block is not None:  # every row 32 characters: one contiguous [n, 32] block, no copy
        ok = np.ones(n, bool)
        pairs = block.reshape(-1).view(np.uint16).reshape(n, UID_HEX_CHARS // 2)[:, :8]
    else:  # the 32-character rows' first 16 characters; the others are hashed below
        offsets = np.frombuffer(uids.buffers()[1], np.int32, count=n + 1, offset=uids.offset * 4)
        data = uids.buffers()[2]
        raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
        ok = np.diff(offsets) == UID_HEX_CHARS
        if uids.null_count:
            ok &= uids.is_valid().to_numpy(zero_copy_only=False)
        starts = np.where(ok, offsets[:-1], 0)
        chars = raw[starts[:, None] + np.arange(16)] if ok.any() else np.zeros((n, 16), np.uint8)
        pairs = chars.view(np.uint16)
    values = _HEX_PAIR[pairs]
    if values.max() >= 256:  # some non-hex character: find its rows
        ok &= (values < 256).all(axis=1)
    out = values.astype(np.uint8).view(">u8").ravel().astype(np.uint64)
    for i in np.flatnonzero(~ok):  # foreign uids (any string, or null): hashed, still deterministic
        out[i] = xxhash.xxh3_64_intdigest((uids[i].as_py() or "").encode())
    return out


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (a new array; wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = np.add(x, np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)  # the one copy; in place after
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


DRAW_BITS = 53


def entry_keys(entry_ids: np.ndarray, seed: int) -> np.ndarray:
    """The per-(entry, seed) half of a pair's hash, as uint64."""
    return splitmix64(entry_ids.astype(np.uint64) ^ splitmix64(np.full(1, seed, np.uint64)))


def pair_draws(uid64: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """A uniform 53-bit integer for each (uid, entry key) pair (``keys`` from :func:`entry_keys`)."""
    return splitmix64(uid64 ^ keys) >> np.uint64(64 - DRAW_BITS)


def draw_thresholds(p: np.ndarray) -> np.ndarray:
    """``ceil(p * 2**53)`` as uint64: ``draw < threshold`` exactly when ``draw / 2**53 < p``.

    (``draw`` is an integer below 2**53, so both sides are exact in float64.) Comparing integers
    avoids NumPy's slow uint64 → float64 conversion.
    """
    return np.ceil(np.asarray(p, np.float64) * float(1 << DRAW_BITS)).astype(np.uint64)


def pair_uniform(uid64: np.ndarray, entry_ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) for each (uid, entry_id) under ``seed``: deterministic and independent."""
    draws = pair_draws(uid64, entry_keys(entry_ids, seed))
    return draws.astype(np.int64).astype(np.float64) * (1.0 / (1 << DRAW_BITS))
