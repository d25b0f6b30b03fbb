"""Helpers for dedup tests: write download-stage shards (img2dataset webdataset layout) and a small run."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_shard(run: Path, index: int, samples: list[dict]) -> None:
    """``<run>/shards/NNNNN.{tar,parquet}`` + ``_stats.json`` as img2dataset writes them.

    Each sample: key, uid, url, caption, entry_ids and ``jpg`` bytes, or ``status`` (a failure).
    """
    shard_dir = run / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    name = f"{index:05d}"
    rows = []
    with tarfile.open(shard_dir / f"{name}.tar", "w") as tf:
        for s in samples:
            ok = s.get("status", "success") == "success"
            meta = {k: s[k] for k in ("key", "uid", "url", "caption", "entry_ids")}
            meta.update(status="success" if ok else s["status"])
            rows.append({**meta, "error_message": None if ok else s["status"], "width": 0, "height": 0})
            if not ok:
                continue
            for ext, data in (
                ("jpg", s["jpg"]),
                ("json", json.dumps(meta).encode()),
                ("txt", s["caption"].encode()),
            ):
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("key", pa.string()),
                ("uid", pa.string()),
                ("url", pa.string()),
                ("caption", pa.string()),
                ("entry_ids", pa.list_(pa.int32())),
                ("status", pa.string()),
                ("error_message", pa.string()),
                ("width", pa.int32()),
                ("height", pa.int32()),
            ]
        ),
    )
    pq.write_table(table, shard_dir / f"{name}.parquet")
    n_ok = sum(r["status"] == "success" for r in rows)
    (shard_dir / f"{name}_stats.json").write_text(json.dumps({"count": len(rows), "successes": n_ok}))


def planted_eval_ids(shared_data: Path) -> dict[str, list[str]]:
    """The eval images :func:`build_training_shards` plants copies of: members of the eval sets'
    `limit` samples (a sample, not the first N), the first in record order: ``cifar`` (3 upscaled
    copies), ``bordered`` (1 CIFAR image in a white border), ``mnist`` (2 copies)."""
    from pipeline.config import load_config
    from pipeline.evalsets import open_evalset

    cfg = load_config(None, evalset_specs(shared_data))
    ids = {s.name: [r.eval_id for r in open_evalset(s)] for s in cfg.evalsets}
    return {"cifar": ids["cifar10"][:3], "bordered": ids["cifar10"][3:4], "mnist": ids["mnist"][:2]}


def build_training_shards(run: Path, shared_data: Path) -> dict[str, list[str]]:
    """Two shards mixing overlaps with CIFAR/MNIST eval images, distinct photos, duplicates and a broken file.

    Returns the keys planted for each expectation (the eval ids copied: :func:`planted_eval_ids`).
    """
    cifar = np.load(shared_data / "eval" / "cifar10_test.npz")["x"]
    from pipeline.evalsets import _read_idx

    mnist = _read_idx(next((shared_data / "eval" / "mnist").glob("t10k-images*")))
    photos = sorted((shared_data / "photos").rglob("*.jpg"))[:16]
    expect: dict[str, list[str]] = {
        k: [] for k in ("cifar", "mnist", "exact_dup", "clean", "broken", "bordered")
    }
    samples: list[list[dict]] = [[], []]

    def add(shard: int, img_bytes: bytes, kind: str, entry: int) -> None:
        key = f"{shard:05d}{len(samples[shard]):04d}"
        samples[shard].append(
            dict(
                key=key,
                uid=f"u{key}",
                url=f"http://img.test/{key}.jpg",
                caption=f"a photo of {kind} {key}",
                entry_ids=[entry],
                jpg=img_bytes,
            )
        )
        expect[kind].append(key)

    planted = {k: [int(i) for i in v] for k, v in planted_eval_ids(shared_data).items()}
    for i in planted[
        "cifar"
    ]:  # CIFAR test images in the eval sample, upscaled and re-encoded as a crawl would
        add(0, jpeg(Image.fromarray(cifar[i]).resize((128, 128), Image.BICUBIC), 85), "cifar", 1)
    add(
        0,
        jpeg(
            ImageOps.expand(
                Image.fromarray(cifar[planted["bordered"][0]]).resize((96, 96)),
                border=8,
                fill=(255, 255, 255),
            )
        ),
        "bordered",
        2,
    )
    for i in planted["mnist"]:  # MNIST test images in the eval sample
        add(1, jpeg(Image.fromarray(mnist[i]).resize((112, 112), Image.BICUBIC), 92), "mnist", 3)
    for shard, p in enumerate(photos):
        img = Image.open(p).convert("RGB")
        img.thumbnail((160, 160))
        add(shard % 2, jpeg(img), "clean", 4 + shard)
    dup = samples[0][-1]["jpg"]
    add(1, dup, "exact_dup", 99)
    add(1, b"\xff\xd8\xff\xe0 not really a jpeg", "broken", 100)
    samples[1].append(
        dict(
            key="000019999",
            uid="ufail",
            url="http://img.test/x",
            caption="failed",
            entry_ids=[5],
            status="failed_to_download",
        )
    )
    for shard, rows in enumerate(samples):
        write_shard(run, shard, rows)
    return expect


def evalset_specs(shared_data: Path) -> list[str]:
    """``--set`` overrides configuring CIFAR-10 and MNIST test (a stratified 300 of each) as eval sets."""
    eval_dir = shared_data / "eval"
    return [
        f"evalsets=[{{name: cifar10, kind: cifar, path: '{eval_dir / 'cifar10_test.npz'}', limit: 300}}, "
        f"{{name: mnist, kind: mnist, path: '{eval_dir / 'mnist'}', limit: 300}}]",
    ]


@pytest.fixture
def evalset_overrides(shared_data) -> list[str]:
    return evalset_specs(shared_data)


def write_upstream_artifacts(run: Path) -> None:
    """Artifacts of the crawl stages (vocab, pool, match, balance, curated) per DESIGN.md, consistent with the shards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    download = pa.concat_tables([pq.read_table(p) for p in sorted((run / "shards").glob("*.parquet"))])
    names = {1: "airplane", 2: "frog", 3: "seven", 5: "dog"}
    entries = pa.table(
        {
            "entry_id": pa.array(range(101), pa.int32()),
            "entry": [names.get(i, f"entry {i}") for i in range(101)],
            "source": ["wordnet" if i in names else "unigram" for i in range(101)],
        }
    )
    (run / "vocab").mkdir(parents=True, exist_ok=True)
    pq.write_table(entries, run / "vocab" / "entries.parquet")
    curated = download.select(["uid", "url", "caption", "entry_ids"]).rename_columns(
        ["uid", "url", "text", "entry_ids"]
    )
    unmatched = pa.table(
        {
            "uid": ["p1", "p2"],
            "url": ["http://img.test/p1.jpg", "http://img.test/p2.jpg"],
            "text": ["nothing here", "nor here"],
            "entry_ids": pa.array([[], []], pa.list_(pa.int32())),
        }
    )
    pool = pa.concat_tables([curated, unmatched]).drop_columns(["entry_ids"])
    pool = pool.append_column("page_url", pa.array(["http://page.test/"] * pool.num_rows))
    pool = pool.append_column("source", pa.array(["tsv"] * pool.num_rows))
    for folder, table in (("pool", pool), ("match", curated), ("curated", curated)):
        (run / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, run / folder / "part-00000.parquet")
    ids = curated.column("entry_ids").combine_chunks().flatten().to_numpy()
    counts = np.bincount(ids, minlength=101)
    nz = np.flatnonzero(counts)
    pq.write_table(
        pa.table({"entry_id": nz.astype(np.int32), "count": counts[nz].astype(np.int64)}),
        run / "match" / "counts.parquet",
    )
    (run / "balance").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "entry_id": nz.astype(np.int32),
                "entry": [entries["entry"][int(i)].as_py() for i in nz],
                "count_before": counts[nz].astype(np.int64),
                "count_after": counts[nz].astype(np.int64),
            }
        ),
        run / "balance" / "entry_counts.parquet",
    )
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.loglog(np.arange(1, len(nz) + 1), np.sort(counts[nz])[::-1], label="before")
    ax.set_xlabel("entry rank")
    ax.set_ylabel("matches")
    ax.legend()
    fig.savefig(run / "balance" / "longtail.png", dpi=80)
    plt.close(fig)


