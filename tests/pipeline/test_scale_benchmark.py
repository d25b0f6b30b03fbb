"""``benchmarks/scale.py``: its target checks and growth fits, and one tiny run end to end (embedded Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import scale  # noqa: E402


def _point(rows: int, worker: float, driver: float, driver_mb: float) -> dict:
    return {"rows": rows, "tasks": 4, "wall_s": worker, "worker_cpu_s": worker, "driver_cpu_s": driver,
            "worker_peak_rss_mb": 500.0, "driver_peak_rss_mb": driver_mb}


def test_targets_and_fits():
    results = {
        "1000000": {"match": _point(10**6, 7.0, 0.5, 370), "balance": _point(10**6, 3.0, 1.0, 500)},
        "20000000": {"match": _point(20 * 10**6, 83.0, 1.3, 380), "balance": _point(20 * 10**6, 43.0, 14.0, 600)},
    }
    a = scale.analyse(results, baseline={"results": {"20000000": {"match": _point(20 * 10**6, 166.0, 2.6, 0)}}})
    # match: 4 us/row + 3 s fixed, driver 1.6 % of workers, driver memory +2.7 %, twice the baseline's speed
    assert a["match"]["worker_cpu_us_per_row"] == pytest.approx(4.0)
    assert a["match"]["worker_cpu_fixed_s"] == pytest.approx(3.0)
    assert a["match"]["driver_cpu_ok"] and a["match"]["driver_rss_ok"]
    assert a["match"]["throughput_ratio"] == pytest.approx(2.0) and a["match"]["throughput_ok"]
    # balance: the driver does a third of the work and its memory grows 20 %: both targets missed
    assert not a["balance"]["driver_cpu_ok"] and not a["balance"]["driver_rss_ok"]
    assert "throughput_ratio" not in a["balance"]  # no baseline point for balance: no verdict made up
    text = scale.report(results, a, pending=["dedup"])
    assert "driver CPU 32.6% of worker CPU (<= 5%: NOT met)" in text
    assert "dedup    pending" in text


def test_sizes_parse_and_bad_sizes_are_refused():
    assert [scale.parse_size(s) for s in ("200k", "1M", "20M", "1_500_000")] == [200_000, 10**6, 2 * 10**7, 1_500_000]
    for bad in ("x", "0", "-5M"):
        with pytest.raises(Exception, match="size"):
            scale.parse_size(bad)


@pytest.mark.slow
@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "captions").is_dir(), reason="needs ../shared/data")
def test_a_tiny_run_end_to_end_writes_results_and_rates(tmp_path):
    """vocab → match → balance at 20k rows (5,000 entries), each stage in its own process (about a
    minute: three embedded Ray starts)."""
    out, rates = tmp_path / "scale.json", tmp_path / "rates.json"
    rates.write_text(json.dumps({"stages": {}, "download": {"images_per_s_per_core": 85}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--sizes", "20k", "--entries", "5000",
         "--rows-per-part", "10000", "--stages", "vocab,match,balance", "--save", str(out),
         "--rates-file", str(rates), "--write-rates"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    for size, n in (("20000", 20_000),):
        match = saved["results"][size]["match"]
        assert match["rows"] == n and match["tasks"] == n // 10_000
        assert match["worker_cpu_s"] > 0 and match["worker_peak_rss_mb"] > 0 and match["driver_peak_rss_mb"] > 0
        assert saved["results"][size]["balance"]["rows"] == match["counts"]["matched"]
    written = json.loads(rates.read_text())
    assert set(written["stages"]) == {"vocab", "match", "balance"}
    assert written["download"] == {"images_per_s_per_core": 85}  # rates it did not measure are kept
    assert written["stages"]["match"]["source"]["benchmark"] == "benchmarks/scale.py"
    assert "targets (issue 22)" in proc.stdout
