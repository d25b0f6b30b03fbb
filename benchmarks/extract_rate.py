"""Extraction rate on real Common Crawl pages: CPU per HTML page, beside a bare FastWARC + selectolax loop.

    python benchmarks/extract_rate.py [--files 4,16] [--copies-per-file 50] [--num-cpus 2] [--write-rates]

Data: the real WARC excerpts in ``../shared/data/warc`` (Common Crawl and ClueWeb responses: 45 HTML
pages, 1,115 ``<img>`` tags), concatenated ``--copies-per-file`` times into each of ``--files`` WARC
files (one extract task each). Copies of a page give the same pairs, which the
cross-file shuffle removes; the extraction work per page (decompress, parse, resolve, normalise) is the
same as for new pages, which is what the rate is for.

Each size runs ``webclip extract`` (``run_stage`` on the extract stage, embedded Ray of ``--num-cpus``)
in a fresh process through ``benchmarks/scale.py``'s ``measure_stage``: the workers' CPU seconds come
from the per-task accounting in the completion markers, the driver's from ``process_time`` over the
stage (its cross-file shuffle sub-stages included). The reference is the floor of the same job: one
process iterating the same files with FastWARC and selectolax, reading each ``<img>``'s ``alt`` and
``src`` and resolving it against the page, with none of webclip's checks, normalisation or dedup.

It prints CPU µs per HTML page and per ``<img>`` tag for both, fits webclip's CPU against pages
(fixed + per page), and with ``--write-rates`` puts the fit in ``benchmarks/rates.json``
(``stages.extract``, rows = HTML pages) for ``webclip plan``, with the real pages' pairs per page.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WARC_DIR = ROOT.parent / "shared" / "data" / "warc"
#: The two excerpts of ordinary pages; the other two files are malformed-record edge cases.
PAGES = ("clueweb-quirk.warc.gz", "warcfile.warc.gz")


def _scale_module() -> Any:
    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_files(folder: Path, files: int, copies_per_file: int) -> list[Path]:
    """``files`` WARC files, each the real excerpts concatenated ``copies_per_file`` times; returns them.

    A ``.warc.gz`` is a series of gzip members, one per record, so concatenated files are a valid WARC:
    each file is a few thousand real pages, closer to a crawl's files (tens of thousands of pages each)
    than the excerpts alone, so the per-task costs weigh per page as they would there.
    """
    folder.mkdir(parents=True, exist_ok=True)
    one = b"".join((WARC_DIR / name).read_bytes() for name in PAGES) * copies_per_file
    paths = []
    for i in range(files):
        path = folder / f"{i:05d}.warc.gz"
        if not path.exists():
            path.write_bytes(one)
        paths.append(path)
    return paths


def reference(paths: list[Path]) -> dict[str, float]:
    """The bare loop: FastWARC responses → selectolax ``<img>`` → (resolved src, alt). CPU seconds and counts."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from selectolax.lexbor import LexborHTMLParser

    c0 = time.process_time()
    pages = imgs = pairs = 0
    for path in paths:
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=False):
                block = record.reader.read()
                sep, skip = block.find(b"\r\n\r\n"), 4
                if sep < 0:
                    sep, skip = block.find(b"\n\n"), 2
                if sep < 0 or not block.startswith(b"HTTP/"):
                    continue
                head = block[:sep].lower()
                if b"content-type:" in head and b"html" not in head.split(b"content-type:", 1)[1].split(b"\n")[0]:
                    continue
                pages += 1
                page_url = record.headers.get("WARC-Target-URI", "")
                tree = LexborHTMLParser(block[sep + skip:])
                for img in tree.css("img"):
                    imgs += 1
                    alt, src = img.attributes.get("alt"), img.attributes.get("src")
                    if alt and src:
                        urljoin(page_url, src)
                        pairs += 1
    return {"cpu_s": time.process_time() - c0, "pages": pages, "imgs": imgs, "pairs": pairs}


