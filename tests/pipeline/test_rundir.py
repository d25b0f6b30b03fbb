"""RunDir: atomic writes on local and memory filesystems; temporary files never listed."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.rundir import RunDir


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_atomic_write_leaves_nothing_on_failure(tmp_path, kind):
    run = RunDir(str(tmp_path / "r") if kind == "local" else f"memory://rundir-{tmp_path.name}")
    with pytest.raises(RuntimeError), run.open_atomic("pool/part-00000.parquet") as fh:
        fh.write(b"half a file")
        raise RuntimeError("killed mid-write")
    assert not run.exists("pool/part-00000.parquet")
    assert run.glob("pool/*") == []
    run.write_parquet("pool/part-00000.parquet", pa.table({"uid": ["a", "b"]}))
    assert run.glob("pool/*") == ["pool/part-00000.parquet"]
    assert run.read_parquet("pool/part-00000.parquet").column("uid").to_pylist() == ["a", "b"]


def test_markers_and_urls(tmp_path):
    run = RunDir(str(tmp_path / "r"))
    run.mark_done("match", "part-00001", {"stats": {}})
    assert run.done_tasks("match") == {"part-00001"} and run.is_done("match", "part-00001")
    assert run.full_url("vocab", "entries.parquet") == str(tmp_path / "r" / "vocab" / "entries.parquet")
    mem = RunDir("memory://bucket/run")
    assert mem.full_url("a.txt") == "memory://bucket/run/a.txt" and mem.is_process_local


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_remove_temporaries_of_folders_and_files(tmp_path, kind):
    run = RunDir(str(tmp_path / "r") if kind == "local" else f"memory://rundir-tmp-{tmp_path.name}")
    for rel in ("shards/00000.tar", "shards/.tmp-00001-ab/00001.tar", "shards/.tmp-00001-ab/00001.parquet",
                "vocab/_parts/.tmp-1-p.parquet", ".tmp-2-audit.duckdb", "audit.duckdb", ".tmp-3-config.yaml"):
        run.fs.makedirs(run.path(rel).rsplit("/", 1)[0], exist_ok=True)
        run.fs.pipe(run.path(rel), b"x")
    removed = run.remove_temporaries("shards", "vocab", "audit.duckdb")
    assert removed == [".tmp-2-audit.duckdb", "shards/.tmp-00001-ab", "vocab/_parts/.tmp-1-p.parquet"]
    assert run.exists("shards/00000.tar") and run.exists("audit.duckdb") and run.exists(".tmp-3-config.yaml")
    assert run.remove_temporaries("shards", "vocab", "audit.duckdb") == []
