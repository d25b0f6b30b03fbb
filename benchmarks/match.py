"""Benchmark of the match and balance stages against a bare pyahocorasick loop (MetaCLIP's matcher).

    python benchmarks/match.py [--entries 500000] [--captions 250000] [--parts 4]

Vocabulary: WordNet 3.0 synset head names (``/usr/share/wordnet``), then ``wordfreq``'s English word
list, then ``wordsegment``'s Google Web 1T bigrams by count, deduplicated, capped at ``--entries``.
Captions: every CC3M-val and COCO-val caption, plus recombinations of two real captions at a word
boundary (seeded) up to ``--captions``, written as pool parquet parts of a throwaway run.

Measured, each in a fresh process (so peak RSS is that worker's own):
* whole match stage, one core: ``MatchStage.process`` on every pool part (read parquet → spacing →
  Aho-Corasick → write matched rows + counts), after the automaton is built once (build timed apart);
* reference, one core: MetaCLIP's loop — ``spacing(text)`` then ``pyahocorasick.Automaton.iter`` per
  caption, ids collected in a set — over the same captions held in memory (no I/O charged to it);
* balance: ``BalanceStage.process`` over the matched parts (read → decide → write), and the bare
  vectorised decision (``keep_mask``) on rows in memory.
Results are per core: every measurement runs in one process on one core.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def build_vocabulary(n: int) -> list[str]:
    """WordNet heads, wordfreq words, wordsegment bigrams: deduplicated, in that order, capped at n."""
    import wordsegment
    from wordfreq import top_n_list

    from crawl.entries import clean_entry
    from crawl.wordnet import synset_head_names

    seen: dict[str, None] = {}
    sources = [synset_head_names("/usr/share/wordnet"), top_n_list("en", 10**6)]
    bigram_file = Path(wordsegment.__file__).with_name("bigrams.txt")
    pairs = [line.rsplit("\t", 1) for line in bigram_file.read_text(encoding="utf-8").splitlines()]
    pairs.sort(key=lambda p: (-int(p[1]), p[0]))
    sources.append([p[0] for p in pairs])
    for source in sources:
        for raw in source:
            e = clean_entry(raw)
            if e is not None:
                seen.setdefault(e)
            if len(seen) >= n:
                return list(seen)
    return list(seen)


def build_captions(n: int, seed: int = 0) -> list[str]:
    """All real CC3M/COCO captions, then seeded recombinations of two of them, n in total."""
    import json

    tsv = (DATA / "captions" / "cc3m_val.tsv").read_text(encoding="utf-8")
    caps = [line.split("\t", 1)[0] for line in tsv.splitlines()]
    coco = json.loads((DATA / "captions" / "coco_val2017_captions.json").read_text(encoding="utf-8"))
    caps += [a["caption"].strip() for a in coco["annotations"]]
    rng = random.Random(seed)
    real = list(caps)
    while len(caps) < n:
        a, b = rng.choice(real).split(), rng.choice(real).split()
        cut_a, cut_b = rng.randint(1, max(1, len(a))), rng.randint(0, max(0, len(b) - 1))
        caps.append(" ".join(a[:cut_a] + b[cut_b:]))
    return caps[:n]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _match_worker(run_url: str, entries_url: str, q) -> None:
    from crawl.match import MatchStage
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    cfg = load_config(None, [f"match.entries={entries_url}"], run_url)
    stage = MatchStage(cfg, RunDir(run_url))
    t0 = time.perf_counter()
    stage.matcher()  # built once per worker, then reused by every task
    build = time.perf_counter() - t0
    stats = Stats()
    t0 = time.perf_counter()
    for task in stage.tasks():
        stage.process(task, stats)
    q.put(
        {
            "build_s": build,
            "match_s": time.perf_counter() - t0,
            "rows": stats.counts["in"],
            "matched": stats.counts["matched"],
            "matches": stats.counts["matches"],
            "peak_mb": _peak_mb(),
        }
    )


def _pyahocorasick_worker(entries: list[str], captions: list[str], q) -> None:
    import ahocorasick

    from crawl.matcher import spacing

    t0 = time.perf_counter()
    automaton = ahocorasick.Automaton()
    for idx, key in enumerate(f" {e} " for e in entries):
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    matches = 0
    for text in captions:  # MetaCLIP's substr_matching, minus the per-call global checks
        ids = set()
        for _end, (entry_id, _value) in automaton.iter(spacing(text)):
            ids.add(entry_id)
        matches += len(ids)
    q.put(
        {
            "build_s": build,
            "match_s": time.perf_counter() - t0,
            "rows": len(captions),
            "matches": matches,
            "peak_mb": _peak_mb(),
        }
    )


def _balance_worker(run_url: str, q) -> None:
    import pyarrow as pa

    from crawl.balance import BalanceStage, keep_mask
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    cfg = load_config(None, ["balance.t=20000", "balance.plot=false"], run_url)
    stage = BalanceStage(cfg, RunDir(run_url))
    p = stage._probabilities()
    stats = Stats()
    t0 = time.perf_counter()
    for task in stage.tasks():
        stage.process(task, stats)
    whole = time.perf_counter() - t0
    tables = [stage.run.read_parquet(t.payload, columns=["uid", "entry_ids"]) for t in stage.tasks()]
    table = pa.concat_tables(tables).combine_chunks()
    uids, ids = table.column("uid").chunk(0), table.column("entry_ids").chunk(0)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        keep_mask(uids, ids, p, seed=0)
    bare = (time.perf_counter() - t0) / reps
    q.put(
        {
            "rows": stats.counts["in"],
            "kept": stats.counts["out"],
            "stage_s": whole,
            "decide_s": bare,
            "decide_rows": len(table),
            "peak_mb": _peak_mb(),
        }
    )


def _in_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    result = q.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--captions", type=int, default=250_000)
    ap.add_argument("--parts", type=int, default=4)
    args = ap.parse_args()

    import pyarrow as pa

    from crawl.pairs import POOL_SCHEMA
    from crawl.uid import make_uid
    from pipeline.rundir import RunDir

    t0 = time.perf_counter()
    entries = build_vocabulary(args.entries)
    captions = build_captions(args.captions)
    print(
        f"vocabulary {len(entries):,} entries, {len(captions):,} captions (prepared in "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="webclip-bench-match-"))
    try:
        run = RunDir(str(tmp / "run"))
        run.write_parquet(
            "vocab/entries.parquet",
            pa.table(
                {
                    "entry_id": pa.array(range(len(entries)), pa.int32()),
                    "entry": entries,
                    "source": ["bench"] * len(entries),
                }
            ),
        )
        for k in range(args.parts):
            part = captions[k :: args.parts]
            urls = [f"https://img.example.org/{k}/{i}.jpg" for i in range(len(part))]
            run.write_parquet(
                f"pool/part-{k:05d}.parquet",
                pa.table(
                    {
                        "uid": [make_uid(u, t) for u, t in zip(urls, part, strict=True)],
                        "url": urls,
                        "text": part,
                        "page_url": [None] * len(part),
                        "source": ["bench"] * len(part),
                    },
                    schema=POOL_SCHEMA,
                ),
            )

        stage = _in_process(_match_worker, run.url, run.full_url("vocab/entries.parquet"))
        ref = _in_process(_pyahocorasick_worker, entries, captions)
        assert stage["matches"] == ref["matches"], "stage and reference disagree on the number of matches"

        # match/counts.parquet, as the stage's finalize writes it, for the balance benchmark
        from crawl.match import MatchStage
        from pipeline.config import load_config
        from pipeline.stats import Stats

        done = Stats()
        done.inc("in", stage["rows"])
        done.inc("matched", stage["matched"])
        done.inc("unmatched", stage["rows"] - stage["matched"])
        MatchStage(load_config(None, [], run.url), run).finalize(done)
        bal = _in_process(_balance_worker, run.url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cps = stage["rows"] / stage["match_s"]
    rps = ref["rows"] / ref["match_s"]
    print(f"\nmachine: {os.cpu_count()} CPUs visible; every figure below is one process on one core\n")
    print(f"{'':38}{'captions/s/core':>16}{'build s':>9}{'peak RSS MB':>13}")
    print(
        f"{'webclip match stage (parquet→parquet)':38}{cps:>16,.0f}{stage['build_s']:>9.1f}{stage['peak_mb']:>13,.0f}"
    )
    print(
        f"{'bare pyahocorasick loop (MetaCLIP)':38}{rps:>16,.0f}{ref['build_s']:>9.1f}{ref['peak_mb']:>13,.0f}"
    )
    print(
        f"speed-up {cps / rps:.2f}x; {stage['matched']:,} of {stage['rows']:,} captions matched, "
        f"{stage['matches']:,} (caption, entry) matches in both"
    )
    print(
        f"\nbalance stage (parquet→parquet, t=20,000): {bal['rows'] / bal['stage_s']:,.0f} rows/s/core "
        f"({bal['rows']:,} rows, {bal['kept']:,} kept), peak RSS {bal['peak_mb']:,.0f} MB"
    )
    print(
        f"balance decision alone (keep_mask, in memory): {bal['decide_rows'] / bal['decide_s']:,.0f} rows/s/core"
    )


if __name__ == "__main__":
    main()
