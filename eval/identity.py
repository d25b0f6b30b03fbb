"""What an evaluation *is*: the checkpoint's content digest, the eval set and the settings.

An eval task's id ends in a digest of its inputs, so a rerun with a changed checkpoint (same path,
new weights), another eval set or other settings is new work, and a rerun with the same ones is
skipped. The checkpoint is identified by the bytes that define the model (not its path or mtime):
an exported ``model.pt`` with its ``model.json``, or every file of a DeepSpeed checkpoint's tag folder.
Digests of large files are remembered per (path, size, mtime) in ``<run>/eval/cache/digests.json``,
so an unchanged checkpoint is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

DIGEST_CACHE = "eval/cache/digests.json"
_CHUNK = 1 << 22


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files whose bytes define the model at ``path`` (an export, a state-dict file or a DeepSpeed folder)."""
    p = Path(path)
    if p.is_dir() and (p / "model.pt").is_file():
        p = p / "model.pt"
    if p.is_file():
        files = [p]
        for sidecar in (p.with_suffix(".json"), p.parent / "model.json"):
            if sidecar.is_file() and sidecar != p and sidecar not in files:
                files.append(sidecar)
        return files
    root, folder = p, None
    if (p / "latest").is_file():
        folder = p / (p / "latest").read_text().strip()
    elif (p.parent / "latest").is_file():
        root, folder = p.parent, p
    files = [root / "latest"] if (root / "latest").is_file() else []
    base = folder if folder is not None and folder.is_dir() else p
    files += sorted(f for f in base.rglob("*") if f.is_file())
    return files


def checkpoint_digest(path: str | os.PathLike[str], cache: dict[str, str] | None = None) -> str:
    """sha256 over the names and contents of :func:`checkpoint_files` (``cache``: per-file digests by stat)."""
    files = checkpoint_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no files to identify the checkpoint by")
    h = hashlib.sha256()
    root = Path(path).resolve()
    root = root if root.is_dir() else root.parent
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(key) if cache is not None else None
        if digest is None:
            digest = _file_sha256(f)
            if cache is not None:
                cache[key] = digest
        name = os.path.relpath(f.resolve(), root)
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def cached_checkpoint_digest(run: Any, path: str) -> str:
    """:func:`checkpoint_digest` with its per-file digests kept in the run (``eval/cache/digests.json``)."""
    cache: dict[str, str] = {}
    if run.exists(DIGEST_CACHE):
        try:
            cache = dict(run.read_json(DIGEST_CACHE))
        except ValueError:  # a damaged cache is only a cache
            cache = {}
    before = dict(cache)
    digest = checkpoint_digest(path, cache)
    if cache != before:
        run.write_json(DIGEST_CACHE, cache)
    return digest


def inputs_digest(inputs: dict[str, Any], length: int = 12) -> str:
    """A short digest of a JSON-able description of a task's inputs (key order does not matter)."""
    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
