"""``python -m demo``: the whole pipeline on one machine, on a generated mini-web served on loopback.

vocabulary → extract → match → balance → download → dedup → train (DeepSpeed, CPU) → eval → audit,
then a summary: counts that reconcile, overlaps found, zero-shot accuracy vs chance, time per stage,
and where to look. Rerunning resumes: finished stages and tasks are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from demo import miniweb
from demo.memory import PeakRSS
from demo.server import serve
from pipeline.cli import guarded, resume_note, run_stages
from pipeline.config import load_config
from pipeline.rundir import RunDir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO_ROOT.parent / "shared" / "data" / "eval" / "cifar10_test.npz"


def demo_config(run: str, web: Path, manifest: dict[str, Any], steps: int) -> dict[str, Any]:
    """The demo's run configuration (written to ``<web>/demo.yaml`` for the curious)."""
    evalsets = [{"name": "shapes", "kind": "folder", "path": str(web / "evalsets" / "shapes"),
                 "templates": "photo"}]
    if (web / "evalsets" / "cifar10.npz").is_file():
        evalsets.append({"name": "cifar10", "kind": "cifar", "path": str(web / "evalsets" / "cifar10.npz"),
                         "templates": "cifar10"})
    return {
        "run": run,
        "seed": 0,
        "evalsets": evalsets,
        "vocab": {"sources": ["file"], "files": [str(web / "vocab.txt")]},
        "extract": {"inputs": [
            {"path": str(web / "warc" / "*.warc.gz"), "kind": "warc"},
            {"path": str(web / "pool.tsv"), "kind": "tsv", "header": False, "text_column": "0",
             "url_column": "1"},
        ]},
        "balance": {"t": 60},
        "download": {
            "image_size": 64, "resize_mode": "center_crop", "samples_per_shard": 600, "thread_count": 16,
            "timeout": 5, "allow_addresses": ["127.0.0.1/32"], "per_host_concurrency": 16,
            "per_host_rps": 0,  # the mini-web is the demo's own loopback server: no rate limit
        },
        "dedup": {"mode": "remove"},
        "train": {"model": "tiny-vit", "steps": steps, "batch_size": 64, "lr": 2e-3, "warmup": 20,
                  "vocab_size": 1000, "checkpoint_every": 100, "log_every": 25, "workers": 1,
                  "deepspeed_config": str(REPO_ROOT / "infra" / "deepspeed" / "zero2_fp32.json")},
        "eval": {"tasks": ["zeroshot", "linear_probe"], "device": "cpu",
                 "linear_probe": [{"train": "shapes"}]},
    }


#: The two audit queries the summary shows (tests/e2e/test_pipeline.py runs them).
EXAMPLE_QUERIES = (
    "SELECT * FROM overlap_rate",
    "SELECT status, sum(n) AS n FROM download_status GROUP BY ALL ORDER BY n DESC",
)


