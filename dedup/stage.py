"""``DedupStage`` (``webclip dedup``): hash shards and eval sets in tasks, search and verify, then write clean shards in tasks.

Tasks (one per input shard, one per eval set) write ``<run>/hashes/NNNNN.parquet`` and
``<run>/evalsets/<name>/hashes.parquet``. :meth:`DedupStage.finalize` then:

1. finds byte-identical (sha256) and near-identical (pHash ``<= dedup.pool_tau``) training images
   as hash-partitioned joins in Ray tasks (:mod:`dedup.pool_shuffle`; ``dedup.pool_join:
   single_node`` runs the reference, one DuckDB on the driver, :mod:`dedup.pool`); the later copy
   is the one flagged;
2. per eval set, picks its profile (natural or line art, :meth:`DedupConfig.thresholds`); one Ray
   task per shard (:class:`~dedup.overlap_search.OverlapSearchStage`) searches its training view
   hashes against every eval view hash at ``<= tau`` (exact multi-index hashing,
   :mod:`dedup.search`), keeping every view pair that matched;
3. re-reads the candidates' images (training shards in one task per shard,
   :class:`~dedup.thumbs.CandidateThumbsStage`, and the eval set, with the hashing decoder),
   scores every matched view pair by the correlation of the two aligned 32×32 thumbnails
   (:mod:`dedup.score`), keeps the best view pair per (train, eval) image and writes
   ``<run>/dedup/overlaps.parquet`` with both scores; pool near pairs are scored the same way, in
   one task per group of shards that also writes its sorted part of
   ``dedup/pool_duplicates.parquet`` (:mod:`dedup.pool_pairs`);
4. decides every sample's reason in one Ray task per group of shards (:mod:`dedup.decide`) from
   the verified candidates and the exact join's files, and assembles
   ``<run>/dedup/decisions.parquet`` (one row group per shard); then
   :class:`~dedup.clean.CleanShardsStage` writes ``<run>/clean/NNNNN.{tar,parquet}``, one Ray task
   per shard (resumable), and ``clean/sizes.json``; last, the reconciliation
   ``<run>/dedup/summary.json`` (downloaded = clean + removed by reason).

The driver holds no per-sample array: samples are named by global row numbers (:mod:`dedup.rows`).
With the partitioned joins it holds no pool pair either: each group of shards' exact copies and
near pairs get their identifiers, their verification and their sorted part of
``pool_duplicates.parquet`` in Ray tasks (:mod:`dedup.pool_pairs`), and the driver concatenates
the parts a row group at a time; it keeps the eval candidates it verifies and counts.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from dedup.clean import CleanShardsStage, shard_stem
from dedup.decide import CODE, REASONS, decide, status_codes  # noqa: F401 (CODE: benchmarks import it from here)
from dedup.hashing import hash_evalset, hash_training_samples, view_column
from dedup.original import load_shard_table, params_tag, read_originals
from dedup.overlap_search import (
    OverlapSearchStage,
    SetSearch,
    evalset_hashes_path,
    hash_columns,
    load_pairs,
    ok_rows,
)
from dedup.pool import PoolIndex
from dedup.pool_pairs import POOL_DUPLICATES, PoolVerify, assemble, write_candidates
from dedup.pool_shuffle import Layout, PoolResult, find_pool_duplicates
from dedup.rows import ShardRows, hashes_path
from dedup.score import verify_scores
from dedup.shards import iter_samples
from dedup.thumbs import CANDIDATES, CandidateThumbsStage
from dedup.verify import clip_rescore, eval_view_thumbs, score_view_pairs, train_view_thumbs, verify_pairs
from dedup.views import TRAIN_VIEWS, View, eval_views
from pipeline.errors import ConfigError
from pipeline.evalsets import open_evalset
from pipeline.runner import run_stage
from pipeline.stage import Stage, Task
from pipeline.stats import Stats


class DedupStage(Stage):
    """Perceptual-hash deduplication of the downloaded shards against the evaluation sets."""

    name = "dedup"
    outputs = ("hashes", "evalsets", "dedup", "clean")

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        names = {s.name for s in self.config.evalsets}
        unknown = sorted(set(self.config.dedup.per_set) - names)
        if unknown:
            raise ConfigError(
                f"dedup.per_set names eval sets {unknown} that are not in `evalsets:` ({sorted(names) or 'none'}); "
                "use the `name` of an entry of `evalsets:`"
            )
        if len(names) != len(self.config.evalsets):
            raise ConfigError("evalsets: two entries share a name; give each eval set a unique `name`")
        work = self.config.dedup.work_dir
        if work is not None:
            existing = Path(work).expanduser().absolute()
            while not existing.exists():
                existing = existing.parent
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"dedup.work_dir {work!r} cannot be created ({existing} is not a writable directory); "
                    "give a local directory with room for about 30 bytes per training sample, or leave it unset"
                )

    def check(self) -> None:
        self.validate()
        if not self.run.glob("shards/*.tar"):
            raise ConfigError(
                f"dedup: no shards in {self.run.full_url('shards')}; run `webclip download` first "
                "(or point --run at a run that has <run>/shards/NNNNN.tar)"
            )
        for spec in self.config.evalsets:
            open_evalset(spec)  # fails now, with the set's name, rather than inside a task

    def tasks(self) -> list[Task]:
        shards = [Task(f"shard-{shard_stem(p)}", ("shard", p)) for p in self.run.glob("shards/*.tar")]
        evals = [Task(f"eval-{s.name}", ("eval", s.name)) for s in self.config.evalsets]
        return evals + shards

    # ------------------------------------------------------------------- tasks
    def process(self, task: Task, stats: Stats) -> None:
        kind, arg = task.payload
        cfg = self.config.dedup
        if kind == "shard":
            shard = shard_stem(arg)
            # the downloader's hashes of the original images, where the shard has them
            orig = load_shard_table(self.run, shard, with_thumbs=False) if cfg.use_original_hashes else None
            originals = (
                read_originals(orig, params_tag(cfg.original_decode_min_side, cfg.trim_tolerance))
                if orig is not None
                else None
            )
            table = hash_training_samples(
                iter_samples(self.run, arg),
                shard,
                cfg.batch_size,
                stats,
                cfg.decode_min_side,
                cfg.trim_tolerance,
                originals,
            )
            self.run.write_parquet(hashes_path(shard), table)
        else:
            spec = next(s for s in self.config.evalsets if s.name == arg)
            table = hash_evalset(
                open_evalset(spec),
                self._eval_views(),
                cfg.batch_size,
                stats,
                cfg.decode_min_side,
                cfg.trim_tolerance,
            )
            self.run.write_parquet(evalset_hashes_path(spec.name), table)

    def _eval_views(self) -> tuple[View, ...]:
        cfg = self.config.dedup
        return eval_views(
            tuple(cfg.eval_zooms), cfg.eval_anchors, cfg.eval_square, cfg.eval_flip, tuple(cfg.eval_angles)
        )

    # ---------------------------------------------------------------- finalize
    def finalize(self, stats: Stats) -> None:
        cfg = self.config.dedup
        rows = ShardRows(self.run, [shard_stem(p) for p in self.run.glob("shards/*.tar")])
        n = rows.n
        # The driver holds no per-sample array: samples are named by global row numbers
        # (dedup.rows), the pool's exact copies and near candidates come from partitioned joins in
        # Ray tasks (dedup.pool_shuffle), and each sample's reason is decided in tasks (dedup.decide)
        # from the candidates verified here.
        partitioned = cfg.pool_join == "partitioned"
        pool = (
            find_pool_duplicates(self.config, self.run, rows.shards, rows.offsets, self.progress)
            if partitioned
            else self._single_node_pool(rows)
        )
        # the partitioned joins leave their pairs in per-group files, read and verified in tasks
        # (dedup.pool_pairs); the single-node reference hands the driver its arrays
        near_pairs = np.zeros((0, 3), np.int64) if pool.in_files else pool.near

        # --- eval overlaps: every (train view, eval view) pair within the set's tau, searched per shard
        views = self._eval_views()
        plans, searches = [], []
        for spec in self.config.evalsets:
            ev, search, profile, thr = self._plan_evalset(spec.name, views)
            plans.append((spec, ev, profile, search.tau, thr))
            searches.append(search)
        if searches:
            run_stage(
                OverlapSearchStage(self.config, self.run, rows.shards, searches, views),
                progress=self.progress,
            )
        pairs_by_set = load_pairs(self.run, rows.shards, rows.offsets, [s.name for s in searches])

        # Re-read the candidates' training images: one task per shard that holds some (dedup.thumbs).
        needed = np.unique(
            np.concatenate([*(p["train_row"] for p in pairs_by_set.values()), near_pairs[:, :2].ravel()])
        ).astype(np.int64)
        cand = rows.take(needed)
        if pool.in_files:  # the pool's near candidates are listed from the group files, streaming
            write_candidates(self.run, pool.layout, cand)
        else:
            self.run.write_parquet(CANDIDATES, cand.select(["shard", "key"]))
        run_stage(CandidateThumbsStage(self.config, self.run), progress=self.progress)
        thumbs, meta = train_view_thumbs(
            self.run, needed, cand.column("shard").to_pylist(), cand.column("key").to_pylist()
        )
        ids = _RowIds(needed, cand)

        overlap_tables, per_set, eval_hits = [], {}, []
        for spec, ev, profile, tau, thr in plans:
            pairs = pairs_by_set[spec.name]
            eval_rows = {int(r) for r in np.unique(pairs["eval_row"])}
            e_thumbs = eval_view_thumbs(
                open_evalset(spec), ev, eval_rows, views, cfg.decode_min_side, cfg.trim_tolerance
            )
            # Natural images: re-score near-threshold view pairs with sub-pixel alignment; line art
            # is judged on the coarse score (refinement lifts distinct strokes as much as copies).
            refine_from = thr - cfg.refine_margin if profile == "natural" else None
            overlay = (
                (cfg.overlay_drop, cfg.overlay_margin)
                if profile == "natural" and cfg.overlay_drop > 0
                else None
            )
            score = score_view_pairs(
                pairs, thumbs, e_thumbs, refine_from, overlay=overlay, band=cfg.overlay_band
            )
            clip_rescored = 0
            if profile == "natural" and cfg.clip_rescore_from is not None:
                score, clip_rescored = clip_rescore(
                    open_evalset(spec), pairs, score, thumbs, e_thumbs, views, cfg.clip_rescore_from, thr,
                    cfg.original_decode_min_side, cfg.trim_tolerance,
                )  # fmt: skip
            table, hit_rows = verify_pairs(spec.name, pairs, score, [v.name for v in views], ev, thr)
            m = [meta.get(int(i), {}) for i in hit_rows]
            for name, col in ids.take(hit_rows, ("uid", "shard", "key")).items():
                table = table.append_column(name, col)
            table = table.append_column("url", pa.array([x.get("url") for x in m], pa.string()))
            table = table.append_column("text", pa.array([x.get("caption") for x in m], pa.string()))
            table = table.append_column(
                "entry_ids", pa.array([x.get("entry_ids") for x in m], pa.list_(pa.int32()))
            )
            overlap_tables.append(table)
            confirmed = table.column("confirmed").to_numpy(zero_copy_only=False)
            # an eval overlap outranks a pool duplicate, not a sample that was never hashed (dedup.decide)
            eval_hits.append(np.asarray(hit_rows, np.int64)[confirmed])
            n_eval = int(pc.sum(pc.equal(ev.column("status"), "ok")).as_py() or 0)
            eval_hit = pc.filter(table.column("eval_id"), table.column("confirmed"))
            per_set[spec.name] = {
                "eval_images": ev.num_rows,
                "eval_hashed": n_eval,
                "profile": profile,
                "tau": tau,
                "verify_threshold": thr,
                "candidate_pairs": table.num_rows,
                "candidate_view_pairs": len(pairs["train_row"]),
                "clip_rescored_view_pairs": clip_rescored,
                "confirmed_pairs": int(np.sum(confirmed)),
                "eval_images_overlapping": len(set(eval_hit.to_pylist())),
                "overlap_rate": round(len(set(eval_hit.to_pylist())) / max(n_eval, 1), 6),
            }
        overlaps = (pa.concat_tables(overlap_tables) if overlap_tables else _empty_overlaps()).sort_by(
            [
                ("eval_set", "ascending"),
                ("eval_id", "ascending"),
                ("shard", "ascending"),
                ("key", "ascending"),
            ]
        )
        self.run.write_parquet("dedup/overlaps.parquet", overlaps)

        # --- pool duplicates: exact copies as found, near ones verified with the thumbnail correlation
        if pool.in_files:  # verified per group in tasks, their sorted parts concatenated in order
            run_stage(PoolVerify(self.config, self.run, pool.layout), progress=self.progress, force=True)
            assemble(self.config, self.run, pool.layout)
            near_flag = _NO_ROWS  # the decision tasks read the confirmed near copies from files
        else:
            pool_rows, near_flag = self._pool_duplicates(
                rows, pool.exact_copy, pool.exact_first, near_pairs, thumbs, ids
            )
            self.run.write_parquet(POOL_DUPLICATES, pool_rows)

        # --- one row per flagged sample, one row group per shard: why it is not (or, in mode
        # report, would not be) in clean/; decided per shard in Ray tasks (dedup.decide)
        flags = {"eval_overlap": np.concatenate([_NO_ROWS, *eval_hits]), "near_dup": near_flag}
        if not partitioned:  # the partitioned join left its exact copies in files the tasks read
            flags["exact_dup"] = pool.exact_copy
        decided = decide(
            self.config,
            self.run,
            pool.layout,
            flags,
            partitioned and cfg.exact_dups,
            self.progress,
            near_files=partitioned,
        )
        if decided.counts["downloaded"] != n:
            raise RuntimeError(
                f"dedup: the decision tasks saw {decided.counts['downloaded']:,} samples, not {n:,}"
            )

        # --- clean shards: one task per shard on the cluster, resumable (dedup.clean)
        clean = run_stage(CleanShardsStage(self.config, self.run), progress=self.progress)
        stats.inc("clean", clean.stats.counts.get("clean", 0))
        removed = {r: int(decided.counts[f"flagged_{r}"]) for r in REASONS if decided.counts[f"flagged_{r}"]}
        summary = {
            "mode": cfg.mode,
            "downloaded": n,
            "clean": stats.counts["clean"],
            "removed": dict(sorted(removed.items())) if cfg.mode == "remove" else {},
            "flagged": dict(sorted(removed.items())),
            "eval_sets": per_set,
            "hash_source": _hash_source(stats),
            "reconciles": n == stats.counts["clean"] + (sum(removed.values()) if cfg.mode == "remove" else 0),
        }
        self.run.write_json("dedup/summary.json", summary)
        if not summary["reconciles"]:
            raise RuntimeError(f"dedup counts do not reconcile: {summary}")
        stats.inc("downloaded", n)
        for r, k in removed.items():
            stats.inc(f"flagged_{r}", k)
        if "note" in summary["hash_source"]:
            print(f"[dedup] note: {summary['hash_source']['note']}", file=sys.stderr)
        for name, s in per_set.items():
            print(
                f"[dedup] {name}: {s['eval_images_overlapping']}/{s['eval_hashed']} eval images overlap "
                f"({100 * s['overlap_rate']:.2f}%), {s['confirmed_pairs']} of {s['candidate_pairs']} candidates confirmed",
                file=sys.stderr,
            )

    def _plan_evalset(self, name: str, views: tuple[View, ...]) -> tuple[pa.Table, SetSearch, str, float]:
        """An eval set's hashes, its search (tau, file digest), profile and verify threshold."""
        cfg = self.config.dedup
        rel = evalset_hashes_path(name)
        data = self.run.read_bytes(rel)
        ev = pq.read_table(pa.BufferReader(data))
        required = [*(view_column(v.name) for v in views), "extreme_frac"]
        missing = [c for c in required if c not in ev.column_names]
        if missing:
            raise ConfigError(
                f"{self.run.full_url(rel)} lacks {missing}: it was hashed by an older webclip or with other "
                "dedup.eval_zooms/eval_anchors/eval_square; delete it and its marker "
                f"<run>/_done/dedup/eval-{name}, then rerun `webclip dedup`"
            )
        ev_ok = ok_rows(ev)
        extreme = ev.column("extreme_frac").to_numpy(zero_copy_only=False)
        lineart = bool(ev_ok.any() and np.nanmean(extreme[ev_ok]) >= cfg.lineart_min_extreme)
        profile, tau, thr = cfg.thresholds(name, lineart)
        # line art is not searched through flips and rotations: a mirrored or tilted stroke is another
        # glyph as often as a copy, and those views multiply MNIST's candidates by 3.6 (BENCHMARKS.md)
        skip = tuple(v.name for v in views if v.flip or v.angle) if profile == "lineart" else ()
        return ev, SetSearch(name, tau, hashlib.sha256(data).hexdigest()[:16], skip), profile, thr

    def _pool_duplicates(
        self,
        rows: ShardRows,
        exact_copy: np.ndarray,
        exact_first: np.ndarray,
        near: np.ndarray,
        thumbs,
        ids: _RowIds,
    ) -> tuple[pa.Table, np.ndarray]:
        """The single-node reference's ``pool_duplicates.parquet`` (the partitioned path writes it in
        tasks, :mod:`dedup.pool_pairs`): every exact copy with its first copy (no thumbnail check: the
        bytes are identical), and every near copy with its closest earlier matches (``PoolIndex.near_pairs``)
        and their verification scores; also the near copies with a confirmed match (flagged
        ``near_dup`` unless flagged for a reason that outranks it, :mod:`dedup.decide`)."""
        cfg = self.config.dedup
        plain = np.zeros(len(near), np.int64)  # view 0: phash
        score = (
            verify_scores(thumbs.take(near[:, 0], plain), thumbs.take(near[:, 1], plain), None)
            if len(near)
            else np.zeros(0, np.float32)
        )
        confirmed = score >= cfg.pool_verify_threshold
        later = near[:, 0]
        flag = np.unique(later[confirmed])
        # identifiers: near pairs' rows are candidates (already read), exact copies are read here
        exact_ids = rows.take(np.concatenate([exact_copy, exact_first]))
        k = len(exact_copy)
        copy = {
            c: pa.concat_arrays([exact_ids.column(c).slice(0, k).combine_chunks(), ids.take(later, (c,))[c]])
            for c in ("uid", "shard", "key")
        }
        first = {
            c: pa.concat_arrays(
                [exact_ids.column(c).slice(k).combine_chunks(), ids.take(near[:, 1], (c,))[c]]
            )
            for c in ("uid", "shard", "key")
        }
        table = pa.table(
            {
                **copy,
                **{f"dup_of_{name}": col for name, col in first.items()},
                "distance": pa.array(np.concatenate([np.zeros(k, np.int64), near[:, 2]]), pa.int16()),
                "verify_score": pa.concat_arrays([pa.nulls(k, pa.float32()), pa.array(score, pa.float32())]),
                "confirmed": pa.array(np.concatenate([np.ones(k, bool), confirmed]), pa.bool_()),
                "kind": pa.array(["exact"] * k + ["near"] * len(near), pa.string()),
            }
        )
        table = table.sort_by([(c, "ascending") for c in ("shard", "key", "dup_of_shard", "dup_of_key")])
        return table, flag

    def _single_node_pool(self, rows: ShardRows) -> PoolResult:
        """``dedup.pool_join: single_node``: every hashed row through the driver into one DuckDB
        (:class:`~dedup.pool.PoolIndex`), the reference the partitioned joins are tested against."""
        cfg = self.config.dedup
        with PoolIndex(cfg.work_dir, cfg.memory_limit) as pool:
            bar = tqdm(
                total=len(rows.shards), desc="dedup pool index", unit="shard", disable=not self.progress
            )
            for i, table in rows.iter_tables(["status", "sha256", "phash"]):
                pool.add(
                    int(rows.offsets[i]),
                    status_codes(table.column("status")) == 0,
                    table.column("sha256"),
                    hash_columns(table, TRAIN_VIEWS[:1])["phash"],
                )
                bar.update(1)
            bar.close()
            exact_copy, exact_first = pool.exact_duplicates() if cfg.exact_dups else (_NO_ROWS, _NO_ROWS)
            near = (
                pool.near_pairs(cfg.pool_tau, exclude=exact_copy)
                if cfg.pool_tau is not None
                else np.zeros((0, 3), np.int64)
            )
        layout = Layout.plan(rows.shards, rows.offsets, cfg.pool_partition_rows, cfg.pool_tau)
        return PoolResult(layout, exact_copy, exact_first, near)

    def summary(self, stats: Stats) -> str:
        c = stats.counts
        return f"downloaded={c['downloaded']:,} hashed={c['hashed']:,} clean={c['clean']:,} " + " ".join(
            f"{k}={v:,}" for k, v in sorted(c.items()) if k.startswith("flagged_")
        )


