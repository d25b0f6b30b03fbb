"""Reading vocabulary entries: the ``entries.parquet`` artifact and user lists (text or JSON)."""

from __future__ import annotations

import json
import string

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError

ENTRIES_SCHEMA = pa.schema([("entry_id", pa.int32()), ("entry", pa.string()), ("source", pa.string())])
_FORBIDDEN = set(string.punctuation)


def clean_entry(entry: str) -> str | None:
    """An entry as stored, or None when it cannot be a query (empty, one punctuation mark, control chars).

    MetaCLIP drops empty entries and single punctuation marks; an entry with a tab or line break
    can never occur in spaced text, so it is dropped as well.
    """
    entry = entry.strip(" ")
    if not entry or entry in _FORBIDDEN or any(c in entry for c in "\t\n\r\x00"):
        return None
    return entry


def read_user_list(url: str, key: str = "vocab.files") -> list[str]:
    """Entries from a plain text file (one per line) or a JSON list of strings (MetaCLIP's metadata.json)."""
    try:
        with fsspec.open(url, "rt", encoding="utf-8", compression="infer") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {url!r} does not exist; fix the path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}: {url!r} is not UTF-8 text ({exc}); re-encode it as UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key}: {url!r} looks like JSON but does not parse: {exc}") from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ConfigError(
                f"{key}: {url!r} must be a JSON list of strings (like MetaCLIP's metadata.json)"
            )
        return items
    return text.splitlines()


def load_entries(url: str, key: str = "match.entries") -> tuple[list[int], list[str]]:
    """(entry_ids, entries) from an entries parquet (entry_id, entry) or a user list (ids = row order)."""
    if url.endswith(".parquet"):
        try:
            with fsspec.open(url, "rb") as fh:
                table = pq.read_table(fh)
        except FileNotFoundError:
            raise ConfigError(f"{key}: {url!r} does not exist; run `webclip vocab` or fix the path") from None
        if "entry" not in table.column_names:
            raise ConfigError(f"{key}: {url!r} has no `entry` column (columns: {table.column_names})")
        entries = table.column("entry").to_pylist()
        ids = (
            table.column("entry_id").to_pylist()
            if "entry_id" in table.column_names
            else list(range(len(entries)))
        )
        return ids, [e or "" for e in entries]
    items = read_user_list(url, key)
    return list(range(len(items))), items