def summary(run: RunDir, manifest: dict[str, Any], timings: dict[str, float],
            peak_rss: int | None = None) -> str:
    """The closing summary: stage counts, reconciliation, overlaps, zero-shot vs chance, where to look."""
    def stats(stage: str) -> dict[str, Any]:
        return run.read_json(f"stats/{stage}.json") if run.exists(f"stats/{stage}.json") else {}

    lines = ["", "=" * 78, "webclip demo: summary", "=" * 78, "", "stage     seconds  counts"]
    for stage, secs in timings.items():
        s = stats(stage)
        counts = " ".join(f"{k}={v:,}" for k, v in s.get("counts", {}).items())
        dropped = ", ".join(f"{k}={v:,}" for k, v in sorted(s.get("dropped", {}).items()))
        lines.append(f"{stage:<9} {secs:7.1f}  {counts}" + (f"  dropped: {dropped}" if dropped else ""))
    if peak_rss:
        lines.append(f"peak memory {peak_rss / 2**30:.2f} GiB (sum of RSS over the demo's process tree: "
                     "driver, Ray, trainer; sampled each second, shared pages counted per process)")
    lines.append("")
    for line in reconcile(run):
        lines.append(line)
    if run.exists(RunDir.OVERLAPS):
        ov = run.read_parquet(RunDir.OVERLAPS).to_pandas()
        ov = ov[ov.confirmed] if "confirmed" in ov else ov
        downloaded: set[str] = set()
        for part in run.glob("shards/*.parquet"):
            t = run.read_parquet(part, columns=["url", "status"]).to_pandas()
            downloaded |= set(t[t.status == "success"].url)
        for name in sorted({p["evalset"] for p in manifest["planted"]}):
            planted = {p["url"] for p in manifest["planted"] if p["evalset"] == name}
            hits = ov[ov.eval_set == name]
            found = len(planted & set(hits.url))
            others = hits[~hits.url.isin(planted)].uid.nunique()
            lines.append(f"dedup {name}: found {found} of the {len(planted & downloaded)} planted near-duplicates "
                         f"that balancing kept and download fetched ({len(planted)} planted); "
                         f"{others} other training samples flagged")
    if run.exists("eval/results.parquet"):
        lines += accuracy_lines(run.read_parquet("eval/results.parquet").to_pylist())
    if run.exists("eval/overlap.parquet"):
        def pct(v: float | None, spec: str = ".1%") -> str:
            return "n/a" if v is None else format(v, spec)

        for r in run.read_parquet("eval/overlap.parquet").to_pylist():
            line = (f"overlap analysis {r['dataset']} ({r['task']}): overlap {r['overlap_pct']:.2f}%  acc all "
                    f"{pct(r['acc_all'])}  clean {pct(r['acc_clean'])}")
            if r["n_overlap"]:
                line += f"  overlap {pct(r['acc_overlap'])}  all-clean {pct(r['all_minus_clean'], '+.2%')}"
            lines.append(line)
    elif run.exists("eval/results.parquet"):
        lines.append("overlap analysis: no dedup run: overlap unknown")
    db = run.full_url(RunDir.AUDIT_DB)
    lines += [
        "", "where to look:",
        f"  audit database   {db}  (tables and a dozen questions in SQL: README, \"For auditors\")",
        *(f"     python -c \"import duckdb; duckdb.connect('{db}', read_only=True).sql('{q}').show()\""
          for q in EXAMPLE_QUERIES),
        f"  audit page       {run.full_url(RunDir.AUDIT_PAGE)}",
        f"  training logs    tensorboard --logdir {run.full_url('train')}",
        f"  run status       webclip status {run.url}",
    ]
    return "\n".join(lines)


def accuracy_lines(results: list[dict[str, Any]]) -> list[str]:
    """One line per zero-shot and linear-probe result: top-1 beside chance and the majority-class rate
    (both from the labels evaluated), the classes present and the sample, then any warning."""
    by_task: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in results:
        if r["task"] in ("zeroshot", "linear_probe"):
            key = (r["task"], r["dataset"], r["checkpoint"])
            entry = by_task.setdefault(key, {"sample": r.get("sample"), "warning": r.get("warning")})
            entry[r["metric"]] = r["value"]
    several = len({k[2] for k in by_task}) > 1  # name the checkpoint when the run evaluated several
    lines = []
    for (task, dataset, ckpt), m in sorted(by_task.items(), key=lambda kv: (kv[0][0] != "zeroshot", kv[0])):
        label = "zero-shot" if task == "zeroshot" else "linear probe"
        dataset = dataset + (f" [{ckpt}]" if several else "")
        if "chance_top1" not in m:  # results written before baselines were recorded
            lines.append(f"{label} {dataset}: top-1 {m['top1']:.1%}")
            continue
        present, in_set = int(m["n_classes_present"]), int(m.get("n_classes_in_set", m["n_classes_present"]))
        classes = f"{present} classes" if present == in_set else f"{present} of {in_set} classes"
        lines.append(f"{label} {dataset}: top-1 {m['top1']:.1%} vs chance {m['chance_top1']:.1%}, "
                     f"majority class {m['majority_top1']:.1%} ({classes}, {int(m['n'])} images"
                     + (f", {m['sample']})" if m.get("sample") else ")"))
        if m.get("warning"):
            lines.append(f"  WARNING {m['warning']}")
    return lines


