"""DedupStage on real shards and real eval sets, through the pipeline runner on local Ray."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from dedup.stage import DedupStage
from dedup.thumbs import load_thumbs
from pipeline.cli import prepare_run, status
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from tests.dedup.conftest import build_training_shards, evalset_specs, planted_eval_ids


def _run(make_config, tmp_path, overrides, *extra):
    cfg = make_config(*overrides, *extra, run=str(tmp_path / "run"))
    run = RunDir(cfg.run)
    return cfg, run


@pytest.fixture(scope="module")
def dedup_run(tmp_path_factory, shared_data, ray_local):
    from pipeline.config import load_config

    tmp = tmp_path_factory.mktemp("dedup")
    cfg = load_config(None, ["ray.num_cpus=2", *evalset_specs(shared_data)], str(tmp / "run"))
    run = RunDir(cfg.run)
    expect = build_training_shards(tmp / "run", shared_data)
    result = run_stage(DedupStage(cfg, run), progress=False)
    return cfg, run, expect, result


def test_overlaps_are_found_verified_and_removed(dedup_run, shared_data):
    cfg, run, expect, _ = dedup_run
    planted = planted_eval_ids(shared_data)
    ov = pq.read_table(run.path("dedup/overlaps.parquet")).to_pylist()
    confirmed = {(r["eval_set"], r["key"]): r for r in ov if r["confirmed"]}
    for key, eval_id in zip(expect["cifar"], planted["cifar"], strict=True):
        row = confirmed[("cifar10", key)]
        assert row["eval_id"] == eval_id and row["verify_score"] >= cfg.dedup.verify_threshold
        assert (
            row["url"].endswith(f"{key}.jpg")
            and row["entry_ids"] == [1]
            and row["text"].startswith("a photo")
        )
    for key, eval_id in zip(expect["mnist"], planted["mnist"], strict=True):
        assert confirmed[("mnist", key)]["eval_id"] == eval_id
    border = confirmed[("cifar10", expect["bordered"][0])]
    assert border["eval_id"] == planted["bordered"][0] and border["train_view"] == "trim"
    assert not any(r["key"] in expect["clean"] for r in confirmed.values())

    summary = run.read_json("dedup/summary.json")
    assert summary["reconciles"] and summary["downloaded"] == sum(len(v) for v in expect.values())
    # plain img2dataset shards (no original hashes): hashed from the stored image, and said so
    assert summary["hash_source"]["original"] == 0 and summary["hash_source"]["stored"] == 23
    assert "no original hashes" in summary["hash_source"]["note"]
    assert summary["removed"] == {"eval_overlap": 6, "exact_dup": 1, "undecodable": 1}
    assert summary["eval_sets"]["cifar10"]["eval_images_overlapping"] == 4
    assert summary["eval_sets"]["cifar10"]["profile"] == "natural"
    assert summary["eval_sets"]["mnist"]["profile"] == "lineart"  # detected: mostly black/white thumbnails
    assert summary["eval_sets"]["cifar10"]["overlap_rate"] == pytest.approx(4 / 300, abs=1e-5)
    stats = run.read_json("stats/dedup.json")
    assert stats["counts"]["clean"] == summary["clean"] == len(expect["clean"])


def test_clean_shards_read_with_webdataset_and_sizes_match(dedup_run):
    _, run, expect, _ = dedup_run
    sizes = run.read_json("clean/sizes.json")
    assert set(sizes) == {"00000.tar", "00001.tar"}
    # open_clip's get_dataset_size: sizes.json beside the shards, looked up by each tar's basename
    shards = sorted(run.glob("clean/*.tar"))
    assert sum(int(sizes[os.path.basename(s)]) for s in shards) == sum(sizes.values())
    keys = []
    for shard, n in sizes.items():
        samples = list(wds.WebDataset(run.path(f"clean/{shard}"), shardshuffle=False).decode("pil"))
        assert len(samples) == n
        for s in samples:
            assert s["jpg"].size[0] > 0 and s["json"]["uid"].startswith("u")
        keys += [s["__key__"] for s in samples]
        table = pq.read_table(run.path(f"clean/{shard.removesuffix('.tar')}.parquet"))
        assert table.column("key").to_pylist() == [s["__key__"] for s in samples]
        assert table.column("dedup_reason").null_count == table.num_rows
    assert sorted(keys) == sorted(expect["clean"])
    hashes = pq.read_table(run.path("hashes/00000.parquet"))
    assert {"uid", "key", "shard", "sha256", "phash", "phash_trim"} <= set(hashes.column_names)
    assert str(hashes.schema.field("phash").type) == "uint64"
    ev = pq.read_table(run.path("evalsets/cifar10/hashes.parquet"))
    assert ev.num_rows == 300 and {
        "eval_id",
        "label",
        "sha256",
        "phash",
        "phash_zoom90_11",
        "extreme_frac",
    } <= set(ev.column_names)


def test_report_mode_keeps_every_sample(tmp_path, make_config, shared_data, evalset_overrides, ray_local):
    cfg, run = _run(make_config, tmp_path, evalset_overrides, "dedup.mode=report")
    expect = build_training_shards(tmp_path / "run", shared_data)
    run_stage(DedupStage(cfg, run), progress=False)
    summary = run.read_json("dedup/summary.json")
    assert summary["clean"] == summary["downloaded"] and summary["removed"] == {}
    assert summary["flagged"]["eval_overlap"] == 6
    reasons = {}
    for shard in ("00000", "00001"):
        t = pq.read_table(run.path(f"clean/{shard}.parquet"))
        reasons.update(zip(t.column("key").to_pylist(), t.column("dedup_reason").to_pylist(), strict=True))
    assert reasons[expect["cifar"][0]] == "eval_overlap" and reasons[expect["clean"][0]] is None


def test_bad_config_and_missing_shards_are_config_errors(tmp_path, make_config, evalset_overrides):
    cfg, run = _run(make_config, tmp_path, evalset_overrides, "dedup.per_set={cifar100: {tau: 4}}")
    with pytest.raises(ConfigError, match="cifar100"):
        DedupStage(cfg, run).validate()
    cfg, run = _run(make_config, tmp_path, evalset_overrides)
    with pytest.raises(ConfigError, match="webclip download"):
        DedupStage(cfg, run).check()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg, run = _run(make_config, tmp_path, evalset_overrides, f"dedup.work_dir={blocker / 'pool'}")
    with pytest.raises(ConfigError, match=r"dedup.work_dir .*a-file is not a writable directory"):
        DedupStage(cfg, run).validate()
    cfg, run = _run(make_config, tmp_path, evalset_overrides, f"dedup.work_dir={tmp_path / 'new' / 'pool'}")
    DedupStage(cfg, run).validate()  # a directory that does not exist yet is fine, and not created
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match=r"memory_limit.*'8GB'.*'lots'"):
        make_config(*evalset_overrides, "dedup.memory_limit=lots")


def test_cropped_and_letterboxed_photos_are_found_and_verified(tmp_path, shared_data, ray_local):
    """A 10 % crop and an img2dataset-style letterboxed copy of real photos, planted in a training
    shard, are confirmed against a folder eval set of photos; a photo outside the set is not."""
    from PIL import Image, ImageOps

    from pipeline.config import load_config
    from tests.dedup.conftest import jpeg, write_shard

    photos = sorted((shared_data / "photos").rglob("*.jpg"))
    eval_dir = tmp_path / "evalphotos" / "coco"
    eval_dir.mkdir(parents=True)
    for p in photos[100:120]:
        (eval_dir / p.name).symlink_to(p)
    crop_src, box_src, outsider = photos[105], photos[112], photos[3]

    img = Image.open(crop_src).convert("RGB")
    w, h = img.size
    crop = img.crop((round(0.07 * w), round(0.02 * h), round(0.97 * w), round(0.92 * h)))  # 10 %, off-centre
    crop = crop.resize((256, round(256 * crop.height / crop.width)))
    boxed = ImageOps.pad(
        Image.open(box_src).convert("RGB"), (256, 256), color=(0, 0, 0)
    )  # resize_mode border
    other = Image.open(outsider).convert("RGB").resize((256, 192))
    samples = [
        dict(
            key=f"0000000{i}",
            uid=f"u{i}",
            url=f"http://img.test/{i}.jpg",
            caption=f"c{i}",
            entry_ids=[i],
            jpg=jpeg(im, 95),
        )
        for i, im in enumerate((crop, boxed, other))
    ]
    write_shard(tmp_path / "run", 0, samples)
    cfg = load_config(
        None,
        ["ray.num_cpus=2", f"evalsets=[{{name: photos, kind: folder, path: '{eval_dir.parent}'}}]"],
        str(tmp_path / "run"),
    )
    run = RunDir(cfg.run)
    run_stage(DedupStage(cfg, run), progress=False)
    ov = {r["key"]: r for r in pq.read_table(run.path("dedup/overlaps.parquet")).to_pylist()}
    assert ov["00000000"]["confirmed"] and ov["00000000"]["eval_id"] == f"coco/{crop_src.name}"
    assert ov["00000000"]["eval_view"].startswith("zoom90")
    assert ov["00000001"]["confirmed"] and ov["00000001"]["eval_id"] == f"coco/{box_src.name}"
    assert ov["00000001"]["train_view"] == "trim"
    assert not ov.get("00000002", {"confirmed": False})["confirmed"]
    summary = run.read_json("dedup/summary.json")
    assert summary["eval_sets"]["photos"]["profile"] == "natural"
    assert summary["removed"] == {"eval_overlap": 2}


def test_clean_shards_are_tasks_redone_only_where_needed(
    tmp_path, make_config, shared_data, evalset_overrides, ray_local
):
    """Clean shards are written by one task per shard (dedup_clean): an interrupted run redoes only
    the shards without a marker, and a rerun whose decisions changed rewrites the shards again."""
    from pipeline.runner import STAGE_MARKER

    cfg, run = _run(make_config, tmp_path, evalset_overrides)
    build_training_shards(tmp_path / "run", shared_data)
    run_stage(DedupStage(cfg, run), progress=False)
    markers = sorted(p.rsplit("/", 1)[-1] for p in run.glob("_done/dedup_clean/0*"))
    assert [m.split(".")[0] for m in markers] == ["00000", "00001"]
    assert all(run.read_json(f"_done/dedup_clean/{m}")["host"] for m in markers)
    first = {s: run.read_bytes(f"clean/{s}.tar") for s in ("00000", "00001")}
    # the candidates' thumbnails were read by one task per shard holding some, not by the driver
    cand = pq.read_table(run.path("dedup/candidates.parquet")).to_pylist()
    thumb_markers = [p.rsplit("/", 1)[-1] for p in run.glob("_done/dedup_thumbs/0*")]
    assert sorted(m.split(".")[0] for m in thumb_markers) == sorted({c["shard"] for c in cand})
    keys, stack, meta = load_thumbs(run, cand[0]["shard"])
    assert cand[0]["key"] in keys and stack.shape[1:] == (3, 32, 32) and stack.dtype == np.uint8
    assert len(meta) == len(keys) and all("url" in m for m in meta)
    stamp = (tmp_path / "run/clean/00000.tar").stat().st_mtime_ns
    # the eval search ran as one task per shard (dedup_search), each writing its shard's view pairs
    search_markers = sorted(p.rsplit("/", 1)[-1] for p in run.glob("_done/dedup_search/0*"))
    assert [m.split(".")[0] for m in search_markers] == ["00000", "00001"]
    pairs = pq.read_table(run.path("dedup/pairs/00000.parquet"))
    assert set(pairs.column("eval_set").to_pylist()) <= {"cifar10", "mnist"} and pairs.num_rows > 0
    pairs_stamp = (tmp_path / "run/dedup/pairs/00000.parquet").stat().st_mtime_ns
    # decisions: one row group per shard with flagged samples, which is all a clean task reads
    decisions = pq.ParquetFile(run.path("dedup/decisions.parquet"))
    groups = [
        decisions.read_row_group(i).column("shard").to_pylist() for i in range(decisions.num_row_groups)
    ]
    assert [set(g) for g in groups] == [{"00000"}, {"00001"}]

    # killed after one clean shard: the other shard's output and marker are gone
    (tmp_path / "run/clean/00001.tar").unlink()
    (tmp_path / f"run/_done/dedup_clean/{markers[1]}").unlink()
    (tmp_path / f"run/_done/dedup/{STAGE_MARKER}").unlink()
    run_stage(DedupStage(cfg, run), progress=False)
    assert run.read_bytes("clean/00001.tar") == first["00001"]
    assert (tmp_path / "run/clean/00000.tar").stat().st_mtime_ns == stamp  # not rewritten
    assert (
        tmp_path / "run/dedup/pairs/00000.parquet"
    ).stat().st_mtime_ns == pairs_stamp  # not searched again
    assert run.read_json("dedup/summary.json")["reconciles"]

    # other decisions (report mode keeps every sample) and another tau: every shard is searched
    # and rewritten again
    (tmp_path / f"run/_done/dedup/{STAGE_MARKER}").unlink()
    report = make_config(*evalset_overrides, "dedup.mode=report", "dedup.tau=9", run=cfg.run)
    run_stage(DedupStage(report, run), progress=False)
    summary = run.read_json("dedup/summary.json")
    assert summary["clean"] == summary["downloaded"] and summary["reconciles"]
    assert sum(run.read_json("clean/sizes.json").values()) == summary["downloaded"]
    assert any(len(run.read_bytes(f"clean/{s}.tar")) > len(first[s]) for s in first)  # removed ones back
    # `webclip status` lists the passes under dedup, counting only the current tasks' markers
    prepare_run(report)  # what the CLI writes first: config.yaml marks a run directory
    lines = {line.split()[0]: line for line in status(run.url).splitlines()[1:]}
    assert lines["dedup_clean"].startswith("    ") and "tasks done=2 clean=24" in lines["dedup_clean"]
    assert "tasks done=2" in lines["dedup_search"]  # the earlier tau's markers are gone
    assert (tmp_path / "run/dedup/pairs/00000.parquet").stat().st_mtime_ns != pairs_stamp
    assert "done" in lines["dedup_thumbs"] and lines["dedup"].startswith("  dedup ")


def test_a_candidate_missing_from_its_shard_is_an_error(
    tmp_path, make_config, shared_data, evalset_overrides, ray_local
):
    """The shards changed after hashing: the thumbnail task finds a candidate gone, and dedup stops
    with what to do instead of verifying against nothing."""
    from dedup.shards import TarSink, iter_samples
    from pipeline.runner import STAGE_MARKER

    cfg, run = _run(make_config, tmp_path, evalset_overrides)
    build_training_shards(tmp_path / "run", shared_data)
    run_stage(DedupStage(cfg, run), progress=False)
    gone = pq.read_table(run.path("dedup/candidates.parquet")).to_pylist()[0]
    sink = TarSink()
    for sample in iter_samples(run, f"shards/{gone['shard']}.tar"):
        if sample.key != gone["key"]:
            sink.add(sample)
    run.write_bytes(f"shards/{gone['shard']}.tar", sink.finish())
    run.remove(f"_done/dedup/{STAGE_MARKER}")
    for marker in run.glob("_done/dedup_thumbs/0*"):  # the shard's thumbnails are read again
        run.remove(marker)
    with pytest.raises(RuntimeError, match=r"no longer in their shards.*rerun `webclip dedup`"):
        run_stage(DedupStage(cfg, run), progress=False)


def test_pool_near_duplicate_is_verified_and_removed(
    tmp_path, make_config, shared_data, evalset_overrides, ray_local
):
    """A resized, re-encoded copy of a training photo in a later shard is a confirmed pool
    near-duplicate: removed as ``near_dup``, listed with the copy it duplicates; the byte-identical
    copy is listed as ``exact``."""
    from PIL import Image

    from tests.dedup.conftest import jpeg, write_shard

    cfg, run = _run(make_config, tmp_path, evalset_overrides)
    expect = build_training_shards(tmp_path / "run", shared_data)
    photo = sorted((shared_data / "photos").rglob("*.jpg"))[0]  # the fixture's first clean photo
    img = Image.open(photo).convert("RGB")
    img.thumbnail((160, 160))
    near = img.resize((img.width * 4 // 5, img.height * 4 // 5), Image.BICUBIC)
    row = dict(key="000020000", uid="unear", url="http://img.test/near.jpg", caption="a copy", entry_ids=[7])
    write_shard(tmp_path / "run", 2, [{**row, "jpg": jpeg(near, 70)}])
    run_stage(DedupStage(cfg, run), progress=False)

    dups = pq.read_table(run.path("dedup/pool_duplicates.parquet")).to_pylist()
    by_key = {d["key"]: d for d in dups}
    assert by_key["000020000"]["confirmed"] and by_key["000020000"]["kind"] == "near"
    assert by_key["000020000"]["dup_of_key"] == expect["clean"][0]
    assert by_key["000020000"]["verify_score"] >= cfg.dedup.pool_verify_threshold
    assert by_key[expect["exact_dup"][0]]["kind"] == "exact"
    decisions = {
        d["key"]: d["reason"] for d in pq.read_table(run.path("dedup/decisions.parquet")).to_pylist()
    }
    assert decisions["000020000"] == "near_dup" and decisions[expect["exact_dup"][0]] == "exact_dup"
    summary = run.read_json("dedup/summary.json")
    assert summary["removed"]["near_dup"] == 1 and summary["reconciles"]
    assert run.read_json("clean/sizes.json")["00002.tar"] == 0


def test_partitioned_pool_joins_give_the_single_node_outputs(
    tmp_path, make_config, shared_data, evalset_overrides, ray_local
):
    """The same run decided twice, by the partitioned joins (tiny partitions: many tasks and shard
    groups) and by the single-node reference (``dedup.pool_join: single_node``): every output file
    the audit and eval stages read is the same."""
    import shutil

    from PIL import Image

    from tests.dedup.conftest import jpeg, write_shard

    expect = build_training_shards(tmp_path / "run", shared_data)
    photo = sorted((shared_data / "photos").rglob("*.jpg"))[0]  # the fixture's first clean photo
    img = Image.open(photo).convert("RGB")
    img.thumbnail((160, 160))
    near = img.resize((img.width * 4 // 5, img.height * 4 // 5), Image.BICUBIC)
    row = dict(key="000020000", uid="unear", url="http://img.test/near.jpg", caption="a copy", entry_ids=[7])
    write_shard(tmp_path / "run", 2, [{**row, "jpg": jpeg(near, 70)}])
    cfg, run = _run(make_config, tmp_path, evalset_overrides, "dedup.pool_partition_rows=3")
    run_stage(DedupStage(cfg, run), progress=False)
    assert run.exists("_done/dedup.pool_near/p00005")  # several partitions per band
    # the reference decides again from the same hash files (hashing tasks are done: not redone)
    shutil.copytree(tmp_path / "run", tmp_path / "ref")
    (tmp_path / "ref" / "_done" / "dedup" / "_stage").unlink()
    ref_cfg = make_config(*evalset_overrides, "dedup.pool_join=single_node", run=str(tmp_path / "ref"))
    run_stage(DedupStage(ref_cfg, RunDir(ref_cfg.run)), progress=False)

    def outputs(root):
        tables = {
            rel: pq.read_table(root / rel).to_pylist()
            for rel in ("dedup/pool_duplicates.parquet", "dedup/decisions.parquet", "dedup/overlaps.parquet")
        }
        groups = pq.ParquetFile(root / "dedup/decisions.parquet").num_row_groups
        clean = {p.name: pq.read_table(p).to_pylist() for p in sorted((root / "clean").glob("*.parquet"))}
        return tables, groups, clean, RunDir(str(root)).read_json("dedup/summary.json")

    got, want = outputs(tmp_path / "run"), outputs(tmp_path / "ref")
    kinds = {d["kind"] for d in got[0]["dedup/pool_duplicates.parquet"]}
    reasons = {d["reason"] for d in got[0]["dedup/decisions.parquet"]}
    assert kinds == {"exact", "near"} and {"eval_overlap", "exact_dup", "near_dup"} <= reasons
    assert got == want
    assert len(expect["exact_dup"]) >= 1