def write_eval_artifacts(run: Path) -> None:
    """The eval stage's outputs (results, predictions, overlap analysis) per the eval contract."""
    (run / "eval" / "predictions").mkdir(parents=True, exist_ok=True)
    results = []
    for dataset, task, top1 in (
        ("cifar10", "zeroshot", 0.21),
        ("mnist", "zeroshot", 0.12),
        ("cifar10", "linear_probe", 0.4),
    ):
        probe = task == "linear_probe"  # its held-out split here misses a class: it carries a warning
        metrics = {
            "top1": top1,
            "chance_top1": 0.1,
            "majority_top1": 0.12 if probe else 0.1,
            "n_classes_present": 9 if probe else 10,
            "n_classes_in_set": 10,
            "n": 90 if probe else 300,
        }
        warning = "cifar10: only 9 of the set's 10 classes were evaluated" if probe else None
        results += [
            {
                "checkpoint": "step-10",
                "dataset": dataset,
                "task": task,
                "metric": k,
                "value": float(v),
                "sample": "stratified sample of 300 of 10000, seed 0",
                "checkpoint_sha256": "ab" * 32,
                "warning": warning,
            }
            for k, v in metrics.items()
        ]
    pq.write_table(pa.Table.from_pylist(results), run / "eval" / "results.parquet")
    for name in ("cifar10", "mnist"):
        ids = [f"{i:06d}" for i in range(300)]
        pred = [i % 10 for i in range(300)]
        pq.write_table(
            pa.table(
                {
                    "dataset": [name] * 300,
                    "eval_id": ids,
                    "label": pred,
                    "pred": pred[::-1],
                    "correct": [a == b for a, b in zip(pred, pred[::-1], strict=True)],
                    "checkpoint": ["step-10"] * 300,
                    "task": ["zeroshot"] * 300,
                }
            ),
            run / "eval" / "predictions" / f"{name}.parquet",
        )
    pq.write_table(
        pa.table(
            {  # the same set under two tasks: tables must tell them apart by the task column
                "dataset": ["cifar10", "cifar10", "mnist"],
                "task": ["linear_probe", "zeroshot", "zeroshot"],
                "checkpoint": ["step-10"] * 3,
                "n_all": [90, 300, 300],
                "n_overlap": [1, 4, 2],
                "overlap_pct": [1.11, 1.33, 0.67],
                "acc_all": [0.4, 0.21, 0.12],
                "acc_overlap": [1.0, 0.5, 0.5],
                "acc_clean": [0.393, 0.206, 0.117],
                "all_minus_clean": [0.007, 0.004, 0.003],
                "p_value": [0.39, 0.2, 0.3],
                "ci_low": [0.003, 0.07, 0.01],
                "ci_high": [1.0, 0.93, 0.99],
            }
        ),
        run / "eval" / "overlap.parquet",
    )


@pytest.fixture(scope="session")
def audited_run(tmp_path_factory, shared_data, ray_local):
    """One small run through dedup and audit, shared by the audit database and audit page tests.

    Returns (config, RunDir, audit StageResult). Tests must not modify it: copy it first.
    """
    from dedup.audit import AuditStage
    from dedup.stage import DedupStage
    from pipeline.cli import prepare_run
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.runner import run_stage

    tmp = tmp_path_factory.mktemp("audit")
    cfg = load_config(None, ["ray.num_cpus=2", *evalset_specs(shared_data)], str(tmp / "run"))
    run = RunDir(cfg.run)
    prepare_run(cfg)
    build_training_shards(tmp / "run", shared_data)
    write_upstream_artifacts(tmp / "run")
    run_stage(DedupStage(cfg, run), progress=False)
    write_eval_artifacts(tmp / "run")
    result = run_stage(AuditStage(cfg, run), progress=False)
    return cfg, run, result