def measure_webclip(paths: list[Path], run_dir: Path, num_cpus: int) -> dict[str, Any]:
    """``scale.py``'s ``measure_stage`` of extract over ``paths`` in a fresh process."""
    code = (
        "import json, sys; sys.path.insert(0, %r); import importlib.util as u; "
        "s = u.spec_from_file_location('scale', %r); m = u.module_from_spec(s); s.loader.exec_module(m); "
        "print(json.dumps(m.measure_stage('extract', %r, %r)))"
    )
    inputs = "[" + ", ".join(f"{{path: {p}, kind: warc}}" for p in paths) + "]"
    overrides = [f"extract.inputs={inputs}", f"ray.num_cpus={num_cpus}"]
    script = code % (str(ROOT), str(ROOT / "benchmarks" / "scale.py"), str(run_dir), overrides)
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"extract over {len(paths)} files failed (exit {proc.returncode}); see above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="4,16", help="comma-separated WARC file counts, one run each")
    ap.add_argument("--copies-per-file", type=int, default=50, help="copies of the real excerpts in each file")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the embedded Ray")
    ap.add_argument("--write-rates", action="store_true", help="put the fit in benchmarks/rates.json")
    args = ap.parse_args(argv)
    if not all((WARC_DIR / name).exists() for name in PAGES):
        ap.error(f"the real WARC excerpts are not in {WARC_DIR}: this benchmark reads ../shared/data/warc")
    scale = _scale_module()
    meta = scale._meta(argparse.Namespace(num_cpus=args.num_cpus, sizes=[], entries=0, rows_per_part=0))
    points, refs = [], []
    with tempfile.TemporaryDirectory(prefix="webclip-extract-rate-") as tmp:
        for files in (int(c) for c in args.files.split(",")):
            paths = write_files(Path(tmp) / "warc", files, args.copies_per_file)
            ref = reference(paths)
            refs.append(ref)
            r = measure_webclip(paths, Path(tmp) / f"run-{files}", args.num_cpus)
            pages = r["counts"].get("records_html", 0)
            imgs = r["counts"].get("imgs", 0)
            cpu = r["worker_cpu_s"] + r["driver_cpu_s"]
            points.append((pages, r))
            print(f"{files:>4} files: {pages:,} pages, {imgs:,} <img>, {r['counts'].get('out', 0):,} pairs out | "
                  f"webclip worker {r['worker_cpu_s']:.2f}s + driver {r['driver_cpu_s']:.2f}s CPU = "
                  f"{cpu / pages * 1e6:,.0f} µs/page ({cpu / max(imgs, 1) * 1e6:,.1f} µs/img), wall {r['wall_s']:.1f}s, "
                  f"worker peak {r['worker_peak_rss_mb']:.0f} MB, driver peak {r['driver_peak_rss_mb']:.0f} MB | "
                  f"bare loop {ref['cpu_s']:.2f}s = {ref['cpu_s'] / max(ref['pages'], 1) * 1e6:,.0f} µs/page "
                  f"({ref['pages']:,} pages, {ref['pairs']:,} alt+src) | webclip / bare "
                  f"{cpu / max(ref['cpu_s'], 1e-9):.2f}×", flush=True)
    ns = [float(p) for p, _ in points]
    a_w, b_w = scale.fit(ns, [r["worker_cpu_s"] for _, r in points])
    a_d, b_d = scale.fit(ns, [r["driver_cpu_s"] for _, r in points])
    # Candidate pairs (an <img> with alt and src) per page of the real excerpts: what plan assumes by default.
    pages = points[-1][0]
    pairs_per_page = refs[-1]["pairs"] / max(refs[-1]["pages"], 1)
    print(f"\nfit: worker CPU = {a_w:.2f}s + {b_w * 1e6:,.0f} µs/page; driver CPU = {a_d:.2f}s + "
          f"{b_d * 1e6:,.1f} µs/page; {pairs_per_page:.2f} candidate pairs per page on these real pages")
    print(f"machine: {meta['machine']}; CPU seconds are the comparable figures on a shared machine")
    if args.write_rates:
        rates = json.loads(scale.RATES.read_text())
        rates.setdefault("stages", {})["extract"] = {
            "rows": "HTML pages",
            "worker_cpu_us_per_row": round(b_w * 1e6, 2),
            "worker_cpu_fixed_s": round(a_w, 2),
            "bench_workers": args.num_cpus,
            "driver_cpu_us_per_row": round(max(b_d, 0.0) * 1e6, 3),
            "driver_cpu_fixed_s": round(a_d, 2),
            "worker_peak_rss_mb": round(max(r["worker_peak_rss_mb"] for _, r in points), 1),
            "driver_peak_rss_mb": round(max(r["driver_peak_rss_mb"] for _, r in points), 1),
            "driver_rss_growth": round(points[-1][1]["driver_peak_rss_mb"] / points[0][1]["driver_peak_rss_mb"] - 1, 4),
            "largest_rows": int(pages),
            "pairs_per_page": round(pairs_per_page, 2),
            "source": {"benchmark": "benchmarks/extract_rate.py",
                       "command": "python benchmarks/extract_rate.py " + " ".join(sys.argv[1:]),
                       "date": meta["date"], "commit": meta["commit"], "machine": meta["machine"]},
        }
        scale.RATES.write_text(json.dumps(rates, indent=2) + "\n")
        print(f"rates written to {scale.RATES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
