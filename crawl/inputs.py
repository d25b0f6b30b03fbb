"""Which files an extract input names: a file, a folder or glob (only files of its kind), or a Common
Crawl paths list (``…/wat.paths.gz`` under a prefix, sampled or limited).

A folder of crawl files often holds other things (a LICENSE, a README, a TSV of captions); reading
those as WARC would parse garbage silently. So a folder or glob keeps a file only if its name ends
with an extension of the input's kind *and* its first bytes look like that kind (``WARC/`` after
gunzip, ``PAR1``, a JSON object, text). The others are returned as skipped, for the stage to count
as ``skipped_not_<kind>`` and name in its summary. A file named on its own is taken as given.

A paths list is checked by extension only: reading the head of 90,000 remote files from the driver
would cost more than the crawl's planning is worth, and Common Crawl's lists hold one kind each.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import fsspec

from crawl.config import ExtractInput
from crawl.paths import _MAGIC, expand
from pipeline.errors import ConfigError

#: File name endings of each input kind (compressed variants included).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "warc": (".warc", ".warc.gz", ".arc.gz"),
    "wat": (".wat", ".wat.gz"),
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz"),
    "csv": (".csv", ".csv.gz"),
    "tsv": (".tsv", ".tsv.gz"),
}
#: Bytes read from the start of each candidate file to check its kind.
HEAD_BYTES = 2048


@dataclass
class InputFiles:
    """The files of one input: ``files`` as (number, URL) pairs, and what was left out."""

    files: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def has_extension(name: str, kind: str) -> bool:
    """Whether a file called ``name`` is, by its extension, a file of ``kind``."""
    # Common Crawl names WAT and WET files …warc.wat.gz / …warc.wet.gz: the last extension decides.
    return name.lower().endswith(EXTENSIONS[kind])


def _plain_head(head: bytes) -> bytes:
    """The first bytes of the content, decompressed when ``head`` starts a gzip stream."""
    if head[:2] == b"\x1f\x8b":
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error:
            return b""
    return head


def has_magic(head: bytes, kind: str) -> bool:
    """Whether a file starting with ``head`` holds ``kind`` (an empty file passes: nothing to misread)."""
    if kind == "parquet":
        return head[:4] == b"PAR1" or not head
    plain = _plain_head(head)
    if not head:
        return True
    if kind in ("warc", "wat"):
        return plain.startswith(b"WARC/")
    if b"\x00" in plain:  # the text kinds: no NUL bytes in text
        return False
    if kind == "jsonl":
        text = plain.lstrip(b"\xef\xbb\xbf \t\r\n")
        return text.startswith(b"{") or not text
    return bool(plain)  # csv/tsv: any text (their columns are checked when read)


def plan_input(spec: ExtractInput, key: str, seed: int) -> InputFiles:
    """The files of input ``spec`` (config key ``key``); ConfigError naming the key if there are none."""
    if spec.paths_list is not None:
        return _from_paths_list(spec, key, seed)
    assert spec.path is not None
    options = spec.open_options(spec.path)
    urls = expand(spec.path, f"{key}.path", **options)
    fs, path = fsspec.core.url_to_fs(spec.path, **options)
    single = not any(c in _MAGIC for c in path) and not fs.isdir(path)
    if single:  # a file named on its own is taken as given
        return InputFiles([(0, urls[0])])
    named = [u for u in urls if has_extension(u.rsplit("/", 1)[-1], spec.kind)]
    skipped = [u for u in urls if u not in set(named)]
    heads = _heads(named, spec)
    kept = [u for u in named if has_magic(heads[u], spec.kind)]
    skipped += [u for u in named if u not in set(kept)]
    if not kept:
        raise ConfigError(
            f"{key}.path = {spec.path!r}: no {spec.kind} file there ({len(skipped)} other file(s): "
            f"{_names(skipped)}); point it at {spec.kind} files ({', '.join(EXTENSIONS[spec.kind])}) "
            "or set `kind` to what the files are"
        )
    # numbered by position among the folder's files, so a file's task id does not depend on the others
    return InputFiles([(urls.index(u), u) for u in kept], sorted(skipped))


def _heads(urls: list[str], spec: ExtractInput) -> dict[str, bytes]:
    """The first :data:`HEAD_BYTES` of each of ``urls`` (one batched request on async filesystems)."""
    if not urls:
        return {}
    fs, _ = fsspec.core.url_to_fs(urls[0], **spec.open_options(urls[0]))
    paths = [fsspec.core.url_to_fs(u)[1] for u in urls]
    got = fs.cat_ranges(paths, [0] * len(paths), [HEAD_BYTES] * len(paths), on_error="return")
    return {u: (g if isinstance(g, bytes) else b"") for u, g in zip(urls, got, strict=True)}


def _from_paths_list(spec: ExtractInput, key: str, seed: int) -> InputFiles:
    url = spec.paths_list
    assert url is not None
    try:
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8", **spec.open_options(url)) as fh:
            listed = [line.strip() for line in fh if line.strip()]
    except Exception as exc:  # any reading problem is the same to the user: the URL is wrong or unreachable
        raise ConfigError(
            f"{key}.paths_list = {url!r}: cannot read it ({type(exc).__name__}: {exc}); give the URL of a "
            "Common Crawl paths list, e.g. https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-33/wat.paths.gz"
        ) from None
    if not listed:
        raise ConfigError(f"{key}.paths_list = {url!r} lists no files; check the URL")
    prefix = spec.prefix if spec.prefix.endswith("/") else spec.prefix + "/"
    numbered = list(enumerate(listed))
    if spec.sample is not None and spec.sample < len(numbered):
        # One stream per input, seeded by the run's seed: the same sample on every rerun and machine.
        rng = random.Random(f"{seed}/{key}")  # str seeds hash (sha512) the same in every process
        numbered = sorted(rng.sample(numbered, spec.sample))
    if spec.limit is not None:
        numbered = numbered[: spec.limit]
    kept = [(j, prefix + rel.lstrip("/")) for j, rel in numbered if has_extension(rel, spec.kind)]
    skipped = [prefix + rel.lstrip("/") for j, rel in numbered if not has_extension(rel, spec.kind)]
    if not kept:
        raise ConfigError(
            f"{key}.paths_list = {url!r}: none of the {len(numbered)} selected paths is a {spec.kind} file "
            f"(e.g. {_names(skipped)}); use the {spec.kind}.paths.gz list of the crawl or set `kind`"
        )
    return InputFiles(kept, skipped)


def _names(urls: list[str], n: int = 5) -> str:
    """A short list of the file names in ``urls`` for a message."""
    names = [u.rsplit("/", 1)[-1] for u in urls[:n]]
    return ", ".join(names) + (f" … (+{len(urls) - n})" if len(urls) > n else "")
