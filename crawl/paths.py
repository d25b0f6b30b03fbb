"""Input path helpers shared by the curation stages: glob expansion on any fsspec URL."""

from __future__ import annotations

from typing import Any

import fsspec

from pipeline.errors import ConfigError

_MAGIC = set("*?[")


def _with_protocol(fs, path: str) -> str:
    """``path`` as a URL other processes can open: local paths stay paths, remote ones get their protocol."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return (
        path if proto in ("file", "local") else f"{proto}://{path.lstrip('/') if proto != 'memory' else path}"
    )


def expand(url: str, key: str, **storage_options: Any) -> list[str]:
    """Files named by ``url`` (a file, a folder's files, or a glob), sorted; ConfigError naming ``key`` if none.

    ``storage_options`` go to the filesystem (e.g. ``anon=True`` for a public bucket).
    """
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    if any(c in _MAGIC for c in path):
        hits = sorted(h for h in fs.glob(path) if fs.isfile(h))
    elif fs.isdir(path):
        hits = sorted(h for h in fs.find(path) if not h.rsplit("/", 1)[-1].startswith("."))
    elif fs.exists(path):
        hits = [path]
    else:
        hits = []
    if not hits:
        raise ConfigError(f"{key} = {url!r}: no such file (or the glob matches nothing); fix the path")
    return [_with_protocol(fs, h) for h in hits]
