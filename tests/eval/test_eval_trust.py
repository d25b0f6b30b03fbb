"""Issue 21: eval numbers a user can trust, through the real eval stage and runner on untrained models.

* finding 1: ``limit`` and the trainer's ``eval_limit`` evaluate a stratified sample, recorded, with
  chance, majority-class rate and classes present beside the accuracy, and a warning when classes
  are missing;
* finding 2: the eval task follows the checkpoint's content: the same one is skipped and says so,
  a changed one (same path) is evaluated again;
* finding 4: without dedup the overlap is unknown, said so, and no NaN row is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from synthetic import CLASSES, samples, write_folder_evalset

from eval.stage import EvalStage
from pipeline.config import load_config
from pipeline.rundir import RunDir
from pipeline.runner import run_stage


def _export(directory: Path, seed: int) -> Path:
    from train.export import write_export
    from train.model import build_model
    from train.tokenizer import train_tokenizer

    torch.manual_seed(seed)
    tok = train_tokenizer([f"a photo of a {c}." for c in CLASSES] * 3, vocab_size=600, min_frequency=1)
    model = build_model("tiny-vit", vocab_size=tok.vocab_size)
    spec = {"model": "tiny-vit", "overrides": {"vocab_size": tok.vocab_size}}
    return write_export(directory, model.state_dict(), spec, tok)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two untrained exports and a class-sorted folder eval set (9 classes × 6 images)."""
    root = tmp_path_factory.mktemp("trust")
    folder = write_folder_evalset(root / "shapes", samples(54, seed=5))
    return _export(root / "a", 0), _export(root / "b", 1), folder


def _config(tmp_path: Path, checkpoint: Path, folder: Path, limit: int | None):
    shapes = {"name": "shapes", "kind": "folder", "path": str(folder), "classes": CLASSES, "templates": "plain"}
    if limit:
        shapes["limit"] = limit
    return load_config(
        None,
        [
            f"evalsets=[{shapes}]",
            f"eval.checkpoint={checkpoint}",
            "eval.tasks=[zeroshot]",
            "eval.device=cpu",
            "eval.batch_size=64",
        ],
        str(tmp_path / "run"),
    )


def _results(run: RunDir) -> dict[str, dict]:
    return {r["metric"]: r for r in pq.read_table(run.path("eval/results.parquet")).to_pylist()}


def test_a_changed_checkpoint_is_evaluated_again_the_same_one_is_skipped_and_says_so(inputs, tmp_path, capsys):
    a, b, folder = inputs
    ckpt = tmp_path / "export"
    shutil.copytree(a.parent, ckpt)
    cfg = _config(tmp_path, ckpt / "model.pt", folder, None)
    run = RunDir(cfg.run)
    first = run_stage(EvalStage(cfg, run), progress=False)
    assert first.tasks_skipped == 0 and first.stats.counts["images"] == 54
    digest_a = _results(run)["top1"]["checkpoint_sha256"]

    again = run_stage(EvalStage(cfg, run), progress=False)
    err = capsys.readouterr().err
    assert again.tasks_total == 1 and again.tasks_skipped == 1
    assert f"sha256 {digest_a[:12]}) was already evaluated with this eval set and these settings: skipped" in err

    shutil.copy(b, ckpt / "model.pt")  # new weights at the same path, as a continued training exports them
    third = run_stage(EvalStage(cfg, run), progress=False)
    err = capsys.readouterr().err
    assert third.tasks_skipped == 0 and "already evaluated" not in err and "already complete" not in err
    digest_b = _results(run)["top1"]["checkpoint_sha256"]
    assert digest_b != digest_a and len(digest_b) == 64
    assert len(run.done_tasks("eval") - {"_stage"}) == 1  # the earlier checkpoint's marker is gone
    # settings are part of the identity too
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"top_k": 3})})
    assert run_stage(EvalStage(other, run), progress=False).tasks_skipped == 0


def test_subset_results_carry_baselines_sample_and_a_warning_without_overlap_rows(inputs, tmp_path, capsys):
    a, _, folder = inputs
    cfg = _config(tmp_path, a, folder, 5)  # 5 images of a 9-class set: at most 5 classes
    run = RunDir(cfg.run)
    run_stage(EvalStage(cfg, run), progress=False)
    err = capsys.readouterr().err
    m = _results(run)
    assert m["n"]["value"] == 5 and m["n_classes_present"]["value"] == 5 and m["n_classes_in_set"]["value"] == 9
    assert m["chance_top1"]["value"] == pytest.approx(0.2) and m["majority_top1"]["value"] == pytest.approx(0.2)
    assert m["top1"]["sample"] == "stratified sample of 5 of 54, seed 0"
    assert "only 5 of the set's 9 classes" in m["top1"]["warning"] and "WARNING shapes: only 5" in err
    from demo.__main__ import accuracy_lines  # the demo's summary shows it too

    lines = accuracy_lines(pq.read_table(run.path("eval/results.parquet")).to_pylist())
    assert lines[0].startswith("zero-shot shapes: top-1 ") and "vs chance 20.0%, majority class 20.0% (5 of 9" in lines[0]
    assert lines[1].startswith("  WARNING shapes: only 5 of the set's 9 classes")
    # finding 4: no dedup, so the overlap is unknown: said, and no (NaN) row written
    assert "no dedup run: overlap unknown" in err and "nan" not in err
    assert not run.exists("eval/overlap.parquet")

    balanced = _config(tmp_path / "b", a, folder, 27)
    run_b = RunDir(balanced.run)
    run_stage(EvalStage(balanced, run_b), progress=False)
    m = _results(run_b)
    assert m["n_classes_present"]["value"] == 9 and m["top1"]["warning"] is None
    assert m["chance_top1"]["value"] == pytest.approx(1 / 9) and m["majority_top1"]["value"] == pytest.approx(1 / 9)
    preds = pq.read_table(run_b.path("eval/predictions/shapes.parquet")).to_pylist()
    per_class = [sum(1 for p in preds if p["label"] == c) for c in range(9)]
    assert per_class == [3] * 9  # the folder is class-sorted: the first 27 would be 4½ classes


def test_eval_limit_during_training_is_a_stratified_sample(inputs):
    from eval.during_training import zero_shot_metrics
    from pipeline.evalsets_spec import EvalSetSpec
    from train.export import load_model

    a, _, folder = inputs
    model, tok, transform = load_model(a)
    spec = EvalSetSpec(name="shapes", kind="folder", path=str(folder), classes=CLASSES, templates="plain")
    out = zero_shot_metrics(model, tok, transform, [spec], "cpu", limit=18)
    assert out["zeroshot/shapes/n_classes_present"] == 9  # the first 18 would be 3 classes
    assert out["zeroshot/shapes/chance_top1"] == pytest.approx(1 / 9)
