"""The audit page renders in headless Chromium with its pairs, rates and plot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

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


#: Appended to a copy of the page (the page itself carries no script): once everything has loaded, the
#: browser reports what it laid out, and which images it could not decode.
PROBE = """<script>
window.addEventListener('load', () => {
  const q = (s) => document.querySelectorAll(s);
  const imgs = [...document.images];
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    images: imgs.length,
    broken: imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
    pairs: q('.pair').length - q('.pair.rejected').length,
    rejected: q('.pair.rejected').length,
    swatches: q('#pairs-legend .swatch').length,
    legendText: (document.querySelector('#pairs-legend') || {}).textContent || '',
    overlapHeaders: [...q('table.overlap-analysis th')].map((t) => t.textContent),
    overlapRows: q('table.overlap-analysis tr').length - 1,
    resultRows: q('table.eval-results tr').length - 1,
    warnings: q('p.warning').length,
    title: document.title,
    runHref: document.querySelector('#run-location a').getAttribute('href'),
  });
  document.body.prepend(out);
});
</script>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian `chromium` is not installed (apt-get install -y chromium)"
)
def test_page_in_chromium_names_the_run_relatively_has_a_legend_and_no_broken_image(audited_run, tmp_path):
    """Issue 21, finding 5: no absolute build path, a legend for the tinted cards, the task column where a
    set appears under two tasks; checked by the browser (layout, decoded images) and in a screenshot."""
    cfg, run, _ = audited_run
    page = run.local_path("audit/index.html")
    html = page.read_text()
    assert str(run.local_path()) not in html and run.url not in html  # wherever the run is opened
    probe_page = tmp_path / "run" / "audit" / "index.html"
    probe_page.parent.mkdir(parents=True)
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _chromium(
        ["--virtual-time-budget=20000", "--dump-dom", probe_page.as_uri()], tmp_path / "p1"
    ).stdout
    found = json.loads(html_unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))

    ov = pq.read_table(run.path("dedup/overlaps.parquet")).to_pylist()
    rejected = sum(
        min(cfg.audit.show_rejected, sum(1 for r in ov if r["eval_set"] == s and not r["confirmed"]))
        for s in {r["eval_set"] for r in ov}
    )
    assert found["broken"] == [], found["broken"]
    assert found["pairs"] == 6 and found["rejected"] == rejected >= 1
    assert found["images"] == 2 * (6 + rejected) + 1  # two thumbnails per card, and the long-tail plot
    assert found["swatches"] == 2 and "rejected" in found["legendText"] and "confirmed" in found["legendText"]
    assert found["title"] == f"webclip audit — run {page.parent.parent.name}" and found["runHref"] == ".."
    assert found["overlapHeaders"][:3] == ["dataset", "task", "checkpoint"] and found["overlapRows"] == 3
    assert found["resultRows"] == 3 and found["warnings"] == 1

    shot = tmp_path / "audit.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,3200", page.as_uri()], tmp_path / "p2")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (3200, 1280)
    # the tinted background of rejected cards and of the legend's swatch is on screen
    tint = (np.abs(img - np.array([255, 246, 246])).max(axis=2) <= 2).sum()
    assert tint > 2000 * rejected
    # thumbnails rendered: many strongly coloured or dark pixels, not a blank or text-only page
    assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 500
    shutil.copy(shot, run.local_path("audit", "screenshot-legend.png"))  # kept beside the page for a look


def html_unescape(text: str) -> str:
    import html as _html

    return _html.unescape(text)
