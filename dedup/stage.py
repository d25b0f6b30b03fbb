"""``DedupStage`` (``webclip dedup``): hash shards and eval sets in tasks, search and verify, then write clean shards in tasks.

Tasks (one per input shard, one per eval set) write ``<run>/hashes/NNNNN.parquet`` and
``<run>/evalsets/<name>/hashes.parquet``. :meth:`DedupStage.finalize` then, on the driver:

1. finds byte-identical (sha256) and near-identical (pHash ``<= dedup.pool_tau``, verified)
   training images inside the pool and marks all but the first copy;
2. per eval set, picks its profile (natural or line art, :meth:`DedupConfig.thresholds`) and
   searches every training view hash against every eval view hash at ``<= tau`` (exact
   multi-index hashing, :mod:`dedup.search`), keeping every view pair that matched;
3. re-reads the candidates' images (training shards in one task per shard,
   :class:`~dedup.thumbs.CandidateThumbsStage`, and the eval set, with the hashing decoder),
   scores every matched view pair by the correlation of the two aligned 32×32 thumbnails
   (:mod:`dedup.score`), keeps the best view pair per (train, eval) image and writes
   ``<run>/dedup/overlaps.parquet`` with both scores;
4. writes every flagged sample's reason to ``<run>/dedup/decisions.parquet``; then
   :class:`~dedup.clean.CleanShardsStage` writes ``<run>/clean/NNNNN.{tar,parquet}``, one Ray task
   per shard (resumable), and ``clean/sizes.json``; last, the reconciliation
   ``<run>/dedup/summary.json`` (downloaded = clean + removed by reason).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.clean import DECISIONS, CleanShardsStage, shard_stem
from dedup.detect import match_views
from dedup.hashing import hash_evalset, hash_training_samples, view_column
from dedup.score import verify_scores
from dedup.search import search_pairs
from dedup.shards import iter_samples
from dedup.thumbs import CANDIDATES, CandidateThumbsStage, candidates_table
from dedup.verify import eval_view_thumbs, score_view_pairs, train_view_thumbs, verify_pairs
from dedup.views import TRAIN_VIEWS, View, eval_views
from pipeline.errors import ConfigError
from pipeline.evalsets import open_evalset
from pipeline.runner import run_stage
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

#: Why a downloaded sample is not in the clean shards, in order of precedence.
REASONS = ("no_image", "undecodable", "eval_overlap", "exact_dup", "near_dup")
#: Each reason's code in the driver's per-sample int8 array (0: kept).
CODE = {r: i + 1 for i, r in enumerate(REASONS)}


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
            table = hash_training_samples(
                iter_samples(self.run, arg),
                shard,
                cfg.batch_size,
                stats,
                cfg.decode_min_side,
                cfg.trim_tolerance,
            )
            self.run.write_parquet(f"hashes/{shard}.parquet", table)
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
            self.run.write_parquet(f"evalsets/{spec.name}/hashes.parquet", table)

    def _eval_views(self) -> tuple[View, ...]:
        cfg = self.config.dedup
        return eval_views(tuple(cfg.eval_zooms), cfg.eval_anchors, cfg.eval_square)

    # ---------------------------------------------------------------- finalize
    def finalize(self, stats: Stats) -> None:
        cfg = self.config.dedup
        shard_names = [shard_stem(p) for p in self.run.glob("shards/*.tar")]
        train = pa.concat_tables([self.run.read_parquet(f"hashes/{s}.parquet") for s in shard_names])
        n = train.num_rows
        # one reason code per sample (0: kept), vectorised: no per-sample Python objects on the driver
        status = train.column("status")
        hashed = pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False)
        no_image = pc.fill_null(pc.equal(status, "no_image"), False).to_numpy(zero_copy_only=False)
        reason = np.where(hashed, 0, np.where(no_image, CODE["no_image"], CODE["undecodable"])).astype(np.int8)
        ok = reason == 0
        train_hashes = {v.name: _u64(train.column(view_column(v.name))) for v in TRAIN_VIEWS}
        views = self._eval_views()

        # --- eval overlaps: every (train view, eval view) pair within the set's tau
        overlap_tables, per_set = [], {}
        needed: set[int] = set()
        candidates = []
        for spec in self.config.evalsets:
            ev = self.run.read_parquet(f"evalsets/{spec.name}/hashes.parquet")
            required = [*(view_column(v.name) for v in views), "extreme_frac"]
            missing = [c for c in required if c not in ev.column_names]
            if missing:
                raise ConfigError(
                    f"{self.run.full_url(f'evalsets/{spec.name}/hashes.parquet')} lacks {missing}: it was hashed "
                    "by an older webclip or with other dedup.eval_zooms/eval_anchors/eval_square; delete it and its marker "
                    f"<run>/_done/dedup/eval-{spec.name}, then rerun `webclip dedup`"
                )
            ev_ok = np.array([s == "ok" for s in ev.column("status").to_pylist()], bool)
            extreme = ev.column("extreme_frac").to_numpy(zero_copy_only=False)
            lineart = bool(ev_ok.any() and np.nanmean(extreme[ev_ok]) >= cfg.lineart_min_extreme)
            profile, tau, thr = cfg.thresholds(spec.name, lineart)
            evals = {v.name: _u64(ev.column(view_column(v.name))) for v in views}
            pairs = match_views(train_hashes, ok, evals, ev_ok, tau)
            candidates.append((spec, ev, profile, tau, thr, pairs))
            needed.update(int(r) for r in np.unique(pairs["train_row"]))

        # --- pool near duplicates (pHash within pool_tau of an earlier image, then verified)
        near_pairs = np.zeros((0, 3), np.int64)
        if cfg.pool_tau is not None:
            idx = np.flatnonzero(ok)
            ph = train_hashes["phash"]
            q, d, dist = search_pairs(ph[idx], ph[idx], cfg.pool_tau)
            later = q > d  # pair (later, earlier): the later copy is the one removed
            near_pairs = np.stack([idx[q[later]], idx[d[later]], dist[later]], axis=1)
            needed.update(int(r) for r in near_pairs[:, :2].ravel())

        # --- exact duplicates: later copies of the same sha256
        if cfg.exact_dups:
            sha = train.column("sha256")
            rows = np.flatnonzero(ok & sha.is_valid().to_numpy(zero_copy_only=False))
            # the hex digests as one fixed-width byte block, no Python strings; the first 32 hex
            # characters (128 bits) identify an image. A row not first of its digest is a later copy.
            hexes = sha.take(pa.array(rows)).combine_chunks().cast(pa.binary(64))
            block = np.frombuffer(hexes.buffers()[1], np.uint8, count=len(hexes) * 64, offset=hexes.offset * 64)
            digests = np.ascontiguousarray(block.reshape(-1, 64)[:, :32]).view("S32").ravel()
            first = np.zeros(len(rows), bool)
            first[np.unique(digests, return_index=True)[1]] = True
            reason[rows[~first]] = CODE["exact_dup"]
            del sha, hexes, block, digests
        # from here on only the identifiers are read, for candidate and flagged rows: drop the rest
        # (sha256 and status were most of the table's memory)
        del status
        train = train.select(["shard", "key", "uid"])

        # Re-read the candidates' training images: one task per shard that holds some (dedup.thumbs).
        cand = train.select(["shard", "key"]).take(pa.array(sorted(needed), pa.int64()))
        self.run.write_parquet(
            CANDIDATES, candidates_table(cand.column("shard").to_pylist(), cand.column("key").to_pylist())
        )
        run_stage(CandidateThumbsStage(self.config, self.run), progress=self.progress)
        thumbs, meta = train_view_thumbs(self.run, train, needed)

        for spec, ev, profile, tau, thr, pairs in candidates:
            eval_rows = {int(r) for r in np.unique(pairs["eval_row"])}
            e_thumbs = eval_view_thumbs(
                open_evalset(spec), ev, eval_rows, views, cfg.decode_min_side, cfg.trim_tolerance
            )
            # Natural images: re-score near-threshold view pairs with sub-pixel alignment; line art
            # is judged on the coarse score (refinement lifts distinct strokes as much as copies).
            refine_from = thr - cfg.refine_margin if profile == "natural" else None
            score = score_view_pairs(pairs, thumbs, e_thumbs, refine_from)
            table, rows = verify_pairs(spec.name, pairs, score, [v.name for v in views], ev, thr)
            m = [meta.get(int(i), {}) for i in rows]
            ids = _take_strings(train, ("uid", "shard", "key"), rows)
            for name in ("uid", "shard", "key"):
                table = table.append_column(name, ids[name])
            table = table.append_column("url", pa.array([x.get("url") for x in m], pa.string()))
            table = table.append_column("text", pa.array([x.get("caption") for x in m], pa.string()))
            table = table.append_column(
                "entry_ids", pa.array([x.get("entry_ids") for x in m], pa.list_(pa.int32()))
            )
            overlap_tables.append(table)
            confirmed = table.column("confirmed").to_numpy(zero_copy_only=False)
            hit = np.asarray(rows, np.int64)[confirmed]
            # an eval overlap outranks a pool duplicate, not a sample that was never hashed
            hit = hit[np.isin(reason[hit], (0, CODE["exact_dup"], CODE["near_dup"]))]
            reason[hit] = CODE["eval_overlap"]
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

        # --- pool near duplicates, verified with the same thumbnail correlation
        pool_rows = self._pool_near_dups(near_pairs, thumbs, reason, train, sha_exact=cfg.exact_dups)
        self.run.write_parquet("dedup/pool_duplicates.parquet", pool_rows)

        # --- one row per flagged sample: why it is not (or, in mode report, would not be) in clean/
        flagged = np.flatnonzero(reason)
        ids = _take_strings(train, ("shard", "key", "uid"), flagged)
        names = np.array([None, *REASONS], dtype=object)
        self.run.write_parquet(
            DECISIONS,
            pa.table(
                {
                    **ids,
                    "reason": pa.array(names[reason[flagged]], pa.string()),
                    "removed": pa.array(np.full(len(flagged), cfg.mode == "remove"), pa.bool_()),
                }
            ),
        )

        # --- clean shards: one task per shard on the cluster, resumable (dedup.clean)
        clean = run_stage(CleanShardsStage(self.config, self.run), progress=self.progress)
        stats.inc("clean", clean.stats.counts.get("clean", 0))
        by_code = np.bincount(reason, minlength=len(REASONS) + 1)
        removed = {r: int(by_code[c]) for r, c in CODE.items() if by_code[c]}
        summary = {
            "mode": cfg.mode,
            "downloaded": n,
            "clean": stats.counts["clean"],
            "removed": dict(sorted(removed.items())) if cfg.mode == "remove" else {},
            "flagged": dict(sorted(removed.items())),
            "eval_sets": per_set,
            "reconciles": n == stats.counts["clean"] + (sum(removed.values()) if cfg.mode == "remove" else 0),
        }
        self.run.write_json("dedup/summary.json", summary)
        if not summary["reconciles"]:
            raise RuntimeError(f"dedup counts do not reconcile: {summary}")
        stats.inc("downloaded", n)
        for r, k in removed.items():
            stats.inc(f"flagged_{r}", k)
        for name, s in per_set.items():
            print(
                f"[dedup] {name}: {s['eval_images_overlapping']}/{s['eval_hashed']} eval images overlap "
                f"({100 * s['overlap_rate']:.2f}%), {s['confirmed_pairs']} of {s['candidate_pairs']} candidates confirmed",
                file=sys.stderr,
            )

    def _pool_near_dups(self, pairs, thumbs, reason: np.ndarray, train, sha_exact: bool) -> pa.Table:
        cfg = self.config.dedup
        keep_rows = []
        if len(pairs):
            plain = np.zeros(len(pairs), np.int64)  # view 0: phash
            score = verify_scores(thumbs.take(pairs[:, 0], plain), thumbs.take(pairs[:, 1], plain), None)
            for (i, j, dist), s in zip(pairs, score, strict=True):
                kind = "exact" if sha_exact and reason[i] == CODE["exact_dup"] else "near"
                confirmed = bool(s >= cfg.pool_verify_threshold)
                if kind == "near" and confirmed and reason[i] == 0:
                    reason[i] = CODE["near_dup"]
                keep_rows.append((int(i), int(j), int(dist), float(s), confirmed, kind))
        cols = list(zip(*keep_rows, strict=True)) if keep_rows else [[]] * 6
        copy = _take_strings(train, ("uid", "shard", "key"), np.asarray(cols[0], np.int64))
        first = _take_strings(train, ("uid", "shard", "key"), np.asarray(cols[1], np.int64))
        return pa.table(
            {
                **copy,
                **{f"dup_of_{name}": col for name, col in first.items()},
                "distance": pa.array(cols[2], pa.int16()),
                "verify_score": pa.array(cols[3], pa.float32()),
                "confirmed": pa.array(cols[4], pa.bool_()),
                "kind": pa.array(cols[5], pa.string()),
            }
        )

    def summary(self, stats: Stats) -> str:
        c = stats.counts
        return f"downloaded={c['downloaded']:,} hashed={c['hashed']:,} clean={c['clean']:,} " + " ".join(
            f"{k}={v:,}" for k, v in sorted(c.items()) if k.startswith("flagged_")
        )


def _take_strings(train: pa.Table, names: tuple[str, ...], rows) -> dict[str, pa.Array]:
    """``{name: string array}`` of the ``rows`` of ``train`` (only those rows become values)."""
    picked = train.select(list(names)).take(pa.array(np.asarray(rows, np.int64), pa.int64()))
    return {name: picked.column(name).combine_chunks().cast(pa.string()) for name in names}


def _u64(col: pa.ChunkedArray) -> np.ndarray:
    return col.fill_null(0).to_numpy().astype(np.uint64)


def _empty_overlaps() -> pa.Table:
    from dedup.verify import empty_overlaps

    return empty_overlaps()
