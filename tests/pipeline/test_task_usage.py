"""Per-task CPU seconds and worker peak RSS: recorded in each marker, summed/maxed in the stage stats."""

from __future__ import annotations

import time

from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from pipeline.stats import Stats
from tests.pipeline.fixture_stage import HashLinesStage, make_inputs

BURN_S = 0.3  # CPU seconds each task burns
HOLD_MB = 160  # memory each task touches


class BurnStage(HashLinesStage):
    """Hashes lines like its parent, then burns CPU and touches memory, so both must show up."""

    name = "match"  # a real stage's name, so `webclip status` lists it

    def process(self, task, stats: Stats) -> None:
        super().process(task, stats)
        held = bytearray(HOLD_MB * 2**20)
        held[:: 4096] = b"x" * len(held[:: 4096])  # touch every page, so it is resident
        end = time.process_time() + BURN_S
        while time.process_time() < end:
            pass
        stats.inc("held", len(held) // 2**20)


def test_merge_sums_cpu_and_keeps_the_largest_peak():
    a = Stats(cpu_seconds=1.5, peak_rss_mb=300.0)
    a.merge(Stats(cpu_seconds=2.0, peak_rss_mb=900.0)).merge(Stats(cpu_seconds=0.5, peak_rss_mb=100.0))
    assert a.cpu_seconds == 4.0 and a.peak_rss_mb == 900.0
    back = Stats.from_dict(a.to_dict())
    assert (back.cpu_seconds, back.peak_rss_mb) == (4.0, 900.0)


def test_a_marker_written_before_the_fields_existed_still_loads():
    old = {"counts": {"in": 3}, "dropped": {}, "seconds": 1.25}
    stats = Stats.from_dict(old)
    assert stats.counts["in"] == 3 and stats.cpu_seconds == 0.0 and stats.peak_rss_mb == 0.0
    assert Stats(cpu_seconds=1.0).merge(stats).cpu_seconds == 1.0


def test_each_task_reports_its_cpu_and_its_worker_peak_on_ray(tmp_path, make_config, ray_local):
    inputs = make_inputs(tmp_path / "in", n_files=3)
    run = RunDir(str(tmp_path / "run"))
    run_stage(BurnStage(make_config(run=run.url), run, str(inputs)), progress=False)
    markers = [run.read_marker("match", t)["stats"] for t in ("part-000", "part-001", "part-002")]
    for m in markers:
        assert m["cpu_seconds"] >= BURN_S * 0.95  # process_time, so a loaded machine cannot shrink it
        assert m["peak_rss_mb"] >= HOLD_MB
    stage = run.read_json("stats/match.json")
    assert abs(stage["cpu_seconds"] - sum(m["cpu_seconds"] for m in markers)) < 0.01
    assert stage["peak_rss_mb"] == max(m["peak_rss_mb"] for m in markers)

    # `webclip status` shows them; stats written before they existed still show, without them
    from pipeline.cli import status

    run.write_text(RunDir.CONFIG, "{}\n")
    line = next(ln for ln in status(run.url).splitlines() if ln.strip().startswith("match"))
    assert f"task_cpu={stage['cpu_seconds']:.1f}s" in line and "worker_peak=" in line
    old = {k: v for k, v in stage.items() if k not in ("cpu_seconds", "peak_rss_mb")}
    run.write_json("stats/match.json", old)
    line = next(ln for ln in status(run.url).splitlines() if ln.strip().startswith("match"))
    assert "in=150" in line and "task_cpu" not in line
