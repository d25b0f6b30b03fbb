"""The token trie engine's exact building blocks: the uint64 table and token verification."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from crawl.spacing import space_batch
from crawl.token_trie import TokenTrieEngine, TokenVocabulary
from crawl.u64table import U64Table


def test_u64_table_is_exact_with_crowded_slots():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, 50_000, dtype=np.int64).astype(np.uint64))
    # keys sharing their top bits all want the same slot when the table trusts them as hashes
    crowded = np.arange(1_000, dtype=np.uint64)
    for table_keys, premixed in ((keys, False), (keys, True), (crowded, True)):
        values = np.arange(len(table_keys), dtype=np.int32)
        table = U64Table(table_keys, values, premixed=premixed)
        absent = table_keys + np.uint64(1 << 62) if not premixed or len(table_keys) < 2000 else table_keys ^ 1
        absent = absent[~np.isin(absent, table_keys)]
        query = np.concatenate((table_keys[::-1], absent))
        got = table.get(query)
        assert (got[: len(table_keys)] == values[::-1]).all()
        assert (got[len(table_keys) :] == -1).all()
    with pytest.raises(ValueError, match="distinct"):
        U64Table(np.array([1, 1], np.uint64), np.array([0, 1], np.int32))


def _lookup(vocab: TokenVocabulary, tokens: list[str]) -> list[int]:
    batch = space_batch(pa.array([" ".join(tokens)]))
    data = batch.view()
    spaces = np.flatnonzero(data == 0x20)
    starts = spaces[:-1] + 1
    lengths = spaces[1:] - starts
    return vocab.lookup(batch.data, starts[: len(tokens)], lengths[: len(tokens)]).tolist()


def test_token_lookup_verifies_every_byte_after_the_hash():
    words = ["abc", "abcdefghijk", "x", "", "日本語"]
    vocab = TokenVocabulary(pa.array(words))
    # "abc\0" has the same masked first word as "abc", and "abcdefghijkx" the same bytes as the
    # vocabulary buffer's "abcdefghijk" followed by the next token "x": only lengths tell them apart.
    probe = [
        "abc",
        "abd",
        "ab",
        "abcd",
        "abc\x00",
        "abcdefghijk",
        "abcdefghijz",
        "abcdefghijkx",
        "x",
        "日本語",
        "日本",
    ]
    assert _lookup(vocab, probe) == [0, -1, -1, -1, -1, 1, -1, -1, 2, 4, -1]
    # Force hash collisions: every token's hash now points at one candidate; only its exact bytes pass.
    for candidate in range(len(words)):
        vocab.table.get = lambda h, c=candidate: np.full(len(h), c, np.int32)
        want = [candidate if t == words[candidate] else -1 for t in probe]
        assert _lookup(vocab, probe) == want


def test_trie_reports_prefix_entries_and_repeats():
    patterns = pa.array(["a", "a b", "a b c", "b c", "c"])
    engine = TokenTrieEngine(patterns)
    rows, pats = engine.find(space_batch(pa.array(["a b c a b", "c", "", "a"])))
    got = sorted(zip(rows.tolist(), pats.tolist(), strict=True))
    assert got == [(0, 0), (0, 0), (0, 1), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (3, 0)]
