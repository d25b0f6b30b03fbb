"""Configuration: defaults, overrides, and one clear message (exit 2, nothing written) per kind of mistake."""

from __future__ import annotations

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import dump_config, load_config
from pipeline.errors import ConfigError


def _cli_error(capsys, tmp_path, *args: str) -> str:
    run = tmp_path / "run"
    code = main([*args, "--run", str(run)] if "--run" not in args else list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert not run.exists(), "a configuration error must write nothing"
    return err


def test_defaults_overrides_and_file_merge(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"seed": 3, "ray": {"task_retries": 5}}))
    cfg = load_config(cfg_file, ["ray.task_retries=1", "stages=[vocab, extract]"], run="memory://x")
    assert (cfg.seed, cfg.ray.task_retries, cfg.stages, cfg.run) == (3, 1, ["vocab", "extract"], "memory://x")
    # the dumped config loads back to the same values
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_unknown_key_names_the_nearest_valid_key(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, "run", "--set", "ray.task_retry=3")
    assert "unknown key 'ray.task_retry'" in err and "did you mean 'ray.task_retries'" in err


def test_unknown_key_in_a_file_names_the_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sed: 1\n")
    err = _cli_error(capsys, tmp_path, "run", "--config", str(bad))
    assert str(bad) in err and "unknown key 'sed'" in err and "'seed'" in err


def test_wrong_type_names_key_and_value(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, "run", "--set", "ray.num_cpus=lots")
    assert "ray.num_cpus" in err and "'lots'" in err and "integer" in err


def test_out_of_range_value_names_the_range(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, "run", "--set", "ray.task_retries=-1")
    assert "ray.task_retries" in err and "-1" in err and "greater than or equal to 0" in err


def test_missing_input_file_names_the_file(capsys, tmp_path):
    missing = tmp_path / "nope.npz"
    err = _cli_error(capsys, tmp_path, "run", "--set",
                     f"evalsets=[{{name: c10, kind: cifar, path: {missing}}}]")
    assert str(missing) in err and "does not exist" in err


def test_missing_config_file(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, "run", "--config", str(tmp_path / "absent.yaml"))
    assert "absent.yaml" in err and "does not exist" in err


def test_unwritable_run_url(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(["run", "--stages", "vocab", "--run", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err and str(blocker / "run") in err
    assert blocker.read_text() == "not a directory"


def test_error_type_is_config_error():
    with pytest.raises(ConfigError):
        load_config(None, ["nonsense"])
