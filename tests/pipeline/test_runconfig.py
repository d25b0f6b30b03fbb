"""Issue 21, finding 3: a stage never overwrites the configuration another stage ran with."""

from __future__ import annotations

import yaml

from pipeline.cli import main, prepare_run, status
from pipeline.config import load_config
from pipeline.rundir import RunDir


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_later_stage_keeps_the_sections_earlier_stages_ran_with(tmp_path, capsys):
    (tmp_path / "q.txt").write_text("red square\ncat\n")
    run_dir = tmp_path / "run"
    train_cfg = _write(tmp_path / "train.yaml", {
        "run": str(run_dir), "seed": 3,
        "vocab": {"sources": ["file"], "files": [str(tmp_path / "q.txt")]},
        "train": {"model": "tiny-vit", "vocab_size": 1000, "data": str(tmp_path)},
    })
    # an eval-style file: it says nothing of vocab or train (their defaults: train.data null, vocab 49152)
    eval_cfg = _write(tmp_path / "eval.yaml", {"run": str(run_dir), "seed": 4, "audit": {"pairs_per_set": 3}})
    assert main(["vocab", "--config", train_cfg]) == 0
    assert main(["audit", "--config", eval_cfg]) == 0
    err = capsys.readouterr().err
    assert "overwriting" not in err and "note: seed differs from" in err

    run = RunDir(str(run_dir))
    union = yaml.safe_load(run.read_text("config.yaml"))
    assert union["train"]["data"] == str(tmp_path) and union["train"]["vocab_size"] == 1000  # kept
    assert union["vocab"]["files"] == [str(tmp_path / "q.txt")]
    assert union["audit"]["pairs_per_set"] == 3 and union["seed"] == 4  # the latest command's
    vocab = yaml.safe_load(run.read_text("config/vocab.yaml"))
    audit = yaml.safe_load(run.read_text("config/audit.yaml"))
    assert vocab["seed"] == 3 and vocab["vocab"]["files"] == [str(tmp_path / "q.txt")]
    assert audit["seed"] == 4 and audit["train"]["data"] is None  # what audit ran with, whole
    assert load_config(run.local_path("config/vocab.yaml")).seed == 3  # each record is a valid config

    text = status(str(run_dir))
    assert "config config/vocab.yaml (unlike config.yaml: seed=3)" in text
    assert text.rstrip().endswith("audit.yaml")
    assert "config config/audit.yaml" in text and "audit.yaml (unlike" not in text
    # the audit shows each stage's configuration
    import duckdb

    with duckdb.connect(run.path("audit.duckdb"), read_only=True) as db:
        rows = dict(db.execute("SELECT stage, yaml FROM run_config").fetchall())
    assert set(rows) == {"run", "vocab", "audit"} and "seed: 3" in rows["vocab"] and "seed: 4" in rows["audit"]


def test_train_stage_launches_with_the_configuration_it_ran_with(tmp_path):
    from train.stage import TrainStage

    cfg = load_config(None, ["train.steps=7"], str(tmp_path / "run"))
    other = load_config(None, ["train.steps=9", "seed=5"], str(tmp_path / "run"))
    prepare_run(cfg, ["train"])
    prepare_run(other, ["eval"])
    cmd = TrainStage(cfg, RunDir(cfg.run)).command()
    path = cmd[cmd.index("--config") + 1]
    assert path.endswith("config/train.yaml") and load_config(path).train.steps == 7
    assert load_config(tmp_path / "run" / "config.yaml").train.steps == 7  # the union keeps train's section
