"""Issue 18 through the real path: a loopback server, the download stage with its defaults (center_crop
256), then dedup. The downloader hashes each original before img2dataset's resizer crops it, so
copies that the stored centre square no longer shows (a flip, a crop off to one side, a canvas
paste) are found; shards without those hashes are hashed from the stored image, with a note."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dedup.original import HASH_COLUMNS, THUMBS_COLUMN
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from tests.crawl.http_fixtures import ImageServer
from tests.dedup.copies import copies

KINDS = ("exact", "crop 10% anywhere", "hflip", "rotate 5 in place", "canvas 70%", "caption")


@pytest.mark.slow
def test_download_hashes_originals_and_dedup_finds_copies_the_centre_crop_hides(
    tmp_path, make_config, shared_data, ray_local
):
    from crawl.download import DownloadStage
    from dedup.stage import DedupStage

    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))
    evals, distinct = photos[10:14], photos[40:46]
    eval_dir = tmp_path / "evalset" / "photo"
    eval_dir.mkdir(parents=True)
    files, rows = {}, []
    for e, p in enumerate(evals):
        (eval_dir / p.name).write_bytes(p.read_bytes())
        for kind, data in copies(p.read_bytes(), e).items():
            if kind in KINDS:
                name = f"copy{e}-{kind.replace(' ', '_').replace('%', 'pc')}.jpg"
                files[name] = data
                rows.append((name, p.name, kind))
    for p in distinct:
        files[f"distinct-{p.name}"] = p.read_bytes()
        rows.append((f"distinct-{p.name}", None, "distinct"))
    server = ImageServer([])  # the copies are served from its /extra/<name> route
    server.extra.update({name: (data, "image/jpeg", []) for name, data in files.items()})
    try:
        run_dir = tmp_path / "run"
        (run_dir / "curated").mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "uid": [r[0] for r in rows],
                    "url": [server.url(f"/extra/{r[0]}") for r in rows],
                    "text": [f"a photo {r[0]}" for r in rows],
                    "entry_ids": pa.array([[1]] * len(rows), pa.list_(pa.int32())),
                }
            ),
            run_dir / "curated" / "part-00000.parquet",
        )
        cfg = make_config(
            "download.allow_addresses=[127.0.0.1/32]",
            "download.thread_count=8",
            f"evalsets=[{{name: photos, kind: folder, path: '{tmp_path / 'evalset'}'}}]",
            run=str(run_dir),
        )
        run = RunDir(cfg.run)
        run_stage(DownloadStage(cfg, run), progress=False)
    finally:
        server.close()

    # the shard parquet carries the original's hashes and thumbnails for every downloaded sample
    shard = pq.read_table(run_dir / "shards" / "00000.parquet")
    assert cfg.download.resize_mode == "center_crop"
    ok = [s == "success" for s in shard.column("status").to_pylist()]
    assert all(ok) and shard.num_rows == len(rows)
    for col in HASH_COLUMNS:
        assert shard.column(col).null_count == 0
    assert {len(b) for b in shard.column(THUMBS_COLUMN).to_pylist()} == {3 * 32 * 32}

    run_stage(DedupStage(cfg, run), progress=False)
    summary = run.read_json("dedup/summary.json")
    assert summary["hash_source"] == {"original": len(rows), "stored": 0}
    ov = pq.read_table(run_dir / "dedup" / "overlaps.parquet").to_pylist()
    confirmed = {(r["uid"], r["eval_id"].split("/")[-1]) for r in ov if r["confirmed"]}
    expected = {(name, ev) for name, ev, _ in rows if ev is not None}
    assert expected <= confirmed, sorted(expected - confirmed)
    assert not confirmed - expected  # distinct photos and other photos' copies are not flagged