class _RowIds:
    """Identifiers of a sorted set of rows (the candidates), looked up by row number."""

    def __init__(self, rows: np.ndarray, table: pa.Table):
        self.rows = rows
        self.table = table

    def take(self, rows, names: tuple[str, ...]) -> dict[str, pa.Array]:
        pos = np.searchsorted(self.rows, np.asarray(rows, np.int64))
        picked = self.table.select(list(names)).take(pa.array(pos, pa.int64()))
        return {name: picked.column(name).combine_chunks().cast(pa.string()) for name in names}


_status_codes = status_codes  # the name benchmarks/dedup_driver.py imports


_NO_ROWS = np.zeros(0, np.int64)


def _hash_source(stats: Stats) -> dict:
    """How many training samples were hashed from their original (at download) or from the stored
    image, with a note when any were stored-only: those are compared as the resizer left them."""
    c = stats.counts
    out = {"original": int(c.get("hashed_original", 0)), "stored": int(c.get("hashed_stored", 0))}
    if out["stored"]:
        out["note"] = (
            f"{out['stored']:,} samples were hashed from the stored (resized) image: their shards carry no "
            "original hashes (written by plain img2dataset or with dedup.hash_at_download off, or hashed with "
            "other dedup settings). Copies that are crops, flips or rotations are found less reliably there, "
            "and with download.resize_mode=center_crop only the centre square of each eval image lines up."
        )
    return out


def _empty_overlaps() -> pa.Table:
    from dedup.verify import empty_overlaps

    return empty_overlaps()
