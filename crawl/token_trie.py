"""The ``token_trie`` matching engine: MetaCLIP's substring semantics as a walk over token ids.

Why it is exact: a pattern ``" " + entry + " "`` starts and ends with a space, so it occurs in the
spaced text ``S`` iff, splitting ``S`` on single spaces into tokens ``t_0 … t_m`` (``t_0`` and
``t_m`` are the empty strings outside the padding), some run ``t_a … t_b`` with ``1 ≤ a ≤ b < m``
joined by single spaces equals ``entry`` — i.e. iff ``entry.split(" ")`` occurs as a contiguous
run of inner tokens. (Splitting on one character is the exact inverse of joining with it, and
empty tokens, from double spaces, are tokens like any other.) So:

1. every token of every entry gets an id; text tokens are looked up in an exact hash table of
   those tokens (a token no entry contains gets -1, which no entry continues through);
2. the entries' token-id sequences form a trie; every token position of a batch starts a walk, and
   all walks advance together, one token per vectorised step, through a :class:`U64Table` of
   ``(node, token) → child`` edges, reporting each node that completes an entry.

Nothing is approximate: a token of up to 7 bytes is its own key, a longer one's bytes are compared
in full after the hash lookup, and trie edges are exact 64-bit keys. Rows are separated by a byte that is never valid UTF-8 (:data:`ROW_END`), so a
walk cannot run from one row into the next.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crawl.spacing import ROW_END, SPACE, SpacedBatch, string_buffers
from crawl.u64table import U64Table
from crawl.uid import splitmix64

_WORD = 8  # bytes per word read at once
_SHORT = _WORD - 1  # tokens up to this many bytes are their own exact key
_LONG_TAG = np.uint64(0xFF << 56)  # top byte of a long token's key; a short key's top byte is its length
_LOW56 = np.uint64((1 << 56) - 1)
_LEN_SALT = np.uint64(0xD6E8FEB86659FD93)
# _LOW_BYTES[k] keeps the first k bytes of a little-endian word read at a token's start
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(_WORD)] + [(1 << 64) - 1], np.uint64)


def _words_at(data: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The 8 bytes at each position of ``data`` (uint8, with 8 spare bytes at the end) as little-endian uint64."""
    # A strided view with a 1-byte step reads an (unaligned) 8-byte word at every byte offset.
    # (Fancy indexing, not np.take: np.take would first copy the whole overlapping view.)
    view = np.ndarray((len(data) - _WORD + 1,), "<u8", buffer=data, strides=(1,))
    return view[positions]


