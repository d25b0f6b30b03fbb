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