def reconcile(run: RunDir) -> list[str]:
    """Check the counts that must add up across stages; one line each, OK or MISMATCH."""
    def n_rows(pattern: str) -> int:
        return sum(run.read_parquet(p, columns=["uid"]).num_rows for p in run.glob(pattern))

    out = []
    if run.exists("stats/match.json"):
        m = run.read_json("stats/match.json")["counts"]
        pool = n_rows("pool/part-*.parquet")
        ok = pool == m.get("matched", 0) + m.get("unmatched", 0)
        out.append(f"{'OK' if ok else 'MISMATCH'}  pool {pool:,} = matched {m.get('matched', 0):,} "
                   f"+ unmatched {m.get('unmatched', 0):,}")
    if run.glob("shards/*.parquet"):
        curated = n_rows("curated/part-*.parquet")
        status = [run.read_parquet(p, columns=["status"]).column("status").to_pylist()
                  for p in run.glob("shards/*.parquet")]
        flat = [s for part in status for s in part]
        ok_n = flat.count("success")
        out.append(f"{'OK' if curated == len(flat) else 'MISMATCH'}  curated {curated:,} = downloaded {ok_n:,} "
                   f"+ failed {len(flat) - ok_n:,}")
        if run.exists("clean/sizes.json") and run.exists("stats/dedup.json"):
            clean = sum(run.read_json("clean/sizes.json").values())
            counts = run.read_json("stats/dedup.json")["counts"]
            removed = {k.removeprefix("flagged_"): v for k, v in counts.items() if k.startswith("flagged_")}
            detail = " + ".join(f"{k} {v:,}" for k, v in removed.items())
            ok = ok_n == clean + sum(removed.values())
            out.append(f"{'OK' if ok else 'MISMATCH'}  downloaded {ok_n:,} = clean {clean:,} + removed ({detail})")
    return out


def _stop_ray() -> None:
    """Shut the embedded Ray down and wait until its processes are gone (workers still running tasks
    when the demo is interrupted included), so that none outlives the mini-web server."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    procs = psutil.Process().children(recursive=True)  # before the raylet dies and its workers are orphaned
    ray.shutdown()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--port", type=int, default=8765, help="loopback port of the mini-web server")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--images", type=int, default=1600, help="training images in the mini-web")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    return guarded("demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    load_config(None, args.overrides)  # a typo in --set stops here, before the mini-web is generated
    web = Path(args.run + "-miniweb").resolve()
    manifest_path = web / "miniweb.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())  # resume: same pages, same URLs, same port
    else:
        print(f"demo: generating the mini-web in {web}", file=sys.stderr)
        spec = miniweb.MiniWebSpec(n_images=args.images)
        manifest = miniweb.build(web, args.port, spec, SHARED_CIFAR if SHARED_CIFAR.is_file() else None)
    config_file = web / "demo.yaml"
    config_file.write_text(yaml.safe_dump(demo_config(args.run, web, manifest, args.steps), sort_keys=False))
    config = load_config(config_file, args.overrides)
    timings: dict[str, float] = {}
    with PeakRSS() as memory, serve(web / "site", manifest["port"]):
        print(f"demo: mini-web on http://127.0.0.1:{manifest['port']} ({manifest['pairs']} links)",
              file=sys.stderr)
        note = resume_note(config, config.stages)
        if note:
            print(f"demo: {note}", file=sys.stderr)
        try:
            for name in config.stages:
                t0 = time.perf_counter()
                run_stages(config, [name])
                timings[name] = time.perf_counter() - t0
        finally:
            _stop_ray()  # before the mini-web goes away: no task may still be fetching from it
    print(summary(RunDir(config.run), manifest, timings, memory.peak))
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    code = main()
    # Ray is stopped and everything is written: leave without the interpreter's teardown, where a native
    # thread pool still joinable once aborted a finished demo ("terminate called without an active
    # exception", SIGABRT after the summary; seen in tests/e2e/test_interrupt.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
