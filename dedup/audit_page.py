"""The static audit page ``<run>/audit/index.html``: one self-contained file (images are ``data:`` URIs).

Sections: reconciliation and overlap rate per eval set; thumbnail pairs (training image beside the
evaluation image) with distance, verification score, caption, URL and label; the vocabulary entries
that brought overlapping samples in; the balancing long-tail plot (when the balance stage wrote
one); download failure reasons; and the eval stage's All/Overlap/Clean analysis when present.
Everything is read from the audit database, except the images (shards and eval sets).
"""

from __future__ import annotations

import base64
import html
import io
import posixpath
from pathlib import Path

from PIL import Image

from dedup.shards import iter_samples
from pipeline.evalsets import open_evalset
from pipeline.rundir import RunDir

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4} .num{text-align:right}
.pairs{display:flex;flex-wrap:wrap;gap:12px}
.pair{border:1px solid #ccc;border-radius:6px;padding:8px;width:260px;font-size:12px}
.pair.rejected{border-color:#e0a0a0;background:#fff6f6}
.pair .imgs{display:flex;gap:6px} .pair figure{margin:0;text-align:center}
.pair img{image-rendering:pixelated;border:1px solid #999}
.cap{overflow-wrap:anywhere;color:#444} .muted{color:#888}
.legend{display:flex;gap:18px;align-items:center;margin:8px 0;font-size:13px}
.legend .swatch{display:inline-block;width:28px;height:16px;border:1px solid #ccc;border-radius:4px;
 vertical-align:middle;margin-right:6px;background:#fff}
.legend .swatch.rejected{border-color:#e0a0a0;background:#fff6f6}
.warning{color:#a15c00}
"""

LEGEND = (
    '<div class="legend" id="pairs-legend">'
    '<span><span class="swatch confirmed"></span>confirmed: verification scored the pair at or above '
    "the set's threshold; the training sample counts as an overlap</span>"
    '<span><span class="swatch rejected"></span>rejected (tinted): a candidate within the Hamming '
    "radius that verification scored below the threshold; not an overlap, shown to check by eye</span>"
    "</div>"
)


def _data_uri(img: Image.Image, px: int) -> str:
    img = img.convert("RGB")
    scale = px / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(headers: list[str], rows: list[tuple], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int):
            return f'<td class="num">{v:,}</td>'
        return f"<td>{html.escape('' if v is None else str(v))}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _has(con, name: str) -> bool:
    q = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
    return con.execute(q, [name]).fetchone()[0] > 0


def render_page(run: RunDir, config, db_path: Path) -> tuple[str, dict[str, int]]:
    """The page's HTML and counts of what it shows (pairs, sections)."""
    import duckdb

    acfg = config.audit
    con = duckdb.connect(str(db_path), read_only=True)
    shown = {"pairs": 0, "rejected_pairs": 0, "sections": 0}
    name = html.escape(posixpath.basename(run.url.rstrip("/")) or run.url)
    # Named relative to this page (<run>/audit/index.html), so the page reads right wherever the run
    # directory is copied or opened; the absolute path at build time would be wrong elsewhere.
    parts = [
        f"<h1>webclip audit — run {name}</h1>",
        '<p class="muted" id="run-location">The run directory is <a href="..">the folder above this page</a> '
        '(this page is <code>audit/index.html</code> in it); its database: <a href="../audit.duckdb">'
        "../audit.duckdb</a>.</p>",
    ]
    try:
        # -- reconciliation
        if _has(con, "dedup_reconciliation"):
            rows = con.execute(
                "SELECT category, coalesce(reason, ''), n FROM dedup_reconciliation"
            ).fetchall()
            parts.append(
                '<h2 id="reconciliation">Downloaded = clean + removed</h2>'
                + _table(["category", "reason", "samples"], rows)
            )
            shown["sections"] += 1
        # -- overlap rate per eval set
        if _has(con, "overlap_rate"):
            rows = con.execute(
                "SELECT r.eval_set, r.eval_images, r.overlapping_images, round(100 * r.overlap_rate, 3), "
                "d.tau, d.verify_threshold, d.candidate_pairs, d.confirmed_pairs "
                "FROM overlap_rate r LEFT JOIN dedup_eval_sets d USING (eval_set) ORDER BY r.eval_set"
            ).fetchall()
            parts.append(
                '<h2 id="overlap-rate">Overlap rate per evaluation set</h2>'
                + _table(
                    [
                        "eval set",
                        "eval images",
                        "overlapping",
                        "overlap %",
                        "τ",
                        "verify ≥",
                        "candidates",
                        "confirmed",
                    ],
                    rows,
                    "overlap-rate",
                )
            )
            shown["sections"] += 1
        # -- pairs
        if _has(con, "overlap_pairs"):
            parts.append('<h2 id="pairs">Overlapping pairs (training image | evaluation image)</h2>')
            parts.append(LEGEND)
            parts.append(_pairs_html(run, config, con, acfg, shown))
            shown["sections"] += 1
        if _has(con, "overlap_entries") and _has(con, "vocab_entries"):
            rows = con.execute(
                "SELECT o.eval_set, o.entry_id, v.entry, o.training_samples FROM overlap_entries o "
                "LEFT JOIN vocab_entries v USING (entry_id) ORDER BY o.training_samples DESC, o.entry_id LIMIT 50"
            ).fetchall()
            parts.append(
                '<h2 id="entries">Vocabulary entries that brought overlapping samples in</h2>'
                + _table(["eval set", "entry_id", "entry", "training samples"], rows)
            )
            shown["sections"] += 1
        # -- long tail
        if run.exists("balance/longtail.png"):
            uri = "data:image/png;base64," + base64.b64encode(run.read_bytes("balance/longtail.png")).decode()
            parts.append(
                '<h2 id="longtail">Balancing: matches per entry before and after</h2>'
                f'<img id="longtail-plot" alt="long-tail plot" src="{uri}" style="max-width:100%">'
            )
            shown["sections"] += 1
            shown["longtail"] = 1
        # -- download failures
        if _has(con, "download_status"):
            rows = con.execute("SELECT status, error_message, n FROM download_status").fetchall()
            parts.append(
                '<h2 id="download">Download status and failure reasons</h2>'
                + _table(["status", "error", "URLs"], rows, "download-status")
            )
            shown["sections"] += 1
        # -- eval accuracy beside its baselines
        if _has(con, "eval_results"):
            section = _results_html(con)
            if section:
                parts.append(section)
                shown["sections"] += 1
        # -- eval overlap analysis
        if _has(con, "eval_overlap"):
            cols = [
                c
                for c in (
                    "dataset",
                    "task",
                    "checkpoint",
                    "n_all",
                    "n_overlap",
                    "overlap_pct",
                    "acc_all",
                    "acc_overlap",
                    "acc_clean",
                    "all_minus_clean",
                    "p_value",
                    "ci_low",
                    "ci_high",
                )
                if con.execute(
                    "SELECT count(*) FROM information_schema.columns WHERE table_name = "
                    "'eval_overlap' AND column_name = ?",
                    [c],
                ).fetchone()[0]
            ]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM eval_overlap").fetchall()
            parts.append(
                '<h2 id="overlap-analysis">Overlap analysis (All / Overlap / Clean accuracy)</h2>'
                + _table(cols, rows, "overlap-analysis")
            )
            shown["sections"] += 1
    finally:
        con.close()
    body = "\n".join(parts)
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>webclip audit — run {name}</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )
    return page, shown


def _columns(con, table: str) -> set[str]:
    q = "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
    return {r[0] for r in con.execute(q, [table]).fetchall()}


def _results_html(con) -> str:
    """Top-1 of every classification result beside chance, the majority-class rate and the classes
    present (from eval/results.parquet), with the sample evaluated and any warning."""
    if not {"chance_top1"} <= {
        r[0] for r in con.execute("SELECT DISTINCT metric FROM eval_results").fetchall()
    }:
        return ""
    extra = _columns(con, "eval_results") >= {"sample", "warning"}
    rows = con.execute(
        f"""
        SELECT dataset, task, checkpoint,
               max(value) FILTER (WHERE metric = 'top1') AS top1,
               max(value) FILTER (WHERE metric = 'chance_top1') AS chance,
               max(value) FILTER (WHERE metric = 'majority_top1') AS majority,
               max(value) FILTER (WHERE metric = 'n_classes_present')::INT AS present,
               max(value) FILTER (WHERE metric = 'n_classes_in_set')::INT AS in_set,
               max(value) FILTER (WHERE metric = 'n')::INT AS images,
               {"max(sample), max(warning)" if extra else "NULL, NULL"}
        FROM eval_results WHERE task IN ('zeroshot', 'linear_probe')
        GROUP BY ALL HAVING top1 IS NOT NULL ORDER BY dataset, task, checkpoint
        """
    ).fetchall()
    if not rows:
        return ""
    head = [
        "dataset",
        "task",
        "checkpoint",
        "top-1",
        "chance",
        "majority class",
        "classes",
        "images",
        "sample",
    ]
    body = []
    for ds, task, ck, top1, chance, major, present, in_set, n, sample, _warning in rows:
        classes = f"{present} of {in_set}" if in_set is not None and present != in_set else f"{present}"
        body.append((ds, task, ck, top1, chance, major, classes, n, sample or ""))
    notes = "".join(f'<p class="warning">⚠ {html.escape(w)}</p>' for *_, w in rows if w)
    return (
        '<h2 id="eval-results">Evaluation: accuracy beside chance and the majority class</h2>'
        '<p class="muted">chance: a guess drawn from the evaluated label distribution (Σ p²); majority '
        "class: always answering the most frequent evaluated class.</p>"
        + _table(head, body, "eval-results")
        + notes
    )


def _pairs_html(run: RunDir, config, con, acfg, shown: dict[str, int]) -> str:
    cur = con.execute(
        """
        SELECT * FROM (
          SELECT *, row_number() OVER (PARTITION BY eval_set, confirmed ORDER BY distance, verify_score DESC,
                                       eval_id, shard, key) AS rk
          FROM overlap_pairs)
        WHERE (confirmed AND rk <= ?) OR (NOT confirmed AND rk <= ?)
        ORDER BY eval_set, confirmed DESC, rk
        """,
        [acfg.pairs_per_set, acfg.show_rejected],
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if not rows:
        return (
            '<p class="muted">No candidate pairs: no training image is within τ of an evaluation image.</p>'
        )
    train_imgs = _training_images(run, {(r["shard"], r["key"]) for r in rows})
    eval_imgs = _eval_images(config, {(r["eval_set"], r["eval_id"]) for r in rows})
    out = ['<div class="pairs">']
    for r in rows:
        ti, ei = train_imgs.get((r["shard"], r["key"])), eval_imgs.get((r["eval_set"], r["eval_id"]))
        cls = "pair" if r["confirmed"] else "pair rejected"
        shown["pairs" if r["confirmed"] else "rejected_pairs"] += 1

        def fig(img, caption):
            if img is None:
                return f'<figure><div class="muted">image unavailable</div><figcaption>{caption}</figcaption></figure>'
            return (
                f'<figure><img alt="{caption}" src="{_data_uri(img, acfg.thumb_px)}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )

        verdict = "confirmed" if r["confirmed"] else "rejected by verification"
        out.append(
            f'<div class="{cls}" data-eval-set="{html.escape(r["eval_set"])}" data-eval-id="{html.escape(r["eval_id"])}">'
            f'<div class="imgs">{fig(ti, "training")}{fig(ei, "eval")}</div>'
            f"<div><b>{html.escape(r['eval_set'])}</b> #{html.escape(r['eval_id'])} · label "
            f"{html.escape(str(r['class_name']))} ({r['label']})</div>"
            f'<div>distance <b class="distance">{r["distance"]}</b> ({html.escape(r["train_view"])}→'
            f"{html.escape(r['eval_view'])}) · verify {r['verify_score']:.3f} · {verdict}</div>"
            f'<div class="cap">“{html.escape(r["text"] or "")}”</div>'
            f'<div class="cap"><a href="{html.escape(r["url"] or "")}">{html.escape(r["url"] or "")}</a></div>'
            f'<div class="muted">uid {html.escape(r["uid"] or "")} · shard {html.escape(r["shard"])} key '
            f"{html.escape(r['key'])}</div></div>"
        )
    out.append("</div>")
    return "".join(out)


def _training_images(run: RunDir, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Image.Image]:
    out = {}
    for shard in sorted({s for s, _ in wanted}):
        if not run.exists(f"shards/{shard}.tar"):
            continue
        for sample in iter_samples(run, f"shards/{shard}.tar"):
            if (shard, sample.key) in wanted and sample.image:
                try:
                    out[(shard, sample.key)] = Image.open(io.BytesIO(sample.image))
                    out[(shard, sample.key)].load()
                except Exception:  # an image that will not decode is shown as unavailable
                    continue
    return out


def _eval_images(config, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Image.Image]:
    out = {}
    for spec in config.evalsets:
        ids = {e for s, e in wanted if s == spec.name}
        if not ids:
            continue
        try:
            es = open_evalset(spec)
        except Exception:  # the eval set moved since dedup ran: the page shows the pair without it
            continue
        for rec in es:
            if rec.eval_id in ids:
                out[(spec.name, rec.eval_id)] = rec.rgb()
                ids.discard(rec.eval_id)
                if not ids:
                    break
    return out
