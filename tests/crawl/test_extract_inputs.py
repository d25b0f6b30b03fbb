"""Which files an extract input reads: folders and globs keep only files of their kind (the others are
counted and named), and a Common Crawl paths list is read under its prefix, sampled or limited, one task
per listed file — served here by a loopback HTTP server holding the real WARC excerpts."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest
from warcio.warcwriter import WARCWriter

from crawl.extract import ExtractStage
from crawl.inputs import has_extension, has_magic, plan_input
from demo.server import serve
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from tests.ray_cluster import free_port

WARCS = ("block-sized-records.warc.gz", "clipped.warc.gz", "clueweb-quirk.warc.gz", "warcfile.warc.gz")


def _pool(run: RunDir) -> list[dict]:
    return [r for p in run.glob("pool/part-*.parquet") for r in run.read_parquet(p).to_pylist()]


def _mixed_folder(shared_data: Path, folder: Path) -> Path:
    """The issue's folder: the four real WARC excerpts (linked, not copied), their LICENSE, a TSV, and an
    HTML page saved under a .warc.gz name (right extension, wrong bytes)."""
    folder.mkdir()
    for name in (*WARCS, "LICENSE"):
        (folder / name).symlink_to(shared_data / "warc" / name)
    (folder / "captions.tsv").write_text("a cat\thttp://example.com/cat.jpg\n")
    (folder / "page.warc.gz").write_bytes(gzip.compress(b"<html><body>not a warc</body></html>"))
    return folder


@pytest.mark.parametrize("form", ["folder", "glob"])
def test_folder_and_glob_take_only_files_of_their_kind(shared_data, tmp_path, make_config, form):
    folder = _mixed_folder(shared_data, tmp_path / "crawl")
    path = str(folder) if form == "folder" else f"{folder}/*"
    cfg = make_config(f"extract.inputs=[{{path: '{path}', kind: warc}}]", run=f"memory://inputs-{form}/run")
    stage = ExtractStage(cfg, RunDir(cfg.run))
    res = run_stage(stage, progress=False)
    st = res.stats
    assert st.counts["files"] == 4, st  # not 7: LICENSE, the TSV and the HTML page are not read as WARC
    assert st.counts["skipped_not_warc"] == 3
    assert stage.skipped() == {"warc": sorted(f"{folder}/{n}" for n in ("LICENSE", "captions.tsv", "page.warc.gz"))}
    summary = stage.summary(st)
    assert "skipped_not_warc=3: LICENSE, captions.tsv, page.warc.gz" in summary
    assert st.dropped["malformed_record"] == 1  # only the clipped record: nothing parsed from LICENSE
    assert 30 <= len(_pool(stage.run)) <= 60


def test_a_file_named_alone_is_read_as_given_and_a_folder_without_the_kind_is_an_error(tmp_path, make_config):
    (tmp_path / "only.tsv").write_text("a cat\thttp://example.com/cat.jpg\n")
    spec = make_config(f"extract.inputs=[{{path: '{tmp_path}/only.tsv', kind: warc}}]").extract.inputs[0]
    assert [u for _, u in plan_input(spec, "extract.inputs[0]", 0).files] == [f"{tmp_path}/only.tsv"]
    cfg = make_config(f"extract.inputs=[{{path: '{tmp_path}', kind: wat}}]")
    with pytest.raises(ConfigError, match=r"extract.inputs\[0\].path .*no wat file there .*only.tsv"):
        ExtractStage(cfg, RunDir(cfg.run)).validate()


def test_kind_rules():
    assert has_extension("CC-MAIN-x.warc.gz", "warc") and not has_extension("CC-MAIN-x.warc.wat.gz", "warc")
    assert has_extension("CC-MAIN-x.warc.wat.gz", "wat") and not has_extension("x.warc.wet.gz", "wat")
    assert has_magic(gzip.compress(b"WARC/1.0\r\n"), "warc") and not has_magic(b"Apache License", "warc")
    assert has_magic(b"PAR1\x15", "parquet") and not has_magic(b"url,text\n", "parquet")
    assert has_magic(b'\n{"url": 1}', "jsonl") and not has_magic(b"url,text\n", "jsonl")
    assert has_magic(b"url\ttext\n", "tsv") and not has_magic(b"PAR1\x00\x00", "tsv")


def _wat(path: Path, n: int) -> None:
    """A WAT file in Common Crawl's layout (no real WAT excerpt is available offline)."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i in range(n):
            link = {"path": "IMG@/src", "url": f"/img/{path.stem}-{i}.jpg", "alt": f"{path.stem} picture {i}"}
            meta = {"Envelope": {
                "WARC-Header-Metadata": {"WARC-Target-URI": f"http://site.example/{path.stem}/{i}.html"},
                "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": [link]}}},
            }}
            w.write_record(w.create_warc_record(f"http://site.example/{i}.html", "metadata",
                                                payload=io.BytesIO(json.dumps(meta).encode())))


