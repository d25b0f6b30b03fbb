"""Benchmark of the match and balance stages against bare Aho-Corasick loops (MetaCLIP's matcher).

    python benchmarks/match.py [--entries 500000] [--captions 250000] [--parts 4] [--cpu N]

Vocabulary: WordNet 3.0 synset head names (``/usr/share/wordnet``), then ``wordfreq``'s English word
list, then ``wordsegment``'s Google Web 1T bigrams by count, deduplicated, capped at ``--entries``.
Captions: every CC3M-val and COCO-val caption, plus recombinations of two real captions at a word
boundary (seeded) up to ``--captions``, written as pool parquet parts of a throwaway run.

Measured, each in a fresh process (so peak RSS is that worker's own) pinned to one CPU (``--cpu``,
default the last one), so Arrow's and NumPy's threads cannot borrow a second core:
* whole match stage, once per engine (``match.engine``: token_trie, aho_corasick):
  ``MatchStage.process`` on every pool part (read parquet → spacing → match → write matched rows +
  counts), after the matcher is built once (build timed apart);
* references: MetaCLIP's loop — ``spacing(text)`` then one Aho-Corasick scan per caption, ids
  collected in a set — with ``pyahocorasick`` (what MetaCLIP uses) and with ``ahocorasick_rs``,
  over the same captions held in memory (no I/O charged to them);
* balance: ``BalanceStage.process`` over the matched parts (read → decide → write), and the bare
  decision (``keep_mask``, median of 7 calls) on rows in memory: as configured, with no entry at
  p = 1, and in its worst case (no pair hits, so every (row, entry) pair is hashed); beside each,
  the reference: MetaCLIP's ``balance_sampling`` loop (one ``random.random()`` per matched entry
  until a hit) over the same rows as Python lists (the list conversion not charged to it).
All four matchers must report the same number of (caption, entry) matches, or the run fails.
Rates are wall-clock; the CPU-time rate beside each shows how much a shared, loaded machine slowed it.
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


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds now: on a shared machine CPU time shows what waiting for the core hid."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def _match_worker(cpu: int, run_url: str, entries_url: str, engine: str, q) -> None:
    _pin(cpu)
    from crawl.match import MatchStage
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    cfg = load_config(None, [f"match.entries={entries_url}", f"match.engine={engine}"], run_url)
    stage = MatchStage(cfg, RunDir(run_url))
    t0 = time.perf_counter()
    stage.matcher()  # built once per worker, then reused by every task
    build = time.perf_counter() - t0
    stats = Stats()
    t0 = _clock()
    for task in stage.tasks():
        stage.process(task, stats)
    wall, cpu_s = _since(t0)
    q.put(
        {
            "build_s": build,
            "match_s": wall,
            "cpu_s": cpu_s,
            "rows": stats.counts["in"],
            "matched": stats.counts["matched"],
            "matches": stats.counts["matches"],
            "peak_mb": _peak_mb(),
        }
    )


def _pyahocorasick_worker(cpu: int, entries: list[str], captions: list[str], q) -> None:
    _pin(cpu)
    import ahocorasick

    from crawl.matcher import spacing

    t0 = time.perf_counter()
    automaton = ahocorasick.Automaton()
    for idx, key in enumerate(f" {e} " for e in entries):
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()
    build = time.perf_counter() - t0
    t0 = _clock()
    matches = 0
    for text in captions:  # MetaCLIP's substr_matching, minus the per-call global checks
        ids = set()
        for _end, (entry_id, _value) in automaton.iter(spacing(text)):
            ids.add(entry_id)
        matches += len(ids)
    _report_loop(q, build, t0, len(captions), matches)


def _report_loop(q, build_s: float, t0: float, rows: int, matches: int) -> None:
    """Send a bare reference loop's figures (timed from ``t0``) back to the parent process."""
    wall, cpu_s = _since(t0)
    q.put(
        {
            "build_s": build_s,
            "match_s": wall,
            "cpu_s": cpu_s,
            "rows": rows,
            "matches": matches,
            "peak_mb": _peak_mb(),
        }
    )


