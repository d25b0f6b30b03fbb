"""Vocabulary: WordNet head names, Wikipedia dump readers (plain and multistream), thresholds, cap."""

from __future__ import annotations

import bz2
import json
import math
import re
from pathlib import Path

import pytest

from crawl import wikipedia
from crawl.vocab import VocabStage
from crawl.wordnet import synset_count, synset_head_names
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import run_stage

WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "data.noun").is_file(), reason="WordNet absent: apt-get install -y wordnet-base"
)


@needs_wordnet
def test_wordnet_head_names_are_metaclip_style():
    names = synset_head_names(WORDNET)
    assert synset_count(WORDNET) == 117_659  # WordNet 3.0
    assert 86_000 <= len(names) <= 87_000  # MetaCLIP reports ~86.6k WordNet entries
    assert len(set(names)) == len(names)
    assert "dog" in names and "physical entity" in names  # `_` became a space
    assert not any("_" in n or n != n.lower() for n in names)
    assert not any(re.search(r"\((a|p|ip)\)$", n) for n in names)  # adjective markers stripped


def test_wordnet_missing_dir_is_a_config_error(tmp_path, make_config):
    with pytest.raises(ConfigError, match=r"vocab.wordnet_dir.*wordnet-base"):
        synset_head_names(tmp_path)
    cfg = make_config(f"vocab.wordnet_dir={tmp_path}", "vocab.sources=[wordnet]")
    with pytest.raises(ConfigError, match=r"vocab\.wordnet_dir"):
        VocabStage(cfg, RunDir(cfg.run)).validate()


def _excerpt_pages(shared_data: Path, n: int) -> tuple[bytes, list[bytes]]:
    """The dump's header and its first ``n`` small article pages, as raw XML."""
    xml = bz2.decompress((shared_data / "wiki" / "enwiki-excerpt-pages-articles.xml.bz2").read_bytes())
    head = xml[: xml.index(b"<page>")]
    pages = re.findall(rb"  <page>.*?</page>\n", xml, re.S)
    small = [p for p in pages if b"<redirect" not in p and b"<ns>0</ns>" in p and len(p) < 20_000]
    redirect = next(p for p in pages if b"<redirect" in p)
    return head, [redirect, *small[:n]]


def _write_dumps(tmp_path: Path, head: bytes, pages: list[bytes]) -> tuple[Path, Path]:
    plain = tmp_path / "enwiki-pages-articles.xml.bz2"
    plain.write_bytes(bz2.compress(head + b"".join(pages) + b"</mediawiki>\n"))
    # A multistream dump: header stream, streams of 3 pages, footer stream; index of page offsets.
    multi = tmp_path / "enwiki-pages-articles-multistream.xml.bz2"
    blob, index = bz2.compress(head), []
    for k in range(0, len(pages), 3):
        for j, page in enumerate(pages[k : k + 3]):
            title = re.search(rb"<title>(.*?)</title>", page).group(1).decode()
            index.append(f"{len(blob)}:{k + j + 1}:{title}")
        blob += bz2.compress(b"".join(pages[k : k + 3]))
    blob += bz2.compress(b"</mediawiki>\n")
    multi.write_bytes(blob)
    (tmp_path / "enwiki-pages-articles-multistream-index.txt.bz2").write_bytes(
        bz2.compress(("\n".join(index) + "\n").encode())
    )
    return plain, multi


def test_wikipedia_plain_and_multistream_readers_agree(shared_data, tmp_path, make_config, ray_local):
    head, pages = _excerpt_pages(shared_data, 8)
    plain, multi = _write_dumps(tmp_path, head, pages)
    parts = wikipedia.plan_parts(str(multi), None, pages_per_task=100)
    assert len(parts) == 3 and all(p.multistream for p in parts)  # index found beside the dump
    common = [
        "vocab.sources=[unigram, bigram]",
        "vocab.unigram_min_count=5",
        "vocab.bigram_min_pmi=8",
        "vocab.bigram_min_count=3",
    ]
    results = {}
    for name, dump in (("plain", plain), ("multi", multi)):
        cfg = make_config(*common, f"vocab.wikipedia.dumps=[{dump}]", run=str(tmp_path / name))
        res = run_stage(VocabStage(cfg, RunDir(cfg.run)), progress=False)
        assert res.stats.counts["articles"] == 8  # the redirect page is not counted
        assert res.stats.counts["pages_skipped_not_article"] == 1
        results[name] = RunDir(cfg.run).read_parquet("vocab/entries.parquet").to_pylist()
    assert results["plain"] == results["multi"]
    entries = results["plain"]
    uni = [e["entry"] for e in entries if e["source"] == "unigram"]
    assert "the" in uni and "of" in uni
    assert not any("{{" in e or "[[" in e for e in uni)  # markup removed
    assert [e["entry_id"] for e in entries] == list(range(len(entries)))