def _crawl_site(shared_data: Path, site: Path) -> None:
    """A Common Crawl mirror in miniature: crawl-data/<crawl>/{warc,wat}.paths.gz and the files they list."""
    crawl = "crawl-data/CC-MAIN-2099-01"
    seg = site / crawl / "segments" / "1" / "warc"
    seg.mkdir(parents=True)
    for name in WARCS:
        (seg / name).symlink_to(shared_data / "warc" / name)
    wat_dir = site / crawl / "segments" / "1" / "wat"
    wat_dir.mkdir(parents=True)
    for k in range(6):
        _wat(wat_dir / f"part-{k}.warc.wat.gz", n=3)
    with gzip.open(site / crawl / "warc.paths.gz", "wt") as fh:
        fh.write("".join(f"{crawl}/segments/1/warc/{n}\n" for n in WARCS))
    with gzip.open(site / crawl / "wat.paths.gz", "wt") as fh:
        fh.write("".join(f"{crawl}/segments/1/wat/part-{k}.warc.wat.gz\n" for k in range(6)))


def test_common_crawl_paths_list_over_http(shared_data, tmp_path, make_config, ray_local):
    site = tmp_path / "site"
    _crawl_site(shared_data, site)
    port = free_port()
    prefix = f"http://127.0.0.1:{port}/"
    lists = f"{prefix}crawl-data/CC-MAIN-2099-01"
    with serve(site, port):
        # every WARC of warc.paths.gz, one task per listed file, on Ray workers
        cfg = make_config(f"extract.inputs=[{{kind: warc, paths_list: '{lists}/warc.paths.gz', prefix: '{prefix}'}}]",
                          "extract.use_title=false", run=str(tmp_path / "warc-run"))
        stage = ExtractStage(cfg, RunDir(cfg.run))
        assert [t.id for t in stage.tasks()] == [f"00-{j:06d}" for j in range(4)]
        res = run_stage(stage, progress=False)
        # the same pool as reading the files from disk (tests/crawl/test_extract.py's real-excerpt test)
        local = make_config(f"extract.inputs=[{{path: '{shared_data}/warc/*.warc.gz', kind: warc}}]",
                            "extract.use_title=false", run=f"memory://cc-local-{tmp_path.name}/run")
        ref = run_stage(ExtractStage(local, RunDir(local.run)), progress=False)
        assert res.stats.counts["files"] == 4
        assert sorted(r["uid"] for r in _pool(stage.run)) == sorted(r["uid"] for r in _pool(RunDir(local.run)))
        assert res.stats.counts["out"] == ref.stats.counts["out"]

        # a seeded sample of the WAT list: the same files for the same seed, others for another
        def sampled(seed: int, **extra: int) -> list[str]:
            more = "".join(f", {k}: {v}" for k, v in extra.items())
            c = make_config(f"extract.inputs=[{{kind: wat, paths_list: '{lists}/wat.paths.gz', prefix: '{prefix}'{more}}}]",
                            f"seed={seed}", run=f"memory://cc-sample-{seed}-{tmp_path.name}/run")
            return [t.payload[1] for t in ExtractStage(c, RunDir(c.run)).tasks()]

        a, b = sampled(0, sample=3), sampled(0, sample=3)
        assert a == b and len(a) == 3 and all(u.startswith(f"{prefix}crawl-data/") for u in a)
        assert a == sorted(a)  # in list order
        assert any(sampled(s, sample=3) != a for s in range(1, 6))
        assert sampled(0, limit=2) == [f"{prefix}crawl-data/CC-MAIN-2099-01/segments/1/wat/part-{k}.warc.wat.gz"
                                       for k in range(2)]
        c = make_config(f"extract.inputs=[{{kind: wat, paths_list: '{lists}/wat.paths.gz', prefix: '{prefix}', "
                        f"sample: 2}}]", run=f"memory://cc-wat-{tmp_path.name}/run")
        wat = run_stage(ExtractStage(c, RunDir(c.run)), progress=False)
        rows = _pool(RunDir(c.run))
        assert wat.stats.counts["files"] == 2 and len(rows) == 6
        assert all(r["url"].startswith("http://site.example/img/part-") for r in rows)

        # a WAT list given as kind warc: every listed file is skipped by name, and that is a config error
        bad = make_config(f"extract.inputs=[{{kind: warc, paths_list: '{lists}/wat.paths.gz', prefix: '{prefix}'}}]")
        with pytest.raises(ConfigError, match=r"none of the 6 selected paths is a warc file"):
            ExtractStage(bad, RunDir(bad.run)).validate()
        missing = make_config(f"extract.inputs=[{{kind: wat, paths_list: '{lists}/nope.paths.gz'}}]")
        with pytest.raises(ConfigError, match=r"extract.inputs\[0\].paths_list = .*cannot read it"):
            ExtractStage(missing, RunDir(missing.run)).validate()


def test_paths_list_config_rules(make_config):
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        make_config("extract.inputs=[{kind: wat}]")
    with pytest.raises(ConfigError, match="set kind to warc or wat"):
        make_config("extract.inputs=[{kind: tsv, paths_list: 'https://x/wat.paths.gz'}]")
    with pytest.raises(ConfigError, match="applies to a paths_list input only"):
        make_config("extract.inputs=[{kind: wat, path: x.wat.gz, sample: 3}]")
    spec = make_config("extract.inputs=[{kind: wat, paths_list: 's3://commoncrawl/crawl-data/C/wat.paths.gz', "
                       "prefix: 's3://commoncrawl/'}]").extract.inputs[0]
    assert spec.open_options("s3://commoncrawl/crawl-data/x.warc.wat.gz") == {"anon": True}  # public bucket
    assert spec.open_options("s3://my-bucket/x") == {}