def _word(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """Word ``k`` of each token: its bytes ``8k … 8k+7`` (those past its end zeroed)."""
    rest = np.clip(lengths - k * _WORD, 0, _WORD)
    return _words_at(data, starts + k * _WORD) & np.take(_LOW_BYTES, rest)


class TokenKeys:
    """The uint64 key of byte strings given as (start, length) inside a buffer, vectorised.

    A token of at most 7 bytes is its own key: its bytes, with its length in the top byte — exact,
    nothing to verify. A longer token's key is a 56-bit hash of its words and length, tagged 0xFF
    in the top byte (so it never equals a short key); only those need their bytes compared.
    """

    def __init__(self, seed: int, max_len: int):
        self.seed = splitmix64(np.array([seed], np.uint64))[0]
        self.words = max(1, -(-max_len // _WORD))  # a longer token hashes its first max_len bytes

    def keys(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        keys = _word(data, starts, lengths, 0)
        keys |= np.minimum(lengths, _SHORT).astype(np.uint64) << np.uint64(56)
        long = np.flatnonzero(lengths > _SHORT)
        if len(long):
            keys[long] = self.hash(data, starts[long], lengths[long])
        return keys

    def hash(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            h = splitmix64(
                _word(data, starts, lengths, 0) ^ (lengths.astype(np.uint64) * _LEN_SALT) ^ self.seed
            )
        more = np.flatnonzero(lengths > _WORD)
        for k in range(1, self.words):
            if not len(more):
                break
            h[more] = splitmix64(h[more] ^ _word(data, starts[more], lengths[more], k))
            more = more[lengths[more] > (k + 1) * _WORD]
        return (h & _LOW56) | _LONG_TAG


class TokenVocabulary:
    """Exact lookup of byte tokens (given by position in a buffer) → token id, -1 if absent."""

    def __init__(self, tokens: pa.StringArray):
        self.size = len(tokens)
        offsets, body = string_buffers(tokens)
        starts, lengths = offsets[:-1], np.diff(offsets)
        self.max_len = int(lengths.max(initial=0))
        data = np.concatenate((body, np.zeros(_WORD, np.uint8)))
        # A seed under which the long tokens' hashed keys are distinct (the first one, almost
        # surely); a text token's key then points at one candidate, whose bytes are then compared.
        for seed in range(64):
            keyer = TokenKeys(seed, self.max_len)
            keys = keyer.keys(data, starts, lengths)
            if len(np.unique(keys)) == len(keys):
                break
        else:  # pragma: no cover - 64 colliding 56-bit hash families do not happen
            raise RuntimeError("could not find a collision-free token hash seed")
        self.keyer = keyer
        self.table = U64Table(keys, np.arange(len(tokens), dtype=np.int32))
        # Per token id, with one extra slot read by index -1 (a miss).
        self.lengths = np.append(lengths, -1)
        self.starts = np.append(starts, 0)
        self.data = data

    def lookup(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Token id of each (start, length) token of ``data``, -1 where it is not a vocabulary token."""
        ids = self.table.get(self.keyer.keys(data, starts, lengths))
        # A short token's key is the token: found means equal. A long one's key is a hash: compare
        # its length, then every word, with the candidate's.
        found = np.flatnonzero((lengths > _SHORT) & (ids >= 0))
        same_length = self.lengths[ids[found]] == lengths[found]
        wrong, check = [found[~same_length]], found[same_length]
        for k in range(-(-self.max_len // _WORD)):
            if not len(check):
                break
            cand = ids[check]
            same = _word(data, starts[check], lengths[check], k) == _word(
                self.data, self.starts[cand], self.lengths[cand], k
            )
            wrong.append(check[~same])
            check = check[same & (lengths[check] > (k + 1) * _WORD)]
        ids[np.concatenate(wrong)] = -1
        return ids

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.lengths, self.starts, self.data)) + self.table.nbytes


class TokenTrieEngine:
    """Finds every (row, pattern) occurrence of ``patterns`` in a :class:`SpacedBatch`.

    ``patterns[i]`` is an entry as matched (already normalised when normalisation is on), non-empty
    and distinct; hits are reported by index ``i``.
    """

    name = "token_trie"

    def __init__(self, patterns: pa.StringArray):
        split = pc.split_pattern(patterns, " ")
        encoded = pc.dictionary_encode(split.flatten())
        v = self.n_tokens = len(encoded.dictionary)
        self.vocabulary = TokenVocabulary(encoded.dictionary)
        tokens = encoded.indices.to_numpy().astype(np.int64)
        starts = split.offsets.to_numpy().astype(np.int64)  # patterns have no nulls: offsets from 0
        lengths = np.diff(starts)
        # The trie, built level by level: at depth d every pattern longer than d moves from its
        # node to the child for its d-th token; np.unique numbers the new (node, token) edges.
        # Nodes are numbered from 0; an edge (parent, token) has key (parent + 1) * V + token, so
        # the root's edges (parent -1) are keys 0..V-1 and go in a dense array.
        node_of = np.full(len(patterns), -1, np.int64)
        edge_keys, edge_children = [], []
        n_nodes = 0
        for depth in range(int(lengths.max(initial=0))):
            active = np.flatnonzero(lengths > depth)
            keys = (node_of[active] + 1) * v + tokens[starts[active] + depth]
            unique, inverse = np.unique(keys, return_inverse=True)
            edge_keys.append(unique)
            edge_children.append(np.arange(n_nodes, n_nodes + len(unique)))
            node_of[active] = n_nodes + inverse
            n_nodes += len(unique)
        keys = np.concatenate(edge_keys)
        children = np.concatenate(edge_children).astype(np.int32)
        from_root = keys < v
        # One extra slot at the end of each node/token-indexed array, read by index -1, so that an
        # unknown token or a dead walk needs no branch.
        self.root_child = np.full(v + 1, -1, np.int32)
        self.root_child[keys[from_root]] = children[from_root]
        self.edges = U64Table(keys[~from_root].astype(np.uint64), children[~from_root])
        self.terminal = np.full(n_nodes + 1, -1, np.int32)
        self.terminal[node_of] = np.arange(len(patterns), dtype=np.int32)  # patterns are distinct
        self.has_child = np.zeros(n_nodes + 1, bool)
        self.has_child[keys[~from_root] // v - 1] = True
        self.n_nodes = n_nodes

    def find(self, batch: SpacedBatch) -> tuple[np.ndarray, np.ndarray]:
        """(row, pattern) of every occurrence, unordered, possibly repeated."""
        body = batch.view()
        spaces = np.flatnonzero(body == SPACE)  # the buffer ends with a space: every byte is in a token
        starts = np.empty(len(spaces), np.int64)
        starts[0] = 0
        starts[1:] = spaces[:-1] + 1
        lengths = spaces - starts
        tok = self.vocabulary.lookup(batch.data, starts, lengths)
        tok[0] = -1  # the first row's leading padding is not an inner token
        # Row of a token: rows before it = ROW_END tokens before it (only inner tokens are asked).
        row_of_token = np.cumsum(batch.data[starts] == ROW_END, dtype=np.int32)
        pos_out, pat_out = [], []

        node = self.root_child[tok]
        pos = np.flatnonzero(node >= 0)
        node = node[pos]
        step = 0
        v = np.uint64(self.n_tokens)
        while len(pos):
            pattern = self.terminal[node]
            done = pattern >= 0
            pos_out.append(pos[done])
            pat_out.append(pattern[done])
            going = self.has_child[node]
            pos, node = pos[going], node[going]
            step += 1
            # A walk alive after `step` tokens read only known tokens of one row, so pos + step is
            # still inside the buffer's tokens (the final ROW_END token is unknown).
            nxt = tok[pos + step]
            known = nxt >= 0
            pos, node, nxt = pos[known], node[known], nxt[known]
            with np.errstate(over="ignore"):
                keys = (node.astype(np.uint64) + np.uint64(1)) * v + nxt.astype(np.uint64)
            node = self.edges.get(keys)
            alive = node >= 0
            pos, node = pos[alive], node[alive]
        if not pos_out:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        hit_pos = np.concatenate(pos_out)
        return row_of_token[hit_pos].astype(np.int64), np.concatenate(pat_out).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return (
            self.vocabulary.nbytes
            + self.edges.nbytes
            + self.root_child.nbytes
            + self.terminal.nbytes
            + self.has_child.nbytes
        )