def _counts_file(tmp_path: Path) -> Path:
    rows = {
        "the": 1000,
        "New": 20,
        "York": 21,
        "of": 600,
        "rare": 4,
        "New York": 19,
        "of the": 300,
        "Zanzibar": 2,
        "Zanzibar archipelago": 2,
        "archipelago": 2,
    }
    path = tmp_path / "counts.tsv"
    path.write_text("".join(f"{k}\t{v}\n" for k, v in rows.items()), encoding="utf-8")
    return path


def test_thresholds_unigram_bigram_pmi(tmp_path, make_config):
    counts = _counts_file(tmp_path)
    total = 1000 + 20 + 21 + 600 + 4 + 2 + 2
    pmi_ny = math.log2(19 * total) - math.log2(20 * 21)
    pmi_of = math.log2(300 * total) - math.log2(1000 * 600)
    pmi_za = math.log2(2 * total) - math.log2(2 * 2)
    assert pmi_of < 0 < pmi_ny < pmi_za
    cfg = make_config(
        "vocab.sources=[unigram, bigram]",
        f"vocab.wikipedia.counts={counts}",
        "vocab.unigram_min_count=20",
        f"vocab.bigram_min_pmi={pmi_ny - 1e-9}",
    )
    run_stage(VocabStage(cfg, RunDir(cfg.run)), progress=False)
    got = RunDir(cfg.run).read_parquet("vocab/entries.parquet").to_pylist()
    # unigrams by count (≥ 20), then bigrams by PMI descending (≥ threshold)
    assert [(e["entry"], e["source"]) for e in got] == [
        ("the", "unigram"),
        ("of", "unigram"),
        ("York", "unigram"),
        ("New", "unigram"),
        ("Zanzibar archipelago", "bigram"),
        ("New York", "bigram"),
    ]
    cfg2 = make_config(
        "vocab.sources=[bigram]",
        f"vocab.wikipedia.counts={counts}",
        "vocab.bigram_min_count=3",
        f"vocab.bigram_min_pmi={pmi_ny - 1e-9}",
        run=str(tmp_path / "r2"),
    )
    run_stage(VocabStage(cfg2, RunDir(cfg2.run)), progress=False)
    assert RunDir(cfg2.run).read_parquet("vocab/entries.parquet").column("entry").to_pylist() == ["New York"]


def test_titles_files_order_dedup_and_cap(tmp_path, make_config):
    views = tmp_path / "pageviews-20240101-000000.gz"
    import gzip

    views.write_bytes(
        gzip.compress(
            b"en Main_Page 900 0\nen Eiffel_Tower 60 0\nen Eiffel_Tower 55 0\nde Eiffel_Tower 5000 0\n"
            b"en Special:Search 5000 0\nen Tiny_page 49 0\nen Tiny_page 49 0\nbroken line\nen.m Mobile_only 800 0\n"
        )
    )
    user = tmp_path / "metadata.json"
    user.write_text(json.dumps(["zebra crossing", "Main Page", " ", "?", "sky"]), encoding="utf-8")
    cfg = make_config(
        "vocab.sources=[title, file]",
        f"vocab.pageviews=[{views}]",
        f"vocab.files=[{user}]",
        "vocab.title_min_views=100",
    )
    res = run_stage(VocabStage(cfg, RunDir(cfg.run)), progress=False)
    got = RunDir(cfg.run).read_parquet("vocab/entries.parquet").to_pylist()
    assert [(e["entry"], e["source"]) for e in got] == [
        ("Main Page", "title"),
        ("Eiffel Tower", "title"),
        ("zebra crossing", "file"),
        ("sky", "file"),
    ]
    assert res.stats.dropped["duplicate_file"] == 1 and res.stats.dropped["unusable_file"] == 2
    assert res.stats.dropped["malformed_pageview_line"] == 1
    capped = make_config(
        "vocab.sources=[title, file]",
        f"vocab.pageviews=[{views}]",
        f"vocab.files=[{user}]",
        "vocab.title_min_views=100",
        "vocab.max_entries=3",
        run=str(tmp_path / "cap"),
    )
    run_stage(VocabStage(capped, RunDir(capped.run)), progress=False)
    assert RunDir(capped.run).read_parquet("vocab/entries.parquet").column("entry").to_pylist() == [
        "Main Page",
        "Eiffel Tower",
        "zebra crossing",
    ]


def test_missing_inputs_are_config_errors(tmp_path, make_config):
    cfg = make_config("vocab.sources=[file]", f"vocab.files=[{tmp_path}/nope.txt]")
    with pytest.raises(ConfigError, match=r"vocab.files\[0\]"):
        VocabStage(cfg, RunDir(cfg.run)).validate()
    bad = tmp_path / "bad.tsv"
    bad.write_text("word without count\n")
    cfg = make_config("vocab.sources=[unigram]", f"vocab.wikipedia.counts={bad}")
    with pytest.raises(ConfigError, match="line 1"):
        run_stage(VocabStage(cfg, RunDir(cfg.run)), progress=False)
