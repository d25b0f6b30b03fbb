"""A tiny CLIP trained here on coloured shapes classifies held-out shapes zero-shot; random init does not.

One training run (a plain torch loop over the train package's model and loss, ~300 steps on CPU)
feeds every test in this module, including the eval stage end to end through the real runner, the
command line, and the overlap join.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from synthetic import CLASSES, caption, samples, write_folder_evalset

pytestmark = pytest.mark.slow
STEPS = 300


def _export(directory: Path, model, tokenizer) -> Path:
    from train.export import write_export

    return write_export(
        directory,
        model.state_dict(),
        {"model": "tiny-vit", "overrides": {"vocab_size": tokenizer.vocab_size}},
        tokenizer,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a 2-core machine shared with other jobs, two spinning OpenMP threads run
    ~7x slower than one (measured: 1.39 s vs 0.19 s per training step under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _one_thread):
    """(trained model.pt, random-init model.pt, folder of held-out images, webdataset tar of captions)."""
    from train.loss import ClipLoss
    from train.model import build_model
    from train.tokenizer import train_tokenizer
    from train.transforms import to_tensor

    root = tmp_path_factory.mktemp("shapes")
    torch.manual_seed(0)
    rng = random.Random(0)
    train = samples(1800, seed=1)
    texts = [caption(label, rng) for _, label in train]
    tok = train_tokenizer(texts, vocab_size=600, min_frequency=1)
    random_model = build_model("tiny-vit", vocab_size=tok.vocab_size)
    random_pt = _export(root / "random", random_model, tok)

    model = build_model("tiny-vit", vocab_size=tok.vocab_size)
    x = torch.stack([to_tensor(im) for im, _ in train])
    y = [label for _, label in train]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_fn = ClipLoss()
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(STEPS):
        idx = torch.randint(0, len(train), (64,), generator=g)
        image_f, text_f, scale = model(x[idx], tok([caption(y[int(i)], rng) for i in idx]))
        loss = loss_fn(image_f, text_f, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained_pt = _export(root / "trained", model, tok)

    held_out = samples(270, seed=99)  # a different seed: new positions, sizes, noise
    folder = write_folder_evalset(root / "heldout", held_out)
    tar_path = root / "captions.tar"
    with tarfile.open(tar_path, "w") as tf:
        for i, (img, label) in enumerate(held_out[:90]):
            for ext, data in (("png", _png(img)), ("txt", f"a photo of a {CLASSES[label]}.".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return trained_pt, random_pt, folder, tar_path


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _spec(folder: Path):
    from pipeline.evalsets_spec import EvalSetSpec

    return EvalSetSpec(name="shapes", kind="folder", path=str(folder), classes=CLASSES, templates="photo")


def test_trained_model_zero_shot_far_above_chance_random_init_not(trained):
    from eval.during_training import zero_shot_metrics
    from train.export import load_model

    trained_pt, random_pt, folder, _ = trained
    chance = 1 / len(CLASSES)
    results = {}
    for name, path in (("trained", trained_pt), ("random", random_pt)):
        model, tok, transform = load_model(path)
        model.train()  # zero_shot_metrics must evaluate in eval mode and restore this
        results[name] = zero_shot_metrics(model, tok, transform, [_spec(folder)], "cpu", limit=None)
        assert model.training
    top1 = results["trained"]["zeroshot/shapes/top1"]
    assert top1 > 4 * chance, results  # far above chance (≈ 0.11): typically ≈ 0.75
    assert results["random"]["zeroshot/shapes/top1"] < 2.5 * chance, results
    assert results["trained"]["zeroshot/shapes/top5"] >= top1


def _config(tmp_path: Path, trained_pt: Path, folder: Path, tar_path: Path, coco: Path | None) -> Path:
    retrieval = [{"name": "shapes-captions", "kind": "webdataset", "path": str(tar_path)}]
    if coco is not None:
        retrieval.append({"name": "coco-mini", "kind": "coco", "path": str(coco), "limit": 40})
    cfg = {
        "run": str(tmp_path / "run"),
        "ray": {"num_cpus": 2},
        "evalsets": [
            {
                "name": "shapes",
                "kind": "folder",
                "path": str(folder),
                "classes": CLASSES,
                "templates": "photo",
            }
        ],
        "eval": {
            "checkpoint": str(trained_pt),
            "checkpoint_name": "tiny-shapes",
            "batch_size": 64,
            "retrieval": retrieval,
            "linear_probe": [{"train": "shapes", "c_grid": [0.01, 1.0, 100.0]}],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_eval_stage_end_to_end(trained, tmp_path, shared_data):
    from eval.stage import EvalStage
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.runner import run_stage

    trained_pt, _, folder, tar_path = trained
    coco = shared_data / "photos" / "coco_mini" / "annotations" / "captions_val2017.json"
    config = load_config(_config(tmp_path, trained_pt, folder, tar_path, coco))
    run = RunDir(config.run)
    # dedup's overlap table: two held-out images "seen in training" (one of them twice)
    ids = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    run.write_parquet(
        "dedup/overlaps.parquet",
        pa.table(
            {
                "eval_set": ["shapes", "shapes", "shapes", "other"],
                "eval_id": [ids[0], ids[0], ids[5], ids[1]],
                "label": [0, 0, 5, 1],
                "uid": ["u1", "u2", "u3", "u4"],
                "distance": [0, 2, 1, 0],
                "confirmed": [True, False, True, True],  # u2 was rejected by dedup's verification
            }
        ),
    )
    stage = EvalStage(config, run)
    stage.progress = False
    # each id: what it evaluates, then a digest of its inputs (checkpoint content, set, settings)
    assert [t.id.rsplit("-", 1)[0] for t in stage.tasks()] == [
        "zeroshot-shapes",
        "retrieval-shapes-captions",
        "retrieval-coco-mini",
        "linear_probe-shapes",
    ]
    result = run_stage(stage, progress=False)
    assert result.stats.counts["classifiers_built"] == 1

    res = pq.read_table(run.path("eval/results.parquet")).to_pylist()
    assert {r["checkpoint"] for r in res} == {"tiny-shapes"}
    metric = {(r["dataset"], r["task"], r["metric"]): r["value"] for r in res}
    assert metric[("shapes", "zeroshot", "top1")] > 0.44
    assert metric[("shapes", "zeroshot", "n")] == 270
    assert metric[("shapes", "linear_probe", "best_c")] in (0.01, 1.0, 100.0)
    assert metric[("shapes", "linear_probe", "top1")] > 0.44
    for name in ("shapes-captions", "coco-mini"):
        r1, r5, r10 = (metric[(name, "retrieval", f"image_to_text_R@{k}")] for k in (1, 5, 10))
        assert 0 <= r1 <= r5 <= r10 <= 1
    assert metric[("coco-mini", "retrieval", "n_images")] == 40
    assert metric[("coco-mini", "retrieval", "n_captions")] >= 200  # ≥ 5 captions per COCO image
    # shapes captions: 9 distinct texts over 90 images, so a caption of the right class in the top 10
    # is near-certain for the trained model (chance ≈ 10/90 per query for an untrained one)
    assert metric[("shapes-captions", "retrieval", "text_to_image_R@10")] > 0.5

    body = json.loads(Path(run.path("eval/results/tiny-shapes/shapes.zeroshot.json")).read_text())
    assert body["n_templates"] == 5 and body["classes"] == CLASSES

    preds = pq.read_table(run.path("eval/predictions/shapes.parquet"))
    assert preds.schema.field("top5").type == pa.list_(pa.int32())
    assert {"dataset", "eval_id", "label", "pred", "correct", "top5", "checkpoint"} <= set(preds.column_names)
    rows = preds.to_pylist()
    assert len(rows) == 270 and all(r["pred"] == r["top5"][0] for r in rows)
    assert all(r["correct"] == (r["pred"] == r["label"]) for r in rows)

    overlap = {
        (r["dataset"], r["task"]): r for r in pq.read_table(run.path("eval/overlap.parquet")).to_pylist()
    }
    zs = overlap[("shapes", "zeroshot")]
    assert zs["n_all"] == 270 and zs["n_overlap"] == 2
    assert zs["overlap_pct"] == pytest.approx(200 / 270)
    correct = {r["eval_id"]: r["correct"] for r in rows}
    assert zs["acc_overlap"] == pytest.approx((correct[ids[0]] + correct[ids[5]]) / 2)
    assert 0 <= zs["ci_low"] <= zs["acc_overlap"] <= zs["ci_high"] <= 1
    assert ("shapes", "linear_probe") in overlap

    # a forced rerun reuses the cached class embeddings and gives the same predictions
    again = run_stage(EvalStage(config, run), progress=False, force=True)
    assert again.stats.counts["classifier_cache_hits"] == 1
    assert pq.read_table(run.path("eval/predictions/shapes.parquet")).equals(preds)


def test_python_m_eval_command_line(trained, tmp_path, repo_root):
    trained_pt, _, folder, tar_path = trained
    cfg = _config(tmp_path, trained_pt, folder, tar_path, None)
    ok = subprocess.run(
        [sys.executable, "-m", "eval", "--config", str(cfg), "--set", "eval.tasks=[zeroshot]"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "[eval] zeroshot shapes: top1=" in ok.stderr
    assert (tmp_path / "run" / "eval" / "results.parquet").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "eval", "--config", str(cfg), "--set", "eval.evalsets=[shapez]"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "eval.evalsets: 'shapez' is not a top-level `evalsets:` entry" in bad.stderr
