"""The audit page renders in headless Chromium with its pairs, rates and plot."""

from __future__ import annotations

import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from dedup.audit import AuditStage
from pipeline.rundir import RunDir
from pipeline.runner import run_stage

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(args: list[str], profile) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian `chromium` is not installed (apt-get install -y chromium)"
)
def test_page_renders_in_chromium_with_pairs_and_plot(audited_run, tmp_path):
    cfg, run, _ = audited_run
    ov = pq.read_table(run.path("dedup/overlaps.parquet")).to_pylist()
    # Rejected candidates shown: up to audit.show_rejected per eval set (how many exist depends on the detector).
    rejected = sum(
        min(cfg.audit.show_rejected, sum(1 for r in ov if r["eval_set"] == s and not r["confirmed"]))
        for s in {r["eval_set"] for r in ov}
    )
    assert rejected >= 1
    page = run.local_path("audit/index.html")
    html = page.read_text()
    # Self-contained: every image is a data: URI, no external stylesheet or script.
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path / "profile1").stdout
    # The browser parsed the page: its DOM holds the pairs, the rates, the plot and every section.
    assert dom.count('class="pair"') == 6 and dom.count('class="pair rejected"') == rejected
    assert dom.count('src="data:image/png;base64,') >= 2 * (6 + rejected) + 1
    assert 'id="longtail-plot"' in dom and 'id="overlap-analysis"' in dom and 'id="download"' in dom
    assert "failed_to_download" in dom and "airplane" in dom
    assert '<td class="num">4</td>' in dom  # cifar10: 4 overlapping eval images
    shot = tmp_path / "audit.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()], tmp_path / "profile2")
    assert shot.stat().st_size > 20_000
    shutil.copy(shot, run.local_path("audit", "screenshot.png"))  # kept beside the page for a look


def test_page_without_balance_plot_or_eval_skips_those_sections(audited_run, tmp_path):
    cfg, shared_run, _ = audited_run
    copy = tmp_path / "run"
    shutil.copytree(shared_run.local_path(), copy)  # the shared run stays as it is
    run = RunDir(str(copy))
    cfg = cfg.model_copy(update={"run": str(copy)})
    (copy / "balance" / "longtail.png").unlink()
    shutil.rmtree(copy / "eval")
    run_stage(AuditStage(cfg, run), progress=False)
    html = run.local_path("audit/index.html").read_text()
    assert 'id="longtail"' not in html and 'id="overlap-analysis"' not in html
    assert 'class="pair"' in html and 'id="overlap-rate"' in html
