"""The download stage: ``<run>/curated/part-*.parquet`` → ``<run>/shards/NNNNN.{tar,parquet}`` + ``NNNNN_stats.json``.

img2dataset does the work — its :class:`~img2dataset.reader.Reader` cuts a shard's plan file into
its arrow shard file, its :class:`~img2dataset.downloader.Downloader` downloads with a thread pool, its
:class:`~img2dataset.resizer.Resizer` resizes and its
:class:`~img2dataset.writer.WebDatasetSampleWriter` writes the tar and parquet — while webclip
supplies what it lacks:

* the fetch function: :class:`crawl.fetch.SafeFetcher` (one socket-enforced deadline per request,
  address checks on every hop, per-domain and per-address slots held until the socket closes, a
  per-domain rate, 429/503 pauses shared by every task through :mod:`crawl.host_gate`, size, length,
  JPEG-completeness and pixel limits, X-Robots-Tag opt-outs, a user agent naming webclip).
  img2dataset has no parameter for it: ``Downloader.download_shard`` calls the module-level name
  ``download_image_with_retry``. :class:`SafeDownloader` runs img2dataset's own ``download_shard``
  code with that one name bound to the webclip fetcher in a private namespace, so nothing in
  img2dataset is copied or patched globally; its resizer is wrapped by
  :class:`crawl.pixels.NormalizingResizer` (16-bit and EXIF-rotated images made 8-bit and upright);
* the distribution: the curated list is cut into shards by registrable domain before any download
  (:mod:`crawl.partition`, written to ``download_plan/``), so one site's URLs are in a few shard
  tasks, each of which allows it ``1/K`` of the run's per-host cap and rate. One pipeline task per
  shard, run by :func:`pipeline.runner.run_stage` on Ray — completion markers, retries of failed
  shards and a report of those that still fail (img2dataset's Ray distributor has none);
* atomic output: a shard is written into ``shards/.tmp-<id>-…/`` and moved into place (parquet
  last) before its completion marker, so a killed task leaves nothing that looks finished and a
  rerun rewrites the same shard ids: every curated uid ends in exactly one parquet row.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import posixpath
import tarfile
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl.domains import url_domain
from crawl.fetch import SafeFetcher, reason_of
from crawl.original_hashes import hash_downloads
from crawl.partition import PLAN_VERSION, plan_shards
from crawl.pixels import NormalizingResizer
from pipeline.errors import ConfigError
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

# albumentations (imported by img2dataset) phones home for updates unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: Digits of the shard number in file names (img2dataset's ``oom_shard_count``): ``00042.tar``.
SHARD_DIGITS = 5
#: Curated columns carried into every sample's json and the shard parquet (``save_additional_columns``).
CARRIED = ["uid", "entry_ids"]
REQUIRED = {"uid": pa.string(), "url": pa.string(), "text": pa.string()}
#: The download plan: each shard's input rows, and the index with per-shard domain shares.
PLAN_DIR = "download_plan"
PLAN_INDEX = f"{PLAN_DIR}/plan.json"
_HOOK = "download_image_with_retry"


def _names_in(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_in(const)
    return names


def _safe_downloader_class() -> type:
    from img2dataset import downloader as i2d

    if _HOOK not in _names_in(i2d.Downloader.download_shard.__code__):
        raise ImportError(
            f"this img2dataset version no longer calls {_HOOK}() from Downloader.download_shard; "
            "webclip's safe fetcher cannot be attached. Install img2dataset 1.47.x."
        )

    class SafeDownloader(i2d.Downloader):
        """img2dataset's Downloader whose per-URL fetch is a :class:`SafeFetcher`."""

        def __init__(self, fetcher: SafeFetcher, **kwargs: Any):
            super().__init__(**kwargs)
            namespace = dict(vars(i2d))
            namespace[_HOOK] = fetcher.download_image_with_retry
            base = i2d.Downloader.download_shard
            bound = types.FunctionType(
                base.__code__, namespace, base.__name__, base.__defaults__, base.__closure__
            )
            self.download_shard = types.MethodType(bound, self)  # instance attribute: this downloader only

    return SafeDownloader


def shard_name(shard_id: int) -> str:
    """``00042`` for shard 42: the stem of its tar, parquet and stats files."""
    return f"{shard_id:0{SHARD_DIGITS}d}"


def plan_file(shard_id: int) -> str:
    """Run-relative path of shard ``shard_id``'s input rows in the download plan."""
    return f"{PLAN_DIR}/{shard_name(shard_id)}.parquet"


