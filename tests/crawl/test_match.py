"""Matching: equal to the plain MetaCLIP reference on every real caption; the stage's outputs reconcile."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from crawl import matcher as matcher_mod
from crawl.aho_corasick import AhoCorasickEngine
from crawl.count_reduce import CountMerge
from crawl.match import MatchStage
from crawl.matcher import ENGINES, Matcher, reference_match, spacing
from crawl.spacing import space_batch
from crawl.token_trie import TokenTrieEngine
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from pipeline.stats import Stats

WORDNET = Path("/usr/share/wordnet")

# Entries that exercise the semantics' corners: punctuation inside (never matchable after spacing),
# case, multi-word, non-ASCII, digits, a double space, and prefixes of one another.
EDGE_ENTRIES = [
    "St. Louis",
    "New York",
    "new york",
    "York",
    "café",
    "Café",
    "naïve",
    "3D",
    "a  b",
    "rock 'n' roll",
    "T-shirt",
    "e-mail",
    "ice",
    "ice cream",
    "cream",
    "C++",
    "U.S",
]


def _captions(shared_data: Path) -> list[str]:
    tsv = (shared_data / "captions" / "cc3m_val.tsv").read_text(encoding="utf-8")
    caps = [line.split("\t", 1)[0] for line in tsv.splitlines()]
    coco = json.loads((shared_data / "captions" / "coco_val2017_captions.json").read_text(encoding="utf-8"))
    anns = coco["annotations"] if isinstance(coco, dict) and "annotations" in coco else coco
    caps += [a["caption"] for a in anns]
    caps += [
        "New York, New York!",
        "a  b",
        "St. Louis",
        "Café\tau lait\n",
        "ice-cream and ice cream.",
        "",
        "C++?",
    ]
    return caps


def _vocabulary() -> list[str]:
    from wordfreq import top_n_list

    from crawl.wordnet import synset_head_names

    words = synset_head_names(WORDNET) if (WORDNET / "data.noun").is_file() else []
    seen = dict.fromkeys(words)
    for w in top_n_list("en", 60_000):
        seen.setdefault(w)
    for w in EDGE_ENTRIES:
        seen.setdefault(w)
    return list(seen)


@pytest.fixture(scope="module")
def vocab_and_captions(shared_data):
    return _vocabulary(), _captions(shared_data)


@pytest.fixture(scope="module")
def reference(vocab_and_captions):
    entries, captions = vocab_and_captions
    return reference_match(captions, entries)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_matcher_equals_reference_on_all_captions(vocab_and_captions, reference, engine):
    entries, captions = vocab_and_captions
    assert len(entries) >= 50_000
    assert len(captions) > 40_000
    got = Matcher(entries, engine=engine).match_array(pa.array(captions, pa.string())).to_pylist()
    ref = reference
    mismatches = [i for i, (g, r) in enumerate(zip(got, ref, strict=True)) if g != r]
    assert not mismatches, [(captions[i], got[i], ref[i]) for i in mismatches[:3]]
    assert sum(map(len, got)) > 5 * len(captions)  # a real vocabulary matches many entries per caption
    # The reference itself against the literal definition, on a sample and the edge captions.
    sample = random.Random(0).sample(range(len(captions)), 60) + list(range(len(captions) - 7, len(captions)))
    for i in sample:
        s = spacing(captions[i])
        assert ref[i] == [j for j, e in enumerate(entries) if e and f" {e} " in s]


def test_spaced_batch_is_metaclip_spacing_row_by_row():
    texts = ["a, b", "", None, "x\ty\r\n", "café, naïve!", "...", "a  b", "`q`", ",", ".a.", "日本語。"]
    for arr in (pa.array(texts), pa.array(texts).slice(2, 6), pa.array([], pa.string()), pa.array([None])):
        batch = space_batch(arr)
        data = batch.view().tobytes()
        assert data.endswith(b" ") and batch.size == len(data) == batch.starts[-1] + 1
        for r, t in enumerate(arr.to_pylist()):
            assert data[batch.starts[r] : batch.starts[r + 1]] == spacing(t or "").encode() + b"\xff"


@pytest.mark.parametrize("engine", ENGINES)
def test_semantics_corners(engine):
    entries = ["New York", "York", "St. Louis", "café", "ice cream", "ice", "cream", "a  b", "dog"]
    m = Matcher(entries, engine=engine)
    texts = [
        "New York, New York!",
        "st. louis",
        "Café au lait",
        "ice-cream",
        "ice cream.",
        "a  b",
        "Dog dog",
        None,
        "",
    ]
    assert m.match_array(pa.array(texts)).to_pylist() == [[0, 1], [], [], [], [4, 5, 6], [7], [8], [], []]
    norm = Matcher(entries, normalize=True, engine=engine)
    assert norm.match("ＮＥＷ ＹＯＲＫ and CAFÉ") == [0, 1, 3]  # NFKC + casefold
    assert reference_match(["ＮＥＷ ＹＯＲＫ and CAFÉ"], entries, normalize=True) == [[0, 1, 3]]
    # ids from an entries file need not be 0..n-1; entries colliding after normalisation both match
    m2 = Matcher(["Dog", "dog"], entry_ids=[70, 5], normalize=True, engine=engine)
    assert m2.match("a DOG") == [5, 70]
    # groups of colliding ids interleave with other entries' ids: still sorted per row
    m3 = Matcher(["Cat", "dog", "cat", "DOG"], entry_ids=[9, 4, 1, 6], normalize=True, engine=engine)
    assert m3.match_array(pa.array(["cat and dog", "dog", "x"])).to_pylist() == [[1, 4, 6, 9], [4, 6], []]


# Entries and texts built to break a matcher: empty tokens (double, leading and trailing spaces),
# entries that are prefixes or suffixes of others, punctuation inside and around entries, tabs and
# newlines, repeated entries in one text, multi-byte UTF-8 (incl. bytes that look like ASCII in other
# encodings), long tokens (> 8 bytes, so several hash words), and a lone space entry.
ADVERSARIAL_ENTRIES = [
    "a", "a a", "a a a", "a  a", " a", "a ", " ", "  ", "b", "a b", "b a", "ab", "a,", ", a", ",",
    "a . b", "a .", ".", "é", "é é", "ÉCOLE", "école", "ﬁ", "fi", "日本", "日本 語", "x\ty", "x y",
    "abcdefgh", "abcdefghi", "abcdefghijklmnopq", "abcdefghijklmnopq r", "0", "00", "ß", "ss", "İ", "i̇",
    "a\u00a0b", "a b c d e f", "b c d", "`", "` a",
]  # fmt: skip
_PIECES = ["a", "b", "ab", "é", "É", "ÉCOLE", "école", "ﬁ", "日本", "語", "abcdefgh", "abcdefghi",
           "abcdefghijklmnopq", "r", "0", "00", "ß", "SS", "İ", "c", "d", "e", "f", "x", "y", "\u00a0"]  # fmt: skip
_GLUE = [" ", " ", " ", "  ", "\t", "\n", "\r\n", ",", ", ", ".", " . ", ";", ":", "?", "!", "`", "", "-"]


def _adversarial_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        k = rng.randint(0, 12)
        parts = [rng.choice(_GLUE) if rng.random() < 0.3 else ""]
        for _ in range(k):
            parts += [rng.choice(_PIECES), rng.choice(_GLUE)]
        texts.append("".join(parts))
    return [*texts, "", " ", "  ", "a", "a a a a", "a  a", " a ", "abcdefghijklmnopq r", "x\ty"]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("engine", ENGINES)
def test_adversarial_cases_equal_reference(engine, normalize):
    texts = _adversarial_texts(3000, seed=7)
    entries = [*ADVERSARIAL_ENTRIES, "", "a"]  # an empty entry never matches; a repeated one keeps its ids
    got = Matcher(entries, normalize=normalize, engine=engine).match_array(pa.array(texts)).to_pylist()
    ref = reference_match(texts, entries, normalize=normalize)
    mismatches = [(texts[i], got[i], ref[i]) for i in range(len(texts)) if got[i] != ref[i]]
    assert not mismatches, mismatches[:3]
    assert sum(map(len, ref)) > len(texts)  # the cases do match, often
    # batches split anywhere give the same answer (rows never leak into each other)
    m = Matcher(entries, normalize=normalize, engine=engine)
    split = [
        ids
        for k in range(0, len(texts), 777)
        for ids in m.match_array(pa.array(texts[k : k + 777])).to_pylist()
    ]
    assert split == got


def test_engines_agree_on_a_random_vocabulary():
    rng = random.Random(3)
    words = ["".join(rng.choice("abcé日 ") for _ in range(rng.randint(1, 6))) for _ in range(3000)]
    entries = list(dict.fromkeys(w for w in words if w))
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 15))) for _ in range(2000)]
    results = [Matcher(entries, engine=e).match_array(pa.array(texts)).to_pylist() for e in ENGINES]
    assert results[0] == results[1] == reference_match(texts, entries)


def test_match_stage_outputs_reconcile(shared_data, tmp_path, make_config, ray_local):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["dog", "cat", "red car", "beach", "a", "man", "of the", "zebra"]) + "\n")
    cc3m = shared_data / "captions" / "cc3m_val.tsv"
    cfg = make_config(
        f"extract.inputs=[{{path: '{cc3m}', kind: tsv, header: false, text_column: '0', url_column: '1'}}]",
        "extract.rows_per_part=4000",
        f"match.entries={vocab}",
        "match.batch_rows=1000",
    )
    run = RunDir(cfg.run)
    from crawl.extract import ExtractStage

    run_stage(ExtractStage(cfg, run), progress=False)
    stage = MatchStage(cfg, run)
    stage.count_fan_in = 2  # 4 parts: the counts are summed by a sub-stage on Ray, then the driver
    res = run_stage(stage, progress=False)
    assert len(run.glob("pool/part-*.parquet")) == 4
    st = res.stats.counts
    pool = [r for p in run.glob("pool/part-*.parquet") for r in run.read_parquet(p).to_pylist()]
    matched = [r for p in run.glob("match/part-*.parquet") for r in run.read_parquet(p).to_pylist()]
    assert st["in"] == len(pool) == st["matched"] + st["unmatched"]
    assert st["matched"] == len(matched) > 0
    assert all(r["entry_ids"] for r in matched)
    entries = vocab.read_text().split("\n")[:-1]
    ref = reference_match([r["text"] for r in pool], entries)
    assert sorted((r["uid"], tuple(r["entry_ids"])) for r in matched) == sorted(
        (p["uid"], tuple(ids)) for p, ids in zip(pool, ref, strict=True) if ids
    )
    counts = run.read_parquet("match/counts.parquet")
    assert (
        counts.schema.field("entry_id").type == pa.int32() and counts.schema.field("count").type == pa.int64()
    )
    want = [sum(1 for ids in ref if i in ids) for i in range(len(entries))]
    assert counts.column("count").to_pylist() == want
    assert run.exists("stats/match.counts1.json") and not run.exists("match/_counts_reduce")
    assert {"uid", "url", "text", "page_url", "source", "entry_ids"} <= set(
        run.read_parquet(run.glob("match/part-*.parquet")[0]).column_names
    )


def test_matcher_built_once_per_worker_and_engine_selectable(tmp_path, make_config):
    vocab = tmp_path / "v.txt"
    vocab.write_text("dog\ncat\n")
    cfg = make_config(f"match.entries={vocab}", run="memory://cache-test")
    stage = MatchStage(cfg, RunDir(cfg.run))
    matcher_mod._CACHE.clear()
    first = stage.matcher()
    assert stage.matcher() is first and len(matcher_mod._CACHE) == 1
    assert isinstance(first._engine, TokenTrieEngine)  # the default
    cfg2 = make_config(f"match.entries={vocab}", "match.normalize=true", run="memory://cache-test")
    assert MatchStage(cfg2, RunDir(cfg2.run)).matcher() is not first  # what defines it changed
    cfg3 = make_config(f"match.entries={vocab}", "match.engine=aho_corasick", run="memory://cache-test")
    ac = MatchStage(cfg3, RunDir(cfg3.run)).matcher()
    assert isinstance(ac._engine, AhoCorasickEngine) and ac.match("a dog, a cat") == [0, 1]
    with pytest.raises(ConfigError, match=r"match\.engine"):
        make_config("match.engine=regex")


def test_missing_inputs(tmp_path, make_config):
    cfg = make_config(run=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="webclip vocab"):
        MatchStage(cfg, RunDir(cfg.run)).check()
    with pytest.raises(ConfigError, match=r"match\.entries"):
        MatchStage(make_config(f"match.entries={tmp_path}/none.parquet"), RunDir(cfg.run)).validate()


def _write_pool(run: RunDir, parts: list[list[str]]) -> None:
    from crawl.pairs import POOL_SCHEMA

    for k, texts in enumerate(parts):
        n = len(texts)
        run.write_parquet(
            f"pool/part-{k:05d}.parquet",
            pa.table(
                {
                    "uid": [f"{k:016x}{i:016x}" for i in range(n)],
                    "url": [f"https://x.org/{k}/{i}.jpg" for i in range(n)],
                    "text": texts,
                    "page_url": [None] * n,
                    "source": ["t"] * n,
                },
                schema=POOL_SCHEMA,
            ),
        )


def test_rerun_after_an_interrupted_count_reduction_ignores_its_leftovers(tmp_path, make_config):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dog\ncat\nred car\n")
    cfg = make_config(f"match.entries={vocab}", run="memory://match-stale-reduction")
    run = RunDir(cfg.run)
    _write_pool(run, [["a dog"], ["a cat", "dog and cat"], ["a red car"], ["dog"], ["cat"]])
    stage = MatchStage(cfg, run)
    for task in stage.tasks():
        stage.process(task, Stats())
    # A reduction interrupted after its first level (fan-in 2): its markers and sums are left.
    files = [f"match/_counts/{t.id}.parquet" for t in stage.tasks()]
    groups = [files[i : i + 2] for i in range(0, len(files), 2)]
    run_stage(CountMerge(cfg, run, "match.counts1", groups, "match/_counts_reduce/l1"), progress=False)
    run.write_json("match/_counts_reduce/layout.json", {"files": files, "fan_in": 2})
    # The pool changes under the same part names; match is rerun with --force.
    _write_pool(run, [["a dog"], ["a dog", "red car dog"], ["a red car"], ["dog"], ["cat"]])
    stage = MatchStage(cfg, run)
    stage.count_fan_in = 2
    res = run_stage(stage, progress=False, force=True)
    assert run.read_parquet("match/counts.parquet").column("count").to_pylist() == [4, 1, 2]
    assert res.stats.counts["matches"] == 7
    assert not run.glob("_done/match.counts*") and not run.exists("match/_counts_reduce")