def _ahocorasick_rs_worker(cpu: int, entries: list[str], captions: list[str], q) -> None:
    _pin(cpu)
    import ahocorasick_rs

    from crawl.matcher import spacing

    t0 = time.perf_counter()
    automaton = ahocorasick_rs.AhoCorasick([f" {e} " for e in entries])
    build = time.perf_counter() - t0
    t0 = _clock()
    matches = 0
    for text in captions:  # the same loop with the Rust automaton; overlapping, so none is hidden
        matches += len({p for p, _, _ in automaton.find_matches_as_indexes(spacing(text), overlapping=True)})
    _report_loop(q, build, t0, len(captions), matches)


def _metaclip_balance_sampling(matched_entry_ids: list[int], entry_prob) -> bool:
    """MetaCLIP's per-row balancing decision, as published (the reference)."""
    for entry_id in matched_entry_ids:  # noqa: SIM110 - MetaCLIP's code as written
        if random.random() < entry_prob[entry_id]:
            return True
    return False


def _balance_worker(cpu: int, run_url: str, q) -> None:
    _pin(cpu)
    import numpy as np
    import pyarrow as pa

    from crawl.balance import BalanceStage, entry_table, keep_mask
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.stats import Stats

    cfg = load_config(None, ["balance.t=20000", "balance.plot=false"], run_url)
    stage = BalanceStage(cfg, RunDir(run_url))
    p = stage._probabilities()
    # once per worker process, before its first part: the compiled kernel loaded from numba's cache
    # (compiled on the very first run) and the entry table; reported apart from the per-part rate
    t0 = _clock()
    keep_mask(pa.array(["0" * 32]), pa.array([[0]], pa.list_(pa.int32())), stage._entry_table())
    setup_s = _since(t0)[0]
    stats = Stats()
    t0 = _clock()
    for task in stage.tasks():
        stage.process(task, stats)
    whole = _since(t0)
    tables = [stage.run.read_parquet(t.payload, columns=["uid", "entry_ids"]) for t in stage.tasks()]
    table = pa.concat_tables(tables).combine_chunks()
    uids, ids = table.column("uid").chunk(0), table.column("entry_ids").chunk(0)
    # As configured (t = 20,000); with no entry at p = 1 (p capped at 0.5: every row is hashed, but
    # most stop at their first pair's hit); and the worst case, where (almost) no pair hits, so every
    # pair of every row is hashed (p capped at 0.001). The median of 7 calls, so one preemption on a
    # shared machine does not decide the figure.
    cases = {"t": p, "no_sure": np.minimum(p, 0.5), "all_pairs": np.minimum(p, 0.001)}
    decide, reference, kept = {}, {}, {}
    # the entry table is made once per worker (BalanceStage._entry_table), not per part
    tables = {case: entry_table(probs, seed=0) for case, probs in cases.items()}
    for case in cases:
        times = []
        for _ in range(7):
            t0 = _clock()
            keep = keep_mask(uids, ids, tables[case])
            times.append(_since(t0))
        decide[case] = tuple(float(np.median(x)) for x in zip(*times, strict=True))
        kept[case] = int(keep.sum())
    # MetaCLIP's balance_sampling (metaclip/balancing.py): a Python loop per row drawing
    # random.random() per matched entry until one falls below the entry's probability.
    rows = ids.to_pylist()
    for case, probs in cases.items():
        t0 = _clock()
        hits = sum(_metaclip_balance_sampling(row, probs) for row in rows)
        reference[case] = _since(t0)
        kept[f"metaclip_{case}"] = hits
    q.put(
        {
            "rows": stats.counts["in"],
            "kept": stats.counts["out"],
            "stage_s": whole,
            "decide_s": decide,
            "setup_s": setup_s,
            "reference_s": reference,
            "kept_cases": kept,
            "decide_rows": len(table),
            "pairs": len(ids.values),
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
    ap.add_argument(
        "--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the CPU every worker is pinned to"
    )
    args = ap.parse_args()

    import pyarrow as pa

    from crawl.matcher import ENGINES
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

        cpu = args.cpu
        stages = {
            engine: _in_process(_match_worker, cpu, run.url, run.full_url("vocab/entries.parquet"), engine)
            for engine in ENGINES
        }
        refs = {
            "bare pyahocorasick loop (MetaCLIP)": _in_process(_pyahocorasick_worker, cpu, entries, captions),
            "bare ahocorasick_rs loop": _in_process(_ahocorasick_rs_worker, cpu, entries, captions),
        }
        counts = {r["matches"] for r in (*stages.values(), *refs.values())}
        assert len(counts) == 1, f"the matchers disagree on the number of matches: {counts}"
        stage = stages[ENGINES[0]]

        # match/counts.parquet, as the stage's finalize writes it, for the balance benchmark
        from crawl.match import MatchStage
        from pipeline.config import load_config
        from pipeline.stats import Stats

        done = Stats()
        done.inc("in", stage["rows"])
        done.inc("matched", stage["matched"])
        done.inc("unmatched", stage["rows"] - stage["matched"])
        MatchStage(load_config(None, [], run.url), run).finalize(done)
        bal = _in_process(_balance_worker, cpu, run.url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nmachine: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f} at the end; "
        f"every figure below is one process pinned to CPU {cpu}\n"
    )
    print(f"{'':44}{'captions/s/core':>16}{'by CPU time':>13}{'build s':>9}{'peak RSS MB':>13}")
    rows = [(f"match stage, {e} (parquet→parquet)", r) for e, r in stages.items()] + list(refs.items())
    for label, r in rows:
        print(
            f"{label:44}{r['rows'] / r['match_s']:>16,.0f}{r['rows'] / r['cpu_s']:>13,.0f}"
            f"{r['build_s']:>9.1f}{r['peak_mb']:>13,.0f}"
        )
    print(
        f"{stage['matched']:,} of {stage['rows']:,} captions matched, {stage['matches']:,} (caption, entry) "
        "matches in each"
    )
    n, (wall, cpu_s) = bal["rows"], bal["stage_s"]
    print(
        f"\nbalance stage (parquet→parquet, t=20,000): {n / wall:,.0f} rows/s/core ({n / cpu_s:,.0f} by CPU "
        f"time; {n:,} rows, {bal['kept']:,} kept), peak RSS {bal['peak_mb']:,.0f} MB; once per worker "
        f"before it: {bal['setup_s']:.2f} s (compiled kernel load, entry table)"
    )
    print(
        f"\nbalance decision, rows in memory ({bal['decide_rows']:,} rows, {bal['pairs']:,} (row, entry) pairs):"
    )
    print(f"{'':44}{'rows/s/core':>14}{'by CPU time':>14}{'kept':>10}{'MetaCLIP loop':>15}{'kept':>10}")
    labels = {
        "t": "as configured (t = 20,000)",
        "no_sure": "no entry at p = 1 (p <= 0.5)",
        "all_pairs": "worst case, every pair hashed (p <= .001)",
    }
    for case, label in labels.items():
        wall, cpu_s = bal["decide_s"][case]
        ref_wall, _ = bal["reference_s"][case]
        print(
            f"{label:44}{bal['decide_rows'] / wall:>14,.0f}{bal['decide_rows'] / cpu_s:>14,.0f}"
            f"{bal['kept_cases'][case]:>10,}{bal['decide_rows'] / ref_wall:>15,.0f}"
            f"{bal['kept_cases']['metaclip_' + case]:>10,}"
        )


if __name__ == "__main__":
    main()