class DownloadStage(Stage):
    """Downloads the curated list with img2dataset into WebDataset shards, one task per shard."""

    name = "download"
    outputs = ("shards", PLAN_DIR)

    # ----------------------------------------------------------------- planning
    def check(self) -> None:
        parts = self.run.glob("curated/part-*.parquet")
        if not parts:
            raise ConfigError(
                f"no curated list at {self.run.full_url('curated')}/part-*.parquet; "
                "run the balance stage first (webclip balance --run …)"
            )
        for part in parts:
            with self.run.fs.open(self.run.path(part), "rb") as fh:
                schema = pq.read_schema(fh)
            missing = [c for c in [*REQUIRED, "entry_ids"] if c not in schema.names]
            if missing:
                raise ConfigError(
                    f"{self.run.full_url(part)}: missing column(s) {missing}; the curated list needs "
                    "uid, url, text, entry_ids (written by the balance stage)"
                )

    def tasks(self) -> list[Task]:
        """The tasks of the download plan (:mod:`crawl.partition`), written or reused here: each one
        shard, or a lane of a big domain's shards run one after another; named by its first shard."""
        plan = self._plan()
        return [
            Task(id=shard_name(t["shards"][0]), payload={"shards": t["shards"], "shares": t["shares"]})
            for t in plan["tasks"]
        ]

    def _fingerprint(self, parts: list[str]) -> dict[str, Any]:
        """What the plan is a function of: the curated parts (name, size, rows), shard size, cap, seed."""
        files = []
        for part in parts:
            with self.run.fs.open(self.run.path(part), "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            files.append([part, self.run.fs.size(self.run.path(part)), rows])
        return {
            "version": PLAN_VERSION,
            "parts": files,
            "samples_per_shard": self.config.download.samples_per_shard,
            "per_host_concurrency": self.config.download.per_host_concurrency,
            "seed": self.config.seed,
        }

    def _plan(self) -> dict[str, Any]:
        """The plan in ``download_plan/``: reused when its fingerprint matches, else computed and
        written (shard inputs first, ``plan.json`` last, each atomically), so a kill leaves either the
        old complete plan, or files a rerun overwrites with the same content."""
        parts = self.run.glob("curated/part-*.parquet")
        fingerprint = self._fingerprint(parts)
        if self.run.exists(PLAN_INDEX):
            saved = self.run.read_json(PLAN_INDEX)
            if saved.get("fingerprint") == fingerprint:
                return saved
        table = (
            pa.concat_tables([self.run.read_parquet(p, columns=[*REQUIRED, "entry_ids"]) for p in parts])
            if parts
            else pa.table({})
        )
        size = self.config.download.samples_per_shard
        if -(-table.num_rows // size) > 10**SHARD_DIGITS:
            raise ConfigError(
                f"download.samples_per_shard={size} gives {-(-table.num_rows // size)} shards for "
                f"{table.num_rows} rows, more than {SHARD_DIGITS}-digit shard names allow; raise "
                "download.samples_per_shard"
            )
        domains = [url_domain(u or "") for u in table["url"].to_pylist()] if table.num_rows else []
        planned = plan_shards(domains, size, self.config.seed, self.config.download.per_host_concurrency)
        for spec in planned.shards:
            self.run.write_parquet(plan_file(spec.shard_id), table.take(pa.array(spec.rows)))
        plan = {
            "fingerprint": fingerprint,
            "shards": [{"id": spec.shard_id, "rows": len(spec.rows)} for spec in planned.shards],
            "tasks": [{"shards": t.shards, "shares": t.shares} for t in planned.tasks],
        }
        self.run.write_json(PLAN_INDEX, plan)
        return plan

    # ---------------------------------------------------------------- one shard
    def process(self, task: Task, stats: Stats) -> None:
        """Download the task's shards one after another, through one fetcher (one set of slots)."""
        with SafeFetcher(self.config.download, shares=task.payload["shares"]) as fetcher:
            for shard_id in task.payload["shards"]:
                self._process_shard(shard_id, fetcher, stats)
        for key, value in fetcher.counters.items():
            stats.inc(key, value)

    def _process_shard(self, shard_id: int, fetcher: SafeFetcher, stats: Stats) -> None:
        """Download one shard into a temporary folder, check it, move it into ``shards/``."""
        attempts = self.config.download.shard_retries + 1
        for attempt in range(attempts):
            tmp_rel = f"{self.run.SHARDS}/.tmp-{shard_name(shard_id)}-{uuid.uuid4().hex[:8]}"
            try:
                # img2dataset writes on the worker's own disk; only the finished, sorted shard goes
                # to the run (which may be a bucket), once
                with tempfile.TemporaryDirectory(prefix="webclip-shard-") as local_dir:
                    self._download(shard_id, fetcher, local_dir)
                    self._publish(shard_id, local_dir, tmp_rel, stats)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise  # the runner retries on Ray, then reports the shard as failed
            finally:
                with contextlib.suppress(Exception):
                    self.run.remove(tmp_rel, recursive=True)

    def _download(self, shard_id: int, fetcher: SafeFetcher, out_dir: str) -> None:
        """img2dataset's reader, downloader, resizer and writer for one shard, into local ``out_dir``."""
        from img2dataset.reader import Reader
        from img2dataset.resizer import Resizer

        cfg = self.config.download
        with tempfile.TemporaryDirectory(prefix="webclip-dl-") as arrow_tmp:
            reader = Reader(
                url_list=self.run.full_url(plan_file(shard_id)),
                input_format="parquet",
                url_col="url",
                caption_col="text",
                verify_hash_col=None,
                verify_hash_type=None,
                save_additional_columns=CARRIED,
                number_sample_per_shard=cfg.samples_per_shard,
                # the plan file is exactly this shard: the reader cuts it whole, numbered shard_id
                done_shards=set(),
                tmp_path=arrow_tmp,
                start_shard_id=shard_id,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # the reader prints progress chatter
                shards = list(reader)
            if [s for s, _ in shards] != [shard_id]:
                raise RuntimeError(
                    f"img2dataset reader cut {[s for s, _ in shards]} instead of shard {shard_id}"
                )
            resizer = Resizer(
                image_size=cfg.image_size,
                resize_mode=cfg.resize_mode,
                resize_only_if_bigger=cfg.resize_only_if_bigger,
                encode_quality=cfg.encode_quality,
                encode_format=cfg.encode_format,
                min_image_size=cfg.min_image_size,
                max_image_area=cfg.max_image_pixels,  # second guard behind the fetcher's header check
            )
            # 16-bit and EXIF-rotated images re-expressed as 8-bit upright pixels before cv2 decodes them
            resizer = NormalizingResizer(resizer, exif_transpose=cfg.exif_transpose)
            self._run_downloader(fetcher, resizer, reader.column_list, shards[0], out_dir)

    def _run_downloader(
        self, fetcher: SafeFetcher, resizer: Any, columns: list[str], shard: Any, out_dir: str
    ) -> None:
        """img2dataset's ``download_shard`` for one cut shard, fetching through ``fetcher``."""
        from img2dataset.writer import WebDatasetSampleWriter

        cfg = self.config.download
        # --- issue 18: dedup hashes each original before the resizer crops it (crawl/original_hashes.py)
        hasher = hash_downloads(self.config)
        downloader = _safe_downloader_class()(
            hasher.wrap(fetcher) if hasher is not None else fetcher,
            sample_writer_class=WebDatasetSampleWriter,
            resizer=hasher.wrap_resizer(resizer) if hasher is not None else resizer,
            thread_count=cfg.thread_count,
            save_caption=True,
            extract_exif=False,
            output_folder=out_dir,
            column_list=columns,
            timeout=cfg.timeout,
            number_sample_per_shard=cfg.samples_per_shard,
            oom_shard_count=SHARD_DIGITS,
            compute_hash="sha256",
            verify_hash_type=None,
            encode_format=cfg.encode_format,
            retries=cfg.retries,
            user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=cfg.disallowed_header_directives or None,
        )
        # download_shard, not __call__: __call__ swallows errors, we want the runner to retry them
        downloader.download_shard(shard)
        if hasher is not None:
            shard_id = shard[0]
            hasher.attach(
                Path(out_dir) / f"{shard_name(shard_id)}.parquet",
                shard_id,
                cfg.samples_per_shard,
                SHARD_DIGITS,
            )
        # --- end issue 18

    def _expected_rows(self, shard_id: int) -> pa.Table:
        return self.run.read_parquet(plan_file(shard_id), columns=["uid", "url", "text", "entry_ids"])

    def _publish(self, shard_id: int, local_dir: str, tmp_rel: str, stats: Stats) -> None:
        """Check the local shard, then place tar, stats and (last) parquet in ``shards/``."""
        name = shard_name(shard_id)
        local = Path(local_dir)
        table = pq.read_table(local / f"{name}.parquet")
        table = self._fill_missing(shard_id, table)
        table = table.sort_by("key")
        reasons = [
            None if status == "success" else reason_of(msg)
            for status, msg in zip(
                table["status"].to_pylist(), table["error_message"].to_pylist(), strict=True
            )
        ]
        table = table.append_column("reason", pa.array(reasons, pa.string()))
        # img2dataset writes samples as their downloads finish; in key order the tar is the same on
        # every run, and so are the clean shards dedup copies from it and the order training reads
        self.run.makedirs(tmp_rel)
        with self.run.fs.open(self.run.path(tmp_rel, f"{name}.tar"), "wb") as out:
            _write_sorted_tar(local / f"{name}.tar", out)
        self.run.fs.put_file(str(local / f"{name}_stats.json"), self.run.path(tmp_rel, f"{name}_stats.json"))
        # tar and stats first, parquet last: the parquet is what readers list shards by
        for suffix in (".tar", "_stats.json"):
            self.run.fs.mv(
                self.run.path(tmp_rel, name + suffix), self.run.path(self.run.SHARDS, name + suffix)
            )
        self.run.write_parquet(f"{self.run.SHARDS}/{name}.parquet", table)

        stats.inc("in", table.num_rows)
        success = int(pc.sum(pc.equal(table["status"], "success")).as_py() or 0)
        stats.inc("success", success)
        for reason in reasons:
            if reason is not None:
                stats.drop(reason)
        stats.inc("bytes", self.run.fs.size(self.run.path(self.run.SHARDS, name + ".tar")))

    def _fill_missing(self, shard_id: int, table: pa.Table) -> pa.Table:
        """Rows img2dataset lost (it prints and skips a sample whose write raised) become failure rows."""
        expected = self._expected_rows(shard_id)
        if table.num_rows == expected.num_rows:
            return table
        seen = set(table["uid"].to_pylist())
        digits = math.ceil(math.log10(self.config.download.samples_per_shard)) + SHARD_DIGITS
        rows = []
        for i, row in enumerate(expected.to_pylist()):
            if row["uid"] in seen:
                continue
            key = (10 ** (digits - SHARD_DIGITS)) * shard_id + i
            rows.append(
                {
                    "uid": row["uid"],
                    "entry_ids": row["entry_ids"],
                    "caption": row["text"],
                    "url": row["url"],
                    "key": f"{key:0{digits}d}",
                    "status": "failed_to_download",
                    "error_message": "internal_error: img2dataset dropped the sample while writing",
                }
            )
        extra = pa.Table.from_pylist(rows, schema=table.schema) if rows else None
        return pa.concat_tables([table, extra]) if extra is not None else table

    # ------------------------------------------------------------------- driver
    def finalize(self, stats: Stats) -> None:
        """Remove temporary folders a killed task left behind; check the counts reconcile."""
        for leftover in self.run.fs.glob(self.run.path(self.run.SHARDS, ".tmp-*")):
            with contextlib.suppress(Exception):
                self.run.fs.rm(leftover, recursive=True)
        total = stats.counts.get("success", 0) + stats.dropped_total
        if total != stats.counts.get("in", 0):
            raise RuntimeError(f"download counts do not reconcile: in={stats.counts.get('in')} != {total}")

    def summary(self, stats: Stats) -> str:
        n = stats.counts.get("in", 0)
        ok = stats.counts.get("success", 0)
        reasons = ", ".join(f"{k}={v:,}" for k, v in stats.dropped.most_common(8))
        mb = stats.counts.get("bytes", 0) / 1e6
        return f"{ok:,}/{n:,} images downloaded ({mb:,.1f} MB in shards); failed: {reasons or 'none'}"


def _write_sorted_tar(src: Path, out: Any) -> None:
    """Write the local tar ``src`` to the open binary file ``out`` with its members in name order
    (``<key>.<ext>``: by key, then extension, the order webdataset writes one sample's members in);
    headers are kept as they are."""
    with tarfile.open(src, mode="r:") as tin:
        members = sorted((m for m in tin.getmembers() if m.isfile()), key=lambda m: m.name)
        with tarfile.open(fileobj=out, mode="w", format=tin.format) as tout:
            for m in members:
                tout.addfile(m, tin.extractfile(m))


def shard_files(run_url: str) -> list[str]:
    """The finished shard tars of a run (for readers such as dedup and train), sorted."""
    from pipeline.rundir import RunDir

    run = RunDir(run_url)
    return [posixpath.join(run.url, p) for p in run.glob(f"{run.SHARDS}/*.tar")]
