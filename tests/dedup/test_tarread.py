"""The lean tar reader returns exactly what tarfile returns, and refuses corrupt archives."""

from __future__ import annotations

import io
import tarfile

import pytest

from dedup.tarread import TarFormatError, iter_members


def _tar(fmt: int, names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for i, name in enumerate(names):
            data = bytes(range(256)) * (i * 3 + 1) + name.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000 + i, 0o640
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _reference(raw: bytes) -> list[tuple[str, bytes, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|*") as tf:
        return [(m.name, tf.extractfile(m).read(), int(m.mtime), m.mode) for m in tf if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfile(fmt):
    names = ["000000000.jpg", "000000000.json", "sub/000000001.txt", "x" * 40 + "/" + "y" * 80 + ".jpg"]
    if fmt != tarfile.USTAR_FORMAT:
        names += ["z" * 150 + ".jpg", "ünïcode-ñame.txt"]  # GNU long names / pax path records
    raw = _tar(fmt, names)
    for chunk in (512, 1000, 1 << 22):  # chunk boundaries anywhere
        ours = [tuple(m) for m in iter_members(io.BytesIO(raw), chunk=chunk)]
        assert ours == _reference(raw)


def test_corrupt_and_truncated_archives_are_errors():
    raw = bytearray(_tar(tarfile.USTAR_FORMAT, ["a.jpg", "b.jpg"]))
    bad = bytearray(raw)
    bad[512 + 10] ^= 0xFF  # a byte of the first file's header name (after the directory entry)
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(bad))))
    with pytest.raises(TarFormatError, match="truncated"):
        list(iter_members(io.BytesIO(bytes(raw[:1500]))))
    assert list(iter_members(io.BytesIO(b""))) == []
