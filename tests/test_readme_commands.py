"""Every shell command in README.md is run: here when it is cheap, by a named test otherwise, or it is
exempt with a stated reason. A README command with no entry below fails this test, and so does an
entry whose command left the README. The README's SQL is the SQL tests/dedup/test_audit.py runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = {"bash", "sh", "shell", "console"}

#: Run by this file (see the tests below).
HERE = {
    "webclip run --config my.yaml": "test_cheap_commands_run_as_written",
    "webclip status runs/demo": "test_cheap_commands_run_as_written",
    "webclip config --config my.yaml": "test_cheap_commands_run_as_written",
    "python -c \"import duckdb; duckdb.connect('runs/demo/audit.duckdb', read_only=True)"
    ".sql('SELECT name, present, rows FROM audit_tables ORDER BY name').show()\"":
        "test_cheap_commands_run_as_written",
    "webclip match --config my.yaml --set match.normalize=true --run s3://bucket/runs/r1":
        "test_stage_commands_on_a_memory_run (s3:// → memory://: no bucket here)",
    "webclip download --config crawl.yaml --run runs/wit":
        "test_stage_commands_on_a_memory_run (runs/wit → memory://, so it runs without Ray)",
    "bash scripts/demo.sh": "test_demo_script_is_setup_then_python_m_demo (+ tests/e2e/test_interrupt.py)",
}

#: Run by another test: (test, a string that test's file must contain, proving it runs the command).
TESTS = {
    "python crawl/main.py --config crawl.yaml --run runs/wit": (
        "tests/crawl/test_crawl_job.py::test_crawl_job_extract_to_shards_and_rerun_skips",
        '_crawl("--config", str(cfg), "--run", str(run_dir))'),
    "python crawl/main.py --config crawl.yaml --stages download": (
        "tests/crawl/test_auth_submit.py::test_job_submit_without_token_is_refused_and_with_token_runs_the_crawl",
        '"crawl/main.py", "--config", str(cfg), "--run", str(run_dir), "--stages", "download"'),
    # "From laptop to cluster": its lines are read from the README and run in bash, as written (the run
    # URL s3://my-bucket/runs/wit → a local folder), against a token head on 127.0.0.1:8265
    "cp infra/configs/crawl.yaml crawl.yaml": (
        "tests/test_laptop_to_cluster.py::test_readme_laptop_to_cluster_lines_run_as_written", "readme_section()"),
    "webclip config --config crawl.yaml --run s3://my-bucket/runs/wit": (
        "tests/test_laptop_to_cluster.py::test_readme_laptop_to_cluster_lines_run_as_written", "readme_section()"),
    "ray get-auth-token --generate": (
        "tests/test_laptop_to_cluster.py::test_readme_laptop_to_cluster_lines_run_as_written", "readme_section()"),
    "export RAY_AUTH_MODE=token": (
        "tests/test_laptop_to_cluster.py::test_readme_laptop_to_cluster_lines_run_as_written", "readme_section()"),
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- "
    "python crawl/main.py --config crawl.yaml --run s3://my-bucket/runs/wit": (
        "tests/test_laptop_to_cluster.py::test_readme_laptop_to_cluster_lines_run_as_written", "readme_section()"),
    "webclip status s3://my-bucket/runs/wit": (
        "tests/test_laptop_to_cluster.py::test_readme_laptop_to_cluster_lines_run_as_written", "readme_section()"),
    "DS_ACCELERATOR=cpu deepspeed --num_gpus 2 train/main.py --deepspeed_config "
    "infra/deepspeed/zero2_fp32.json --config run.yaml": (
        "tests/train/test_trainer.py::test_two_process_deepspeed_run_loss_decreases_and_scale_clamped",
        '"deepspeed.launcher.runner"'),  # what the `deepspeed` script runs
    "webclip eval --config run.yaml": (
        "tests/eval/test_trained_model.py::test_python_m_eval_command_line",
        '[sys.executable, "-m", "eval", "--config", str(cfg)'),  # python -m eval is `webclip eval`
    "webclip eval --config run.yaml --set eval.checkpoint=/path/to/model.pt --set 'eval.tasks=[zeroshot]'": (
        "tests/eval/test_trained_model.py::test_python_m_eval_command_line",
        '"--set", "eval.tasks=[zeroshot]"'),  # its config names the trained model.pt as eval.checkpoint
    "bash scripts/test.sh": ("CI", ""),  # it is what CI runs: lint and this suite
    "webclip plan --pairs 400M --candidates 5B --eval 50k,10k,10k --model ViT-B-16 --steps 390625 "
    "--batch 32768 --cluster aws-clip": (
        "tests/pipeline/test_plan.py::test_readme_example_runs_through_the_cli", "readme_plan()"),
}

#: Not run, and why. Their repository paths and `--set` overrides are still checked below.
EXEMPT = {
    "bash infra/ray/iam/create-profiles.sh my-bucket":
        "needs an AWS account with IAM rights; its policies and the profile names cluster.yaml uses are "
        "checked in tests/crawl/test_cluster_yaml.py, its syntax with bash -n there",
    "ray up -y infra/ray/cluster.yaml":
        "needs an AWS account; cluster.yaml is checked against Ray's schema and validate_config, its "
        "resources, profiles, image and spot fallback in tests/crawl/test_cluster_yaml.py; a loopback head "
        "stands in for it in tests/test_laptop_to_cluster.py",
    "ray dashboard infra/ray/cluster.yaml":
        "an SSH tunnel to the AWS head; the loopback head of tests/test_laptop_to_cluster.py serves its "
        "dashboard on the same 127.0.0.1:8265",
    "ray down -y infra/ray/cluster.yaml": "needs the cluster `ray up` makes (AWS)",
    "deepspeed --num_gpus 8 train/main.py --deepspeed_config infra/deepspeed/zero2.json --config run.yaml "
    "--set train.model=ViT-B-16 --set train.batch_size=256 --set train.steps=100000":
        "needs 8 GPUs; the same launcher and script run with 2 CPU processes in tests/train/test_trainer.py",
    "deepspeed --hostfile infra/deepspeed/hostfile.example train/main.py --deepspeed_config "
    "infra/deepspeed/zero3.json --config run.yaml": "needs the machines the hostfile names (multi-node)",
    "duckdb -readonly runs/demo/audit.duckdb":
        "the DuckDB CLI is not installed by setup; the python -c line above opens the same file and is run here",
}


def _canon(command: str) -> tuple[str, ...]:
    return tuple(shlex.split(command, comments=True))


def readme_commands() -> list[tuple[str, ...]]:
    """Each shell command of README.md's fenced shell blocks, as words (continuations joined, comments
    dropped)."""
    commands = []
    for lang, body in FENCE.findall(README.read_text(encoding="utf-8")):
        if lang not in SHELL:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = tuple(shlex.split(line, comments=True))
            if words:
                commands.append(words)
    return commands


def _here(test: str) -> list[tuple[str, ...]]:
    """The README commands this file runs in ``test``."""
    mine = {_canon(c) for c, t in HERE.items() if t.startswith(test)}
    return [c for c in readme_commands() if c in mine]


def test_every_readme_command_is_run_or_exempt():
    text = README.read_text(encoding="utf-8")
    untagged = [body.strip().splitlines()[0] for lang, body in FENCE.findall(text) if not lang]
    assert not untagged, f"fenced blocks need a language (bash, text, yaml, sql…) so commands are found: {untagged}"
    found = set(readme_commands())
    known = {_canon(c): c for table in (HERE, TESTS, EXEMPT) for c in table}
    assert len(known) == len(HERE) + len(TESTS) + len(EXEMPT), "a command is listed twice"
    missing = [shlex.join(c) for c in found if c not in known]
    assert not missing, f"README commands run by no test and not exempt (add them to {__file__}): {missing}"
    stale = [known[c] for c in known if c not in found]
    assert not stale, f"listed here but no longer in the README: {stale}"


@pytest.mark.parametrize("command", sorted(TESTS))
def test_the_named_test_exists_and_runs_the_command(command):
    test, needle = TESTS[command]
    if test == "CI":
        assert (REPO / "scripts" / "test.sh").is_file()
        return
    path, name = test.split("::")
    source = (REPO / path).read_text(encoding="utf-8")
    assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{test} does not exist"
    assert needle in source, f"{path} no longer contains {needle!r}: does it still run `{command}`?"


@pytest.mark.parametrize("words", readme_commands(), ids=shlex.join)
def test_paths_and_overrides_in_commands_are_real(words):
    """Repository paths a command names exist; every ``--set`` it passes is a valid override."""
    from pipeline.config import load_config

    command = shlex.join(words)
    for w in words:
        if re.match(r"^(scripts|infra|train|crawl|eval|demo|pipeline|dedup|benchmarks)/", w):
            assert (REPO / w).exists(), f"`{command}` names {w}, which does not exist"
    sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
    if sets:
        load_config(None, sets)  # raises ConfigError naming the key


def test_readme_sql_is_what_the_audit_test_runs():
    from tests.dedup.test_audit import _queries

    sql = [body for lang, body in FENCE.findall(README.read_text(encoding="utf-8")) if lang == "sql"]
    assert sql and _queries(REPO) == sql, "every ```sql block of the README must be an auditor question it runs"


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"  # this checkout's code
    env.pop("RAY_ADDRESS", None)
    return env


def _run(words: tuple[str, ...] | list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(list(words), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"`{shlex.join(words)}` exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out


def _workdir(tmp_path: Path) -> Path:
    """A directory with the README's `my.yaml` (vocab and audit on runs/demo: no Ray needed) and inputs."""
    (tmp_path / "queries.txt").write_text("red square\ngreen circle\ncat\n")
    (tmp_path / "pool.tsv").write_text(
        "a red square on a table\thttp://example.com/a.jpg\nA CAT\thttp://example.com/b.jpg\n"
        "nothing here\thttp://example.com/c.jpg\n"
    )
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({
        "run": "runs/demo",
        "stages": ["vocab", "audit"],
        "vocab": {"sources": ["file"], "files": ["queries.txt"]},
        "extract": {"inputs": [{"path": "pool.tsv", "kind": "tsv", "header": False, "text_column": "0",
                                "url_column": "1"}]},
    }))
    return tmp_path


