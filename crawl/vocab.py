"""``webclip vocab``: the query vocabulary → ``<run>/vocab/entries.parquet`` (entry_id, entry, source).

Sources, applied in ``vocab.sources`` order with duplicates dropped, capped at ``vocab.max_entries``:
``wordnet`` (synset head names), ``unigram`` (Wikipedia words with count ≥ ``unigram_min_count``),
``bigram`` (Wikipedia bigrams with PMI ≥ ``bigram_min_pmi``), ``title`` (article titles whose summed
page views reach ``title_min_views``) and ``file`` (user lists). Within a source the order is fixed
(WordNet file order; counts, PMI, views descending, then text; file order), so the cap is
deterministic. A source with nothing configured is skipped with a note.

Tasks: one per dump part (a multistream dump is split by its index) and one per page-view file;
each writes partial counts to ``vocab/_parts/``; :meth:`VocabStage.finalize` sums them and assembles
the entries on the driver.
"""

from __future__ import annotations

import sys
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from crawl import wikipedia
from crawl.entries import ENTRIES_SCHEMA, clean_entry, read_user_list
from crawl.paths import expand
from crawl.wordnet import check_wordnet_dir, synset_head_names
from pipeline.errors import ConfigError
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

PARTS = "vocab/_parts"


class VocabStage(Stage):
    """Builds the query vocabulary from WordNet, Wikipedia counts and titles, and user lists."""

    name = "vocab"
    outputs = ("vocab",)

    # ------------------------------------------------------------------ planning
    def _needs_wiki(self) -> bool:
        return bool({"unigram", "bigram"} & set(self.config.vocab.sources))

    def validate(self) -> None:
        cfg = self.config.vocab
        if "wordnet" in cfg.sources:
            check_wordnet_dir(cfg.wordnet_dir, "vocab.wordnet_dir")
        if self._needs_wiki():
            for i, url in enumerate(cfg.wikipedia.dumps):
                expand(url, f"vocab.wikipedia.dumps[{i}]")
            if cfg.wikipedia.counts:
                expand(cfg.wikipedia.counts, "vocab.wikipedia.counts")
        if "title" in cfg.sources:
            for i, url in enumerate(cfg.pageviews):
                expand(url, f"vocab.pageviews[{i}]")
        if "file" in cfg.sources:
            for i, url in enumerate(cfg.files):
                expand(url, f"vocab.files[{i}]")

    def check(self) -> None:
        self.validate()

    def tasks(self) -> list[Task]:
        cfg = self.config.vocab
        tasks: list[Task] = []
        if self._needs_wiki():
            parts = []
            for i, url in enumerate(cfg.wikipedia.dumps):
                for f in expand(url, f"vocab.wikipedia.dumps[{i}]"):
                    index = cfg.wikipedia.index if len(cfg.wikipedia.dumps) == 1 else None
                    parts += wikipedia.plan_parts(f, index, cfg.wikipedia.pages_per_task)
            tasks += [Task(f"wiki-{i:05d}", ("wiki", p)) for i, p in enumerate(parts)]
        if "title" in cfg.sources:
            files = [f for i, url in enumerate(cfg.pageviews) for f in expand(url, f"vocab.pageviews[{i}]")]
            tasks += [Task(f"views-{i:05d}", ("views", f)) for i, f in enumerate(files)]
        return tasks

    # ------------------------------------------------------------------ workers
    def process(self, task: Task, stats: Stats) -> None:
        kind, payload = task.payload
        if kind == "wiki":
            table = self._count_dump_part(payload, stats)
        else:
            cfg = self.config.vocab
            views, lines, bad = wikipedia.count_pageviews(
                payload, set(cfg.pageview_domains), cfg.title_min_line_views
            )
            stats.inc("pageview_lines", lines)
            stats.drop("malformed_pageview_line", bad)
            table = pa.table(
                {
                    "ngram": pa.array(list(views), pa.string()),
                    "n": pa.array([0] * len(views), pa.int8()),
                    "count": pa.array(list(views.values()), pa.int64()),
                }
            )
        self.run.write_parquet(f"{PARTS}/{task.id}.parquet", table)

    def _count_dump_part(self, part: wikipedia.DumpPart, stats: Stats) -> pa.Table:
        wcfg = self.config.vocab.wikipedia
        unigrams: Counter = Counter()
        bigrams: Counter = Counter()
        articles = 0
        for _title, ns, redirect, text in wikipedia.iter_pages(part):
            stats.inc("pages")
            if ns != 0 or redirect:
                stats.inc("pages_skipped_not_article")
                continue
            if wcfg.max_pages is not None and articles >= wcfg.max_pages:
                break
            articles += 1
            stats.inc(
                "words", wikipedia.count_text(wikipedia.strip_markup(text), unigrams, bigrams, wcfg.lowercase)
            )
        stats.inc("articles", articles)
        return wikipedia.counts_table(unigrams, bigrams)

    # ------------------------------------------------------------------ driver
    def _summed_parts(self, kind_prefix: str) -> pa.Table | None:
        files = [
            f for f in self.run.glob(f"{PARTS}/*.parquet") if f.rsplit("/", 1)[-1].startswith(kind_prefix)
        ]
        tables = [self.run.read_parquet(f) for f in files]
        if kind_prefix == "wiki" and self.config.vocab.wikipedia.counts:
            tables.append(wikipedia.read_counts_file(self.config.vocab.wikipedia.counts))
        if not tables:
            return None
        table = pa.concat_tables(tables)
        return (
            table.group_by(["ngram", "n"])
            .aggregate([("count", "sum")])
            .rename_columns(["ngram", "n", "count"])
        )

    def source_entries(self) -> dict[str, list[str]]:
        """Each configured source's entries in their deterministic order (before dedup and cap)."""
        cfg = self.config.vocab
        out: dict[str, list[str]] = {}
        wiki = self._summed_parts("wiki") if self._needs_wiki() else None
        for source in cfg.sources:
            if source == "wordnet":
                out[source] = synset_head_names(cfg.wordnet_dir)
            elif source in ("unigram", "bigram"):
                if wiki is None:
                    print(
                        f"[vocab] note: source {source!r} skipped: set vocab.wikipedia.dumps or "
                        "vocab.wikipedia.counts to use it",
                        file=sys.stderr,
                    )
                    continue
                out[source] = self._unigrams(wiki) if source == "unigram" else self._bigrams(wiki)
            elif source == "title":
                views = self._summed_parts("views")
                if views is None:
                    print(
                        "[vocab] note: source 'title' skipped: set vocab.pageviews to use it", file=sys.stderr
                    )
                    continue
                keep = views.filter(pc.greater_equal(views["count"], cfg.title_min_views))
                keep = keep.sort_by([("count", "descending"), ("ngram", "ascending")])
                out[source] = keep.column("ngram").to_pylist()
            elif source == "file":
                if not cfg.files:
                    continue
                out[source] = [
                    e
                    for i, url in enumerate(cfg.files)
                    for f in expand(url, f"vocab.files[{i}]")
                    for e in read_user_list(f)
                ]
        return out

    def _unigrams(self, wiki: pa.Table) -> list[str]:
        uni = wiki.filter(
            pc.and_(
                pc.equal(wiki["n"], 1), pc.greater_equal(wiki["count"], self.config.vocab.unigram_min_count)
            )
        )
        return uni.sort_by([("count", "descending"), ("ngram", "ascending")]).column("ngram").to_pylist()

    def _bigrams(self, wiki: pa.Table) -> list[str]:
        cfg = self.config.vocab
        uni_t = wiki.filter(pc.equal(wiki["n"], 1))
        uni = dict(zip(uni_t.column("ngram").to_pylist(), uni_t.column("count").to_pylist(), strict=True))
        total = sum(uni.values())
        bi = wiki.filter(
            pc.and_(pc.equal(wiki["n"], 2), pc.greater_equal(wiki["count"], cfg.bigram_min_count))
        )
        scored = []
        for gram, count in zip(bi.column("ngram").to_pylist(), bi.column("count").to_pylist(), strict=True):
            w1, _, w2 = gram.partition(" ")
            if w1 in uni and w2 in uni:
                pmi = wikipedia.bigram_pmi(count, uni[w1], uni[w2], total)
                if pmi >= cfg.bigram_min_pmi:
                    scored.append((-pmi, -count, gram))
        scored.sort()
        return [g for _, _, g in scored]

    def finalize(self, stats: Stats) -> None:
        cfg = self.config.vocab
        entries: dict[str, str] = {}
        per_source: Counter = Counter()
        for source, items in self.source_entries().items():
            stats.inc(f"candidates_{source}", len(items))
            for raw in items:
                if len(entries) >= cfg.max_entries:
                    stats.drop(f"over_cap_{source}")
                    continue
                entry = clean_entry(raw)
                if entry is None:
                    stats.drop(f"unusable_{source}")
                elif entry in entries:
                    stats.drop(f"duplicate_{source}")
                else:
                    entries[entry] = source
                    per_source[source] += 1
        table = pa.table(
            {
                "entry_id": pa.array(range(len(entries)), pa.int32()),
                "entry": pa.array(list(entries), pa.string()),
                "source": pa.array(list(entries.values()), pa.string()),
            },
            schema=ENTRIES_SCHEMA,
        )
        if not len(table):
            raise ConfigError(
                "vocab: no entries from any source; configure vocab.sources with inputs "
                "(vocab.wordnet_dir, vocab.wikipedia.dumps, vocab.pageviews, vocab.files)"
            )
        self.run.write_parquet(self.run.VOCAB_ENTRIES, table)
        stats.inc("entries", len(table))
        for source, n in per_source.items():
            stats.inc(f"entries_{source}", n)
        summary = ", ".join(f"{s}={per_source[s]:,}" for s in cfg.sources if s in per_source)
        print(f"[vocab] {len(table):,} entries (cap {cfg.max_entries:,}): {summary}", file=sys.stderr)

    def summary(self, stats: Stats) -> str:
        by = ", ".join(f"{k[8:]}={v:,}" for k, v in stats.counts.items() if k.startswith("entries_"))
        return f"{stats.counts.get('entries', 0):,} entries ({by})"
