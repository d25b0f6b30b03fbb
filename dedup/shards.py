"""Reading and writing img2dataset webdataset shards (``NNNNN.tar``: ``<key>.jpg``, ``<key>.json``, ``<key>.txt``).

Reading goes through :mod:`dedup.tarread` (a lean header parser: ``tarfile`` costs more per sample
than hashing it); writing through ``tarfile``.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from dedup.tarread import Member, iter_members
from pipeline.rundir import RunDir

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    """One sample of a shard: its key, the tar members' bytes by extension, and the members (to copy them)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    infos: list[Member] = field(default_factory=list)

    @property
    def image(self) -> bytes | None:
        return next((self.members[e] for e in IMAGE_EXTS if e in self.members), None)

    @property
    def meta(self) -> dict:
        """The ``<key>.json`` metadata (uid, url, caption, entry_ids…); ``{}`` when absent or unreadable."""
        try:
            return json.loads(self.members["json"]) if "json" in self.members else {}
        except ValueError:
            return {}


def iter_samples(run: RunDir, rel: str) -> Iterator[Sample]:
    """Samples of the tar ``rel`` in file order, grouped like webdataset does (key = name before the first dot)."""
    with run.fs.open(run.path(rel), "rb", block_size=1 << 22) as fh:
        current: Sample | None = None
        for info in iter_members(fh):
            slash = info.name.rfind("/")
            stem, _, ext = info.name[slash + 1 :].partition(".")
            key = info.name[: slash + 1] + stem
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = Sample(key)
            current.members[ext.lower()] = info.data
            current.infos.append(info)
        if current is not None:
            yield current


class TarSink:
    """Writes samples into a tar in memory, copying each member's TarInfo (names, mtimes) so bytes are stable."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.count = 0

    def add(self, sample: Sample) -> None:
        for info in sample.infos:
            ext = posixpath.basename(info.name).partition(".")[2].lower()
            data = sample.members[ext]
            copy = tarfile.TarInfo(info.name)
            copy.size, copy.mtime, copy.mode = len(data), info.mtime, info.mode
            self.tar.addfile(copy, io.BytesIO(data))
        self.count += 1

    def finish(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()
