"""One mapping from errors to exit codes (``pipeline.cli.guarded``), used by every entry point:
``webclip``, ``crawl/main.py`` and ``python -m demo``. A real SIGINT is sent to the demo in
``tests/e2e/test_interrupt.py``."""

from __future__ import annotations

import importlib.util
import signal

import pytest

from pipeline.cli import guarded
from pipeline.errors import EXIT_CONFIG, EXIT_FAILED_TASKS, EXIT_INTERRUPTED, ConfigError, StageFailed


def _raise(exc: BaseException):
    def body():
        raise exc

    return body


def test_each_error_has_its_exit_code_and_message(capsys):
    assert guarded("prog", lambda: None) == 0
    assert guarded("prog", lambda: 4) == 4

    assert guarded("prog", _raise(ConfigError("key 'a.b' = 3: too big; use at most 2"))) == EXIT_CONFIG == 2
    assert capsys.readouterr().err == "prog: configuration error: key 'a.b' = 3: too big; use at most 2\n"

    assert guarded("prog", _raise(StageFailed("download", {"00003": "OSError: disk full"}))) == EXIT_FAILED_TASKS
    err = capsys.readouterr().err
    assert EXIT_FAILED_TASKS == 3 and err.startswith("prog: stage 'download': 1 task(s) failed")
    assert "00003: OSError: disk full" in err and "Rerun the same command" in err

    assert guarded("prog", _raise(KeyboardInterrupt())) == EXIT_INTERRUPTED == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "prog: interrupted (SIGINT)" in err and "rerun the same command to resume" in err

    with pytest.raises(ZeroDivisionError):  # a bug is not an exit code: its traceback is the report
        guarded("prog", _raise(ZeroDivisionError()))


def _crawl_main():
    spec = importlib.util.spec_from_file_location("webclip_crawl_main_exit", "crawl/main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("entry", ["webclip", "crawl", "demo"])
def test_every_entry_point_maps_errors_the_same_way(entry, tmp_path, capsys, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    run = tmp_path / "run"
    bad = ["--set", "balance.tt=5", "--run", str(run)]
    if entry == "webclip":
        from pipeline.cli import main

        code = main(["balance", *bad])
    elif entry == "crawl":
        code = _crawl_main()(bad)
    else:
        from demo.__main__ import main

        code = main(bad)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"{entry}: configuration error:") and "'balance.t'" in err
    # nothing written: not the run, nor (for the demo) the mini-web it would have generated first
    assert not run.exists() and not (tmp_path / "run-miniweb").exists()


#: A configuration each stage command refuses (exit 2), and the words its message must hold. The
#: refusals come from a stage's `check()` (its inputs from earlier stages are missing) as well as
#: from `validate()`: neither may leave anything behind, not even <run>/config.yaml.
BAD_STAGE_SETUPS = {
    "vocab": (["--set", "vocab.sources=[file]", "--set", "vocab.files=[/nonexistent/queries.txt]"],
              "vocab.files[0]"),
    "extract": ([], "extract.inputs is empty"),
    "match": ([], "run `webclip vocab` first"),
    "balance": ([], "run `webclip match` first"),
    "download": ([], "run the balance stage first"),
    "dedup": ([], "run `webclip download` first"),
    "train": ([], "run the dedup stage or set train.data"),
    "eval": ([], "run `webclip train` first"),
    "audit": ([], "holds no pipeline artifacts"),
}


def test_every_stage_has_a_bad_setup_case():
    from pipeline.config import STAGE_ORDER

    assert set(BAD_STAGE_SETUPS) == set(STAGE_ORDER)


@pytest.mark.parametrize("stage", sorted(BAD_STAGE_SETUPS))
def test_exit_2_writes_nothing_for_every_stage_command(stage, tmp_path, capsys):
    from pipeline.cli import main

    args, needle = BAD_STAGE_SETUPS[stage]
    run = tmp_path / "runs" / "r1"
    code = main([stage, *args, "--run", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err, err
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in (tmp_path / "runs").rglob("*"))


def test_exit_2_in_the_first_stage_of_a_run_writes_nothing(tmp_path, capsys):
    """`webclip run --stages match,balance` on an empty run: match's check stops it before any write."""
    from pipeline.cli import main

    run = tmp_path / "r"
    assert main(["run", "--stages", "match,balance", "--run", str(run)]) == 2
    assert "run `webclip vocab` first" in capsys.readouterr().err
    assert not run.exists()