def test_cheap_commands_run_as_written(tmp_path):
    cwd = _workdir(tmp_path)
    commands = {shlex.join(c): c for c in _here("test_cheap_commands_run_as_written")}
    assert len(commands) == 4, commands
    run = _run(commands["webclip run --config my.yaml"], cwd)
    assert "[audit] wrote" in run.stderr and (cwd / "runs" / "demo" / "audit.duckdb").is_file()
    again = _run(commands["webclip run --config my.yaml"], cwd)
    assert "skipping completed stage(s) vocab" in again.stderr and "[vocab] already complete, skipped" in again.stderr
    status = _run(commands["webclip status runs/demo"], cwd).stdout
    assert re.search(r"vocab\s+done", status) and re.search(r"audit\s+done", status), status
    config = yaml.safe_load(_run(commands["webclip config --config my.yaml"], cwd).stdout)
    assert config["run"] == "runs/demo" and config["vocab"]["files"] == ["queries.txt"]
    duck = next(c for name, c in commands.items() if name.startswith("python -c"))
    table = _run(duck, cwd).stdout
    assert "vocab_entries" in table and "run_config" in table


def test_stage_commands_on_a_memory_run(tmp_path, monkeypatch):
    """`webclip match …` and `webclip download …` as written, their run URL moved to memory:// (a bucket,
    a cluster-wide run directory, would be needed otherwise). memory:// runs their tasks in this process."""
    from demo.server import serve
    from pipeline.cli import main
    from pipeline.rundir import RunDir
    from tests.ray_cluster import free_port

    cwd = _workdir(tmp_path)
    monkeypatch.chdir(cwd)
    # match: the README's command on a run whose vocab and pool exist
    match, download = _here("test_stage_commands_on_a_memory_run")
    url = f"memory://readme-{tmp_path.name}/runs/r1"
    assert main(["run", "--config", "my.yaml", "--stages", "vocab,extract", "--run", url]) == 0
    assert main([w.replace("s3://bucket/runs/r1", url) for w in match[1:]]) == 0
    run = RunDir(url)
    matched = [t for p in run.glob("match/part-*.parquet") for t in run.read_parquet(p)["text"].to_pylist()]
    assert sorted(matched) == ["A CAT", "a red square on a table"]  # "A CAT" only with normalize=true

    # download: the README's command on a curated list of two images served on loopback
    site = cwd / "site"
    site.mkdir()
    Image.new("RGB", (48, 40), "red").save(site / "a.jpg")
    port = free_port()
    (cwd / "crawl.yaml").write_text(yaml.safe_dump({
        "download": {"allow_addresses": ["127.0.0.1/32"], "image_size": 32, "thread_count": 2},
    }))
    run = RunDir(f"memory://readme-{tmp_path.name}/runs/wit")
    run.write_parquet("curated/part-00000.parquet", pa.table({
        "uid": ["u1", "u2"],
        "url": [f"http://127.0.0.1:{port}/a.jpg", f"http://127.0.0.1:{port}/missing.jpg"],
        "text": ["a red square", "a missing square"],
        "entry_ids": pa.array([[0], [0]], pa.list_(pa.int32())),
    }))
    with serve(site, port):
        assert main([w.replace("runs/wit", run.url) for w in download[1:]]) == 0
    rows = {r["uid"]: r for r in run.read_parquet("shards/00000.parquet").to_pylist()}
    assert rows["u1"]["status"] == "success" and rows["u2"]["reason"] == "http_404"


def test_demo_script_is_setup_then_python_m_demo():
    """`bash scripts/demo.sh` = scripts/setup.sh (CI runs it before the suite, in scripts/test.sh) then
    `exec python -m demo "$@"`, which tests/e2e/test_interrupt.py runs on the small configuration."""
    script = (REPO / "scripts" / "demo.sh").read_text()
    lines = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert "bash scripts/setup.sh" in lines and lines[-1] == 'exec python -m demo "$@"'
    assert "bash scripts/setup.sh" in (REPO / "scripts" / "test.sh").read_text()
    assert "python -m demo" in (REPO / "tests" / "e2e" / "test_interrupt.py").read_text()
    out = subprocess.run([sys.executable, "-m", "demo", "--help"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--run" in out.stdout
