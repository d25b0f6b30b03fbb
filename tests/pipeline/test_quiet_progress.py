"""Embedded runs are quiet (no Ray token-authentication warning) and, without a terminal, progress goes out
as periodic plain lines (count, rate, ETA) instead of tqdm's carriage-return redraws."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.progress import PlainProgress, progress_bar
from tests.pipeline.fixture_stage import make_inputs

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def test_plain_progress_lines():
    out = io.StringIO()
    bar = PlainProgress(total=4, initial=1, desc="[match] tasks", unit="task", file=out, interval=0)
    bar.update(1)
    bar.set_postfix(failed=0)
    bar.update(1)
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3  # one per update (interval 0), no repeat at close
    assert re.fullmatch(r"\[match\] tasks 2/4 \(50%\), [0-9.e+]+ task/s, ETA \S+, elapsed \S+", lines[0]), lines[0]
    assert lines[-1].startswith("[match] tasks 4/4 (100%), ") and lines[-1].endswith(", failed=0")
    assert "ETA" not in lines[-1]
    quiet = io.StringIO()
    bar = PlainProgress(total=100, desc="[x] tasks", file=quiet, interval=3600)  # a line per hour at most
    for _ in range(100):
        bar.update(1)
    bar.close()
    assert quiet.getvalue().count("\n") == 1  # only the closing line


def test_a_terminal_gets_tqdm_and_a_log_gets_plain_lines():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert type(progress_bar(3, file=Tty())).__name__ == "tqdm"
    assert isinstance(progress_bar(3, file=io.StringIO()), PlainProgress)


def test_an_embedded_stage_without_a_terminal_is_quiet(tmp_path):
    """A stage on a fresh embedded Ray (its own process, stderr to a pipe as under `ray job submit`)."""
    inputs = make_inputs(tmp_path / "in", n_files=3, n_lines=5)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path / "home"), WEBCLIP_PROGRESS_SECONDS="0",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, str(HERE / "drive_stage.py"), "--run", str(tmp_path / "run"), "--input", str(inputs),
         "--num-cpus", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "DONE tasks=3" in out.stdout
    assert "Token authentication" not in out.stderr, out.stderr
    assert "\r" not in out.stderr  # no tqdm redraws
    progress = [ln for ln in out.stderr.splitlines() if ln.startswith("[hash_lines] tasks ")]
    assert progress and progress[-1].startswith("[hash_lines] tasks 3/3 (100%), "), out.stderr
