"""``webclip plan``: the README's CLIP-scale example through the CLI, rates used consistently, bad input → exit 2."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.plan import CLUSTERS, load_rates, make_inputs, make_plan, row_stage_cpu

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RESULTS = REPO / "benchmarks" / "results"


def readme_plan() -> tuple[str, str]:
    """The README's ``webclip plan`` command and the output printed under it."""
    text = README.read_text(encoding="utf-8")
    command = re.search(r"```bash\n(webclip plan [^`]*?)\n```", text, re.S)
    assert command, "README.md has no ```bash block with a `webclip plan` command"
    output = re.search(r"```text\n(webclip plan: .*?)\n```", text[command.end():], re.S)
    assert output, "README.md shows no output (```text block starting 'webclip plan:') after the command"
    return command.group(1).replace("\\\n", " "), output.group(1)


def _total_cost(text: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith("total"))
    return float(line.split()[-1].replace(",", ""))


def test_readme_example_runs_through_the_cli(capsys):
    command, shown = readme_plan()
    words = shlex.split(command)
    assert main(words[1:]) == 0
    out = capsys.readouterr().out
    for stage in ("vocab", "match", "balance", "download", "dedup", "train", "eval", "total", "storage"):
        assert re.search(rf"^{stage}\b", out, re.M), f"no {stage} line in the plan"
    assert "assumptions:" in out and "rates (benchmarks/rates.json):" in out
    # the README shows what the command prints with the rates file as it is (re-paste it when rates change)
    assert [ln.split()[0] for ln in shown.splitlines()[3:] if ln.strip()][:9] == \
        [ln.split()[0] for ln in out.splitlines()[3:] if ln.strip()][:9]
    assert _total_cost(shown) == pytest.approx(_total_cost(out), rel=0.10), \
        f"README's plan is stale: run `{command}` and paste its output into README.md"


def test_the_plan_adds_up_from_the_rates():
    rates = load_rates()
    inputs = make_inputs(pairs="400M", candidates="5B", eval_sizes="50k,10k", model="ViT-B-16", steps="390625",
                         batch="32768", cluster="aws-clip", rates=rates)
    plan = make_plan(inputs, rates)
    lines = {s.stage: s for s in plan.stages}
    train = rates["train"]["ViT-B-16"]["samples_per_s_per_gpu"]
    assert lines["train"].gpu_hours == pytest.approx(390625 * 32768 / train / 3600)
    assert lines["train"].wall_hours == pytest.approx(lines["train"].gpu_hours / 256)
    assert lines["download"].core_hours == pytest.approx(
        lines["download"].rows / rates["download"]["images_per_s_per_core"] / 3600)
    # 400M pairs after 70 % download success and 95 % dedup survival
    assert lines["download"].rows == pytest.approx(400e6 / 0.7 / 0.95, rel=1e-6)
    assert lines["match"].rows == 5_000_000_000 and lines["balance"].rows == 2_500_000_000
    shape = CLUSTERS["aws-clip"]
    assert lines["match"].usd == pytest.approx(lines["match"].wall_hours * 64 * shape.cpu.usd_per_hour)
    # extract's rate is per crawled page: the candidates' pages at the measured pairs per page, or the user's
    per_page = rates["stages"]["extract"]["pairs_per_page"]
    assert lines["extract"].rows == pytest.approx(5e9 / per_page, abs=1)
    assert lines["extract"].core_hours == pytest.approx(
        row_stage_cpu(rates["stages"]["extract"], lines["extract"].rows, 64 * 64)[0] / 3600)
    mine = make_inputs(pairs="400M", candidates="5B", eval_sizes="", model="ViT-B-16", steps="1", batch="1",
                       cluster="aws-clip", rates=rates, pairs_per_page=20)
    no_eval = {s.stage: s for s in make_plan(mine, rates).stages}
    assert no_eval["extract"].rows == 250_000_000
    # dedup: the pool joins' rate, plus each training view probing the eval sets' 21 views per image
    search = rates["dedup_eval_search"]
    probe_s = lines["dedup"].rows * 3 * search["us_per_query_per_million_eval_views"] * 60_000 * 21 / 1e6 * 1e-6
    assert lines["dedup"].worker_cpu_s == pytest.approx(no_eval["dedup"].worker_cpu_s + probe_s)


def _measured(size: int) -> dict:
    """Per stage, the figures the scale benchmark saved at ``size`` rows in the run that stage's rate came from."""
    rates = load_rates()
    saved = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("scale-*.json"))]
    found = {}
    for stage, rate in rates["stages"].items():
        date = rate.get("source", {}).get("date")
        for run in saved:
            if run.get("date") == date and stage in run.get("results", {}).get(str(size), {}):
                found[stage] = run["results"][str(size)][stage]
    return found


@pytest.mark.parametrize("size", [1_000_000, 5_000_000, 20_000_000])
def test_plan_matches_what_the_scale_benchmark_measured(size):
    """On the benchmark's own machine shape, the plan's CPU seconds per stage are the benchmark's (±30 %)."""
    measured = _measured(size)
    # every row stage's rate comes from a saved scale run that has this size: nothing is left unchecked
    assert {"match", "balance", "dedup"} <= set(measured), f"no saved scale run with {size:,} rows for {measured}"
    rates = load_rates()
    cores = CLUSTERS["bench"].cpu.cores
    for stage in ("match", "balance", "dedup"):
        m = measured[stage]
        worker, driver = row_stage_cpu(rates["stages"][stage], m["rows"], cores)
        assert worker == pytest.approx(m["worker_cpu_s"], rel=0.30), f"{stage} worker CPU at {size:,}"
        assert worker + driver == pytest.approx(m["worker_cpu_s"] + m["driver_cpu_s"], rel=0.30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pairs", "lots"], "--pairs: 'lots' is not a count"),
        (["--pairs", "0"], "--pairs: '0' must be at least 1"),
        (["--cluster", "moon"], "--cluster: unknown shape 'moon'"),
        (["--model", "ViT-H-99"], "--model: no training rate for 'ViT-H-99'"),
        (["--match-rate", "1.5"], "--match-rate: 1.5 must be a fraction"),
        (["--pairs-per-page", "0"], "--pairs-per-page: 0.0 is not a positive number"),
        (["--candidates", "500M"], "--candidates: 500,000,000 candidates"),
        (["--eval", "50k,x"], "--eval (item 2): 'x' is not a count"),
        (["--rates", "/nonexistent/rates.json"], "rates file /nonexistent/rates.json does not exist"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_2(args, message, capsys):
    base = {"--pairs": "400M", "--candidates": "5B", "--steps": "390625", "--batch": "32768"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["plan"] + [w for kv in base.items() for w in kv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
