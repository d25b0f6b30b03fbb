"""``AuditStage`` (``webclip audit``, runs last): ``<run>/audit.duckdb`` and ``<run>/audit/index.html``.

One task, run in the driver: DuckDB writes one local file (built in a temporary folder, then moved
into the run directory, which may be remote), and the page is rendered from that database.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from dedup.audit_db import build_audit_db
from dedup.audit_page import render_page
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats


class AuditStage(Stage):
    """Materialise every artifact of the run into a DuckDB file and render the static audit page."""

    name = "audit"
    outputs = ("audit", "audit.duckdb")
    in_driver = True
    # Re-auditing is cheap and later stages (eval) add tables: always rebuild.
    resumable = False

    def check(self) -> None:
        # The audit reflects the run as it is now (eval may have added outputs since the last audit):
        # forget the previous task marker so the runner rebuilds instead of skipping.
        self.run.remove(f"_done/{self.name}", recursive=True)
        if not (
            self.run.glob("shards/*.parquet")
            or self.run.exists("dedup/overlaps.parquet")
            or self.run.exists("vocab/entries.parquet")
        ):
            raise ConfigError(
                f"audit: {self.run.url} holds no pipeline artifacts (vocab, shards, dedup); run the earlier "
                "stages first or pass the right --run"
            )

    def tasks(self) -> list[Task]:
        return [Task("audit")]

    def process(self, task: Task, stats: Stats) -> None:
        with tempfile.TemporaryDirectory(prefix="webclip-audit-") as tmp:
            db = Path(tmp) / "audit.duckdb"
            rows = build_audit_db(self.run, db, log=lambda m: print(m, file=sys.stderr))
            for name, n in rows.items():
                stats.inc(f"rows_{name}", n)
            page, shown = render_page(self.run, self.config, db)
            with db.open("rb") as fh, self.run.open_atomic(RunDir.AUDIT_DB) as out:
                while chunk := fh.read(1 << 22):
                    out.write(chunk)
        self.run.write_text(RunDir.AUDIT_PAGE, page)
        stats.inc("tables", len(rows))
        for k, v in shown.items():
            stats.inc(f"page_{k}", v)
        print(
            f"[audit] wrote {self.run.full_url(RunDir.AUDIT_DB)} and {self.run.full_url(RunDir.AUDIT_PAGE)}",
            file=sys.stderr,
        )
