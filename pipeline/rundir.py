"""The run directory: every artifact path of DESIGN.md behind one small API, on any fsspec URL.

Writes go to a temporary sibling name (``.tmp-…``) and are moved into place when complete, so a
reader never takes a half-written file for a finished one; listings skip temporary names.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError

TMP_PREFIX = ".tmp-"
#: Completion markers fetched per bulk read (:meth:`RunDir.read_markers`): ~300 bytes each.
MARKER_CHUNK = 1000


def _is_tmp(path: str) -> bool:
    return posixpath.basename(path).startswith(TMP_PREFIX)


class RunDir:
    """A run directory at ``url`` (local path, ``memory://…``, ``s3://…``, ``gs://…``)."""

    # Artifact locations shared between stages (DESIGN.md "The run directory").
    CONFIG = "config.yaml"
    VOCAB_ENTRIES = "vocab/entries.parquet"
    POOL = "pool"
    MATCH = "match"
    MATCH_COUNTS = "match/counts.parquet"
    CURATED = "curated"
    SHARDS = "shards"
    HASHES = "hashes"
    EVALSETS = "evalsets"
    OVERLAPS = "dedup/overlaps.parquet"
    CLEAN = "clean"
    AUDIT_DB = "audit.duckdb"
    AUDIT_PAGE = "audit/index.html"
    TRAIN = "train"
    EVAL = "eval"

    def __init__(self, url: str):
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/") or "/"
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]

    # ---------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        """The filesystem path (no protocol) of ``parts`` under the run."""
        return posixpath.join(self.root, *parts)

    def full_url(self, *parts: str) -> str:
        """The URL (with protocol) of ``parts`` under the run, for tools that take URLs."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.protocol}://{p.lstrip('/')}"

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def is_process_local(self) -> bool:
        """True when other processes cannot see this filesystem (``memory://``)."""
        return self.protocol == "memory"

    def local_path(self, *parts: str) -> Path:
        """A local ``Path`` for tools that need one; only for local runs."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local run directory")
        return Path(self.path(*parts))

    def stats_path(self, stage: str) -> str:
        return f"stats/{stage}.json"

    def marker_path(self, stage: str, task: str) -> str:
        return f"_done/{stage}/{task}"

    def failure_path(self, stage: str, task: str) -> str:
        return f"_failed/{stage}/{task}.json"

    # ------------------------------------------------------------- queries
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths under the run matching ``pattern``, sorted, temporary files skipped."""
        hits = self.fs.glob(self.path(pattern))
        rels = [posixpath.relpath("/" + h.lstrip("/"), "/" + self.root.lstrip("/")) for h in hits]
        return sorted(r for r in rels if not _is_tmp(r))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def remove(self, rel: str, recursive: bool = False) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=recursive)

    def remove_temporaries(self, *rels: str) -> list[str]:
        """Delete what interrupted writers left at ``rels``: temporaries under each folder, and the
        temporary sibling of each file (``.tmp-<id>-<name>``). Returns the relative paths removed.

        Call it only where no other process is writing (the runner does, before a stage's tasks).
        """
        hits: set[str] = set()
        for rel in rels:
            base = self.path(rel)
            parent, name = posixpath.split(base)
            hits.update(self.fs.glob(posixpath.join(base, "**", f"{TMP_PREFIX}*")))
            hits.update(self.fs.glob(posixpath.join(parent, f"{TMP_PREFIX}*-{name}")))
        removed = []
        for hit in sorted(hits):  # a folder sorts before what is inside it
            hit = "/" + hit.lstrip("/") if self.root.startswith("/") else hit
            if any(hit.startswith(r + "/") for r in removed):
                continue
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(hit, recursive=True)
                removed.append(hit)
        return [posixpath.relpath(r, self.root) for r in removed]

    # -------------------------------------------------------------- writes
    @contextlib.contextmanager
    def open_atomic(self, rel: str, mode: str = "wb") -> Iterator[Any]:
        """Open ``rel`` for writing under a temporary name; move it into place on success."""
        final = self.path(rel)
        parent = posixpath.dirname(final)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(final)}")
        try:
            with self.fs.open(tmp, mode) as fh:
                yield fh
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel, "wb") as fh:
            fh.write(data)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as fh:
            return fh.read()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def write_parquet(self, rel: str, table: pa.Table, **kwargs: Any) -> None:
        """Write ``table`` atomically; deterministic bytes for the same table (no timestamps)."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=kwargs.pop("compression", "zstd"), **kwargs)
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
        """Read ``rel`` (only ``columns``; with ``filters``, only matching rows, skipping row groups by statistics)."""
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.read_table(fh, columns=columns, filters=filters)

    def parquet_rows(self, rel: str) -> int:
        """The number of rows of a Parquet file, from its footer (no data read)."""
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    # ------------------------------------------------------- markers, checks
    def is_done(self, stage: str, task: str) -> bool:
        return self.exists(self.marker_path(stage, task))

    def done_tasks(self, stage: str) -> set[str]:
        base = self.path("_done", stage)
        if not self.fs.exists(base):
            return set()
        return {posixpath.basename(p) for p in self.fs.ls(base, detail=False) if not _is_tmp(p)}

    def mark_done(self, stage: str, task: str, payload: dict[str, Any]) -> None:
        """Write the completion marker of ``task``; always the last write of a task."""
        self.write_json(self.marker_path(stage, task), payload)

    def read_marker(self, stage: str, task: str) -> dict[str, Any]:
        return self.read_json(self.marker_path(stage, task))

    def read_markers(self, stage: str, tasks: Iterable[str], chunk: int = MARKER_CHUNK) -> dict[str, dict[str, Any]]:
        """The payloads of the completion markers of ``tasks`` that exist, by task id, read in bulk.

        One listing of ``_done/<stage>`` finds which exist; their bodies are fetched ``chunk`` paths per
        ``fs.cat`` call, which object stores (s3fs, gcsfs) serve concurrently: 10^4 markers cost a few
        batched calls, not 10^4 round trips. A marker that vanished between the listing and the read
        (a concurrent ``--force`` run) is left out; one that is not JSON raises, naming its file.
        """
        wanted = sorted(set(tasks) & self.done_tasks(stage))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), chunk):
            ids = wanted[start:start + chunk]
            paths = {self.path(self.marker_path(stage, t)): t for t in ids}
            bodies = self.fs.cat(list(paths), on_error="return")
            for path, body in bodies.items():
                task = paths.get(path) or paths.get("/" + path.lstrip("/"))
                if task is None or isinstance(body, FileNotFoundError):
                    continue
                if isinstance(body, BaseException):
                    raise body
                try:
                    out[task] = json.loads(body)
                except ValueError as exc:
                    raise ValueError(
                        f"completion marker {self.full_url(self.marker_path(stage, task))} is not JSON ({exc}); "
                        "delete it to run that task again"
                    ) from None
        return out

    def ensure_writable(self) -> None:
        """Create the run directory and prove it is writable, or raise :class:`ConfigError`."""
        probe = self.path(f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as fh:
                fh.write(b"ok")
            self.fs.rm(probe)
        except Exception as exc:  # any filesystem error means the same thing to the user
            raise ConfigError(
                f"run directory {self.url!r} is not writable ({type(exc).__name__}: {exc}); "
                "pass a writable path or URL with --run (or `run:` in the config)"
            ) from None

    def __repr__(self) -> str:
        return f"RunDir({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunDir, (self.url,))
