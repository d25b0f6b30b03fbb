"""The token trie engine's exact building blocks: the uint64 table and token verification."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from crawl.spacing import space_batch
from crawl.token_trie import TokenTrieEngine, TokenVocabulary
from crawl.u64table import U64Table


def test_u64_table_is_exact_for_random_and_structured_keys():
    rng = np.random.default_rng(0)
    n = 20_000
    key_sets = {
        "random": np.unique(rng.integers(0, 2**63, n, dtype=np.int64)).astype(np.uint64),
        "sequential": np.arange(n, dtype=np.uint64),
        "high bits only": np.arange(n, dtype=np.uint64) << np.uint64(44),
        "token-like": np.arange(n, dtype=np.uint64) * np.uint64(337_390) + np.uint64(5),
    }
    for name, keys in key_sets.items():
        values = rng.permutation(len(keys)).astype(np.int32)
        table = U64Table(keys, values)
        absent = np.setdiff1d(np.concatenate((keys + np.uint64(1), keys ^ np.uint64(1 << 63))), keys)
        got = table.get(np.concatenate((keys[::-1], absent)))
        assert (got[: len(keys)] == values[::-1]).all(), name
        assert (got[len(keys) :] == -1).all(), name
    with pytest.raises(ValueError, match="distinct"):
        U64Table(np.array([1, 1], np.uint64), np.array([0, 1], np.int32))


def _lookup(vocab: TokenVocabulary, tokens: list[str]) -> list[int]:
    batch = space_batch(pa.array([" ".join(tokens)]))
    data = batch.view()
    spaces = np.flatnonzero(data == 0x20)
    starts = spaces[:-1] + 1
    lengths = spaces[1:] - starts
    return vocab.lookup(batch.data, starts[: len(tokens)], lengths[: len(tokens)]).tolist()


def test_token_lookup_is_exact_and_verifies_hashed_tokens():
    words = ["abc", "abcdefghijk", "x", "", "日本語", "abcdefgh", "abcdefghijklmnopqrs"]
    vocab = TokenVocabulary(pa.array(words))
    # "abc\0" has the same first bytes as "abc", and "abcdefghijkx" the same bytes as the vocabulary
    # buffer's "abcdefghijk" followed by the next token "x": only lengths tell them apart.
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
    ]
    probe += [
        "日本",
        "",
        "abcdefgh",
        "abcdefgg",
        "abcdefghijklmnopqrs",
        "abcdefghijklmnopqrt",
        "abcdefgh\x00",
    ]
    want = [words.index(t) if t in words else -1 for t in probe]
    assert _lookup(vocab, probe) == want
    # Tokens of up to 7 bytes are their own keys. Longer ones are hashed: force every long token's
    # hash onto one vocabulary token's key, so only a byte-for-byte comparison can tell them apart.
    keyer = vocab.keyer
    for candidate, word in enumerate(words):
        if len(word.encode()) <= 7:
            continue
        forced = vocab.table.keys[vocab.table.values == candidate][0]
        keyer.hash = lambda data, starts, lengths, k=forced: np.full(len(starts), k, np.uint64)
        want = [words.index(t) if t in words and len(t.encode()) <= 7 else -1 for t in probe]
        want = [candidate if t == word else w for t, w in zip(probe, want, strict=True)]
        assert _lookup(vocab, probe) == want


def test_trie_reports_prefix_entries_and_repeats():
    patterns = pa.array(["a", "a b", "a b c", "b c", "c"])
    engine = TokenTrieEngine(patterns)
    rows, pats = engine.find(space_batch(pa.array(["a b c a b", "c", "", "a"])))
    got = sorted(zip(rows.tolist(), pats.tolist(), strict=True))
    assert got == [(0, 0), (0, 0), (0, 1), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (3, 0)]
