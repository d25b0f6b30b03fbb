"""The eval stage: zero-shot, retrieval and linear probes on one checkpoint, then the overlap analysis.

Tasks: one per (eval set, task): ``zeroshot-<set>-<digest>``, ``retrieval-<set>-<digest>``,
``linear_probe-<set>-<digest>``, the digest covering the checkpoint's content, the eval set and the
settings (:mod:`eval.identity`): a changed checkpoint is evaluated again, the same one is skipped.
Each writes ``<run>/eval/results/<checkpoint>/<set>.<task>.json`` and its per-sample table;
``finalize`` gathers every results JSON into ``eval/results.parquet`` and joins the zero-shot (and
probe) predictions with ``dedup/overlaps.parquet`` into ``eval/overlap.parquet``.

Tasks run in the driver process (``in_driver``): the model is loaded once and uses whatever
accelerator the driver sees, and torch already spreads one forward pass over every core.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from eval.baselines import class_warning, describe, label_baselines
from eval.config import EvalConfig, LinearProbeSpec, RetrievalSetSpec
from pipeline.errors import ConfigError
from pipeline.evalsets_spec import EvalSetSpec
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

DEFAULT_CHECKPOINT = "train/export/model.pt"
RESULTS = "eval/results.parquet"
OVERLAP = "eval/overlap.parquet"

PREDICTION_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("eval_id", pa.string()),
        ("label", pa.int32()),
        ("pred", pa.int32()),
        ("correct", pa.bool_()),
        ("top5", pa.list_(pa.int32())),
        ("checkpoint", pa.string()),
        ("task", pa.string()),
    ]
)
RESULTS_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("dataset", pa.string()),
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        # what was evaluated: "all 10000" or "stratified sample of 500 of 10000, seed 0"
        ("sample", pa.string()),
        ("checkpoint_sha256", pa.string()),
        # e.g. fewer classes evaluated than the set holds; null when none
        ("warning", pa.string()),
    ]
)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "checkpoint"


def predictions_path(dataset: str, task: str) -> str:
    """Where a task's per-sample predictions go: zero-shot at the contract path, probes beside it."""
    return (
        f"eval/predictions/{dataset}.parquet"
        if task == "zeroshot"
        else f"eval/predictions/{task}/{dataset}.parquet"
    )


def prediction_table(
    dataset: str, task: str, checkpoint: str, eval_ids: list[str], labels: np.ndarray, topk: np.ndarray
) -> pa.Table:
    """The per-sample predictions table (see :data:`PREDICTION_SCHEMA`)."""
    labels = np.asarray(labels, dtype=np.int32)
    pred = topk[:, 0].astype(np.int32) if len(topk) else np.empty(0, dtype=np.int32)
    top5 = pa.array([row[:5] for row in topk.astype(np.int32).tolist()], type=pa.list_(pa.int32()))
    n = len(eval_ids)
    return pa.table(
        {
            "dataset": pa.array([dataset] * n, pa.string()),
            "eval_id": pa.array(eval_ids, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "pred": pa.array(pred, pa.int32()),
            "correct": pa.array(pred == labels, pa.bool_()),
            "top5": top5,
            "checkpoint": pa.array([checkpoint] * n, pa.string()),
            "task": pa.array([task] * n, pa.string()),
        },
        schema=PREDICTION_SCHEMA,
    )


class EvalStage(Stage):
    """Zero-shot classification, retrieval, linear probes and the All/Overlap/Clean analysis."""

    name = "eval"
    outputs = ("eval",)
    in_driver: ClassVar[bool] = True
    # Task ids carry a digest of their inputs; the stage runs every time and skips the tasks whose
    # inputs (checkpoint content, eval set, settings) were already evaluated.
    resumable: ClassVar[bool] = False
    versioned_tasks: ClassVar[bool] = True
    progress: bool = True

    def __init__(self, config: Any, run: RunDir):
        super().__init__(config, run)
        self._digest: tuple[str, str] | None = None  # (checkpoint path, content digest)
        self._ran: set[str] = set()

    # ------------------------------------------------------------------ setup
    @property
    def cfg(self) -> EvalConfig:
        return self.config.eval

    def checkpoint_path(self) -> str:
        """The checkpoint file or folder evaluated: ``eval.checkpoint`` or the run's exported model."""
        if self.cfg.checkpoint:
            return self.cfg.checkpoint
        if not self.run.is_local:
            raise ConfigError(
                f"run {self.run.url!r} is not local: set eval.checkpoint to a local copy of the exported model.pt"
            )
        return str(self.run.local_path(DEFAULT_CHECKPOINT))

    def checkpoint_name(self) -> str:
        """The checkpoint's label in results: ``eval.checkpoint_name``, else its path relative to the run."""
        if self.cfg.checkpoint_name:
            return self.cfg.checkpoint_name
        path = os.path.abspath(self.checkpoint_path())
        if self.run.is_local:
            root = str(self.run.local_path())
            if path.startswith(root + os.sep):
                return os.path.relpath(path, root)
        return path

    def checkpoint_sha256(self) -> str:
        """sha256 of the checkpoint's content (:func:`eval.identity.checkpoint_digest`), once per stage."""
        from eval.identity import cached_checkpoint_digest

        path = self.checkpoint_path()
        if self._digest is None or self._digest[0] != path:
            self._digest = (path, cached_checkpoint_digest(self.run, path))
        return self._digest[1]

    def checkpoint_id(self) -> str:
        """What identifies the checkpoint for caches: the first 16 hex digits of its content digest."""
        return self.checkpoint_sha256()[:16]

    def _evalsets(self) -> dict[str, EvalSetSpec]:
        return {s.name: s for s in self.config.evalsets}

    def zeroshot_sets(self) -> list[EvalSetSpec]:
        """The eval sets classified zero-shot (``eval.evalsets`` or all top-level ``evalsets:``)."""
        if "zeroshot" not in self.cfg.tasks:
            return []
        known = self._evalsets()
        names = self.cfg.evalsets if self.cfg.evalsets is not None else list(known)
        return [known[n] for n in names if n in known]

    @staticmethod
    def probe_dataset(p: LinearProbeSpec) -> str:
        """The dataset name a probe reports under: its test set, or its train set when test is carved."""
        return p.test or p.train

    def validate(self) -> None:
        from eval.features import resolve_device
        from eval.zeroshot import load_templates

        known = self._evalsets()
        for n in self.cfg.evalsets or []:
            if n not in known:
                raise ConfigError(
                    f"eval.evalsets: {n!r} is not a top-level `evalsets:` entry; known: {sorted(known) or 'none'}"
                )
        for i, p in enumerate(self.cfg.linear_probe):
            for key in ("train", "test", "val"):
                n = getattr(p, key)
                if n is not None and n not in known:
                    raise ConfigError(
                        f"eval.linear_probe[{i}].{key}: {n!r} is not a top-level `evalsets:` entry; "
                        f"known: {sorted(known) or 'none'}"
                    )
        for spec in self.zeroshot_sets():
            try:
                load_templates(spec.templates)
            except ConfigError as exc:
                raise ConfigError(f"evalsets[{spec.name}].templates: {exc}") from None
        ids = [base for base, _ in self._plan()]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(
                f"eval: two evaluations share the name(s) {dup}; give retrieval sets distinct names"
            )
        if self.cfg.checkpoint and not os.path.exists(self.cfg.checkpoint):
            raise ConfigError(
                f"eval.checkpoint = {self.cfg.checkpoint!r} does not exist; point it at an exported model.pt "
                "or a DeepSpeed checkpoint folder"
            )
        resolve_device(self.cfg.device)

    def check(self) -> None:
        self.validate()
        path = self.checkpoint_path()
        if not os.path.exists(path):
            raise ConfigError(
                f"no checkpoint to evaluate at {path!r}: run `webclip train` first (it exports "
                f"<run>/{DEFAULT_CHECKPOINT}) or set eval.checkpoint"
            )
        if not self._plan():
            raise ConfigError(
                "eval has nothing to do: add `evalsets:` (zero-shot), `eval.retrieval` or `eval.linear_probe` "
                f"entries, and keep their kinds in eval.tasks (now {self.cfg.tasks})"
            )

    def _plan(self) -> list[tuple[str, tuple[str, Any]]]:
        """(readable id, payload) of every evaluation, without the digest (no checkpoint needed)."""
        out = [(f"zeroshot-{s.name}", ("zeroshot", s.name)) for s in self.zeroshot_sets()]
        if "retrieval" in self.cfg.tasks:
            out += [(f"retrieval-{r.name}", ("retrieval", r.name)) for r in self.cfg.retrieval]
        if "linear_probe" in self.cfg.tasks:
            out += [
                (f"linear_probe-{self.probe_dataset(p)}", ("linear_probe", i))
                for i, p in enumerate(self.cfg.linear_probe)
            ]
        return out

    def task_inputs(self, payload: tuple[str, Any]) -> dict[str, Any]:
        """Everything an evaluation's result depends on: checkpoint content, data, settings."""
        kind, arg = payload
        known = self._evalsets()
        inputs: dict[str, Any] = {
            "checkpoint_sha256": self.checkpoint_sha256(),
            "checkpoint_name": self.checkpoint_name(),
            "kind": kind,
            "precision": self.cfg.precision,
            "top_k": self.cfg.top_k,
        }
        if kind == "zeroshot":
            inputs["evalset"] = known[arg].model_dump(mode="json")
        elif kind == "retrieval":
            inputs["retrieval"] = next(r for r in self.cfg.retrieval if r.name == arg).model_dump(mode="json")
        else:
            p = self.cfg.linear_probe[arg]
            inputs["probe"] = p.model_dump(mode="json")
            inputs["sets"] = {n: known[n].model_dump(mode="json") for n in (p.train, p.test, p.val) if n}
            inputs["seed"] = self.config.seed
        return inputs

    def tasks(self) -> list[Task]:
        from eval.identity import inputs_digest

        return [Task(f"{base}-{inputs_digest(self.task_inputs(payload))}", payload) for base, payload in self._plan()]

    # ------------------------------------------------------------------ work
    def _model(self) -> tuple[Any, Any, Any, Any]:
        from eval.features import load_checkpoint, resolve_device

        device = resolve_device(self.cfg.device)
        model, tokenizer, transform = load_checkpoint(self.checkpoint_path(), device)
        return model, tokenizer, transform, device

    def results_path(self, dataset: str, task: str) -> str:
        return f"eval/results/{_slug(self.checkpoint_name())}/{dataset}.{task}.json"

    def _write_result(
        self, dataset: str, task: str, metrics: dict[str, float], details: dict[str, Any]
    ) -> None:
        body = {
            "checkpoint": self.checkpoint_name(),
            "checkpoint_path": os.path.abspath(self.checkpoint_path()),
            "checkpoint_sha256": self.checkpoint_sha256(),
            "dataset": dataset,
            "task": task,
            "metrics": {k: float(v) for k, v in metrics.items()},
            **details,
        }
        self.run.write_json(self.results_path(dataset, task), body)

    def process(self, task: Task, stats: Stats) -> None:
        self._ran.add(task.id)
        kind, arg = task.payload
        if kind == "zeroshot":
            self._zeroshot(self._evalsets()[arg], stats)
        elif kind == "retrieval":
            self._retrieval(next(r for r in self.cfg.retrieval if r.name == arg), stats)
        else:
            self._linear_probe(self.cfg.linear_probe[arg], stats)

    def _features(self, spec: EvalSetSpec, stats: Stats) -> Any:
        from eval.features import evalset_features
        from pipeline.evalsets import open_evalset

        model, _tok, transform, device = self._model()
        es = open_evalset(spec)
        feats = evalset_features(
            model, transform, es, device, self.cfg.batch_size, self.cfg.precision, progress=self.progress
        )
        stats.inc("images", len(feats.eval_ids))
        stats.drop("undecodable_image", len(feats.failed))
        return es, feats

    def _zeroshot(self, spec: EvalSetSpec, stats: Stats) -> None:
        from eval.zeroshot import (
            build_classifier,
            cached_classifier,
            classify,
            load_templates,
            resolve_classnames,
        )

        model, tokenizer, _tf, device = self._model()
        es, feats = self._features(spec, stats)
        classnames = resolve_classnames(spec, es.classes)
        templates = load_templates(spec.templates)
        ck_id = self.checkpoint_id()
        weights, cached = cached_classifier(
            self.run if self.cfg.cache else None,
            f"eval/cache/{ck_id}",
            ck_id,
            spec.name,
            lambda: build_classifier(
                model, tokenizer, classnames, templates, device, self.cfg.batch_size, self.cfg.precision
            ),
            classnames,
            templates,
        )
        stats.inc("classifier_cache_hits" if cached else "classifiers_built")
        res = classify(feats, weights, self.cfg.top_k)
        res.metrics.update(label_baselines(res.labels, es.set_labels))
        warning = class_warning(spec.name, res.metrics)
        self.run.write_parquet(
            predictions_path(spec.name, "zeroshot"),
            prediction_table(
                spec.name, "zeroshot", self.checkpoint_name(), res.eval_ids, res.labels, res.topk
            ),
        )
        self._write_result(
            spec.name,
            "zeroshot",
            res.metrics,
            {
                "classes": classnames,
                "templates": spec.templates,
                "n_templates": len(templates),
                "classifier_cached": cached,
                "failed": [{"eval_id": i, "reason": r} for i, r in res.failed[:100]],
                **_sample_details(es, spec.limit, spec.seed),
                "warnings": [warning] if warning else [],
            },
        )
        print(
            f"[eval] zeroshot {spec.name}: top1={res.metrics['top1']:.4f} top5={res.metrics['top5']:.4f} "
            f"mean_per_class_recall={res.metrics['mean_per_class_recall']:.4f} n={len(res.eval_ids)} "
            f"({es.sample_description()}): {describe(res.metrics)}",
            file=sys.stderr,
        )
        if warning:
            print(f"[eval] WARNING {warning}", file=sys.stderr)

    def _retrieval(self, spec: RetrievalSetSpec, stats: Stats) -> None:
        from eval.retrieval import evaluate_retrieval, load_caption_set

        model, tokenizer, transform, device = self._model()
        cs = load_caption_set(spec)
        res = evaluate_retrieval(
            model, tokenizer, transform, cs, device, self.cfg.batch_size, self.cfg.precision, self.progress
        )
        stats.inc("images", int(res.metrics["n_images"]))
        stats.inc("captions", int(res.metrics["n_captions"]))
        for reason, n in res.dropped.items():
            stats.drop(reason, n)
        ck = self.checkpoint_name()
        n_img, n_txt = len(res.image_ids), len(res.caption_image_ids)
        ranks = pa.table(
            {
                "dataset": [spec.name] * (n_img + n_txt),
                "direction": ["image_to_text"] * n_img + ["text_to_image"] * n_txt,
                "image_id": res.image_ids + res.caption_image_ids,
                "caption_index": [-1] * n_img + list(range(n_txt)),
                "rank": pa.array(np.concatenate([res.image_ranks, res.text_ranks]), pa.int32()),
                "checkpoint": [ck] * (n_img + n_txt),
            }
        )
        self.run.write_parquet(f"eval/retrieval/{spec.name}.parquet", ranks)
        sample = (
            f"random sample of {spec.limit} images, seed {spec.seed}" if spec.limit else "all images"
        )
        self._write_result(
            spec.name,
            "retrieval",
            res.metrics,
            {"dropped": dict(res.dropped), "sample": sample, "limit": spec.limit, "sample_seed": spec.seed},
        )
        shown = " ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if "@" in k)
        print(f"[eval] retrieval {spec.name}: {shown}", file=sys.stderr)

    def _linear_probe(self, p: LinearProbeSpec, stats: Stats) -> None:
        from eval.linear_probe import run_probe, split_indices

        known = self._evalsets()
        train_es, train = self._features(known[p.train], stats)
        x_tr, y_tr, ids_tr = train.features, train.labels, train.eval_ids
        if p.test is None:
            keep, held = split_indices(y_tr, p.test_fraction, self.config.seed)
            x_te, y_te, ids_te = x_tr[held], y_tr[held], [ids_tr[i] for i in held]
            x_tr, y_tr = x_tr[keep], y_tr[keep]
            test_es = train_es
        else:
            test_es, test = self._features(known[p.test], stats)
            x_te, y_te, ids_te = test.features, test.labels, test.eval_ids
        x_val = y_val = None
        if p.val is not None:
            _es, val = self._features(known[p.val], stats)
            x_val, y_val = val.features, val.labels
        res = run_probe(
            x_tr,
            y_tr,
            x_te,
            y_te,
            x_val,
            y_val,
            c_grid=p.c_grid,
            val_fraction=p.val_fraction,
            max_iter=p.max_iter,
            seed=self.config.seed,
        )
        dataset = self.probe_dataset(p)
        from eval.metrics import topk_indices

        res.metrics.update(label_baselines(y_te, test_es.set_labels))
        warning = class_warning(dataset, res.metrics)
        topk = topk_indices(res.test_scores, self.cfg.top_k)
        self.run.write_parquet(
            predictions_path(dataset, "linear_probe"),
            prediction_table(dataset, "linear_probe", self.checkpoint_name(), ids_te, y_te, topk),
        )
        self._write_result(
            dataset,
            "linear_probe",
            res.metrics,
            {
                "train": p.train,
                "test": p.test or f"{p.test_fraction:g} of {p.train} (stratified, seed {self.config.seed})",
                "val": p.val or f"{p.val_fraction:g} of the training split",
                "c_grid": list(p.c_grid),
                "val_accuracy_by_c": {f"{c:g}": a for c, a in res.val_accuracy.items()},
                "best_c": res.best_c,
                **_sample_details(test_es, test_es.spec.limit, test_es.spec.seed),
                # the test images: a held-out share of the training set's images, or the test set's
                **(
                    {"sample": f"{len(y_te)} held out ({p.test_fraction:g}, stratified, seed "
                     f"{self.config.seed}) of {p.train}: {train_es.sample_description()}"}
                    if p.test is None
                    else {}
                ),
                "warnings": [warning] if warning else [],
            },
        )
        print(
            f"[eval] linear_probe {dataset}: top1={res.metrics['top1']:.4f} best C={res.best_c:g} "
            f"(val top1 {res.metrics['val_top1']:.4f}): {describe(res.metrics)}",
            file=sys.stderr,
        )
        if warning:
            print(f"[eval] WARNING {warning}", file=sys.stderr)

    # ------------------------------------------------------------------ reduce
    def finalize(self, stats: Stats) -> None:
        for task in self.tasks():
            if task.id not in self._ran:  # its completion marker says these inputs were evaluated
                print(
                    f"[eval] {task.id}: checkpoint {self.checkpoint_name()} (sha256 "
                    f"{self.checkpoint_sha256()[:12]}) was already evaluated with this eval set and these "
                    "settings: skipped (--force redoes it)",
                    file=sys.stderr,
                )
        write_results_table(self.run)
        table = write_overlap_table(self.run, self.cfg.ci_level)
        if table is None:
            return
        for row in table.to_pylist():
            if row["n_overlap"]:
                detail = (
                    f"all={_num(row['acc_all'])} clean={_num(row['acc_clean'])} "
                    f"overlap={_num(row['acc_overlap'])} p={_num(row['p_value'], '.3g')}"
                )
            else:
                detail = f"all={_num(row['acc_all'])}: no overlapping image, nothing to compare"
            print(
                f"[eval] overlap {row['dataset']} ({row['task']}): {row['overlap_pct']:.2f}% overlap, {detail}",
                file=sys.stderr,
            )


def _num(value: float | None, spec: str = ".4f") -> str:
    """A statistic for the console; ``n/a`` where it is undefined (null in the table)."""
    return "n/a" if value is None else format(value, spec)


def _sample_details(es: Any, limit: int | None, seed: int) -> dict[str, Any]:
    """What the results JSON records about the images evaluated: the sample, its size and seed."""
    return {
        "sample": es.sample_description(),
        "limit": limit,
        "sample_seed": seed,
        "n_in_set": es.size_of_set,
    }


def write_results_table(run: RunDir) -> pa.Table:
    """``eval/results.parquet``: one row per (checkpoint, dataset, task, metric) from every results JSON."""
    rows = []
    for rel in run.glob("eval/results/*/*.json"):
        body = run.read_json(rel)
        warning = "; ".join(body.get("warnings", [])) or None
        for metric, value in sorted(body.get("metrics", {}).items()):
            rows.append(
                {
                    "checkpoint": body["checkpoint"],
                    "dataset": body["dataset"],
                    "task": body["task"],
                    "metric": metric,
                    "value": float(value),
                    "sample": body.get("sample"),
                    "checkpoint_sha256": body.get("checkpoint_sha256"),
                    "warning": warning,
                }
            )
    table = pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)
    run.write_parquet(RESULTS, table)
    return table


def write_overlap_table(run: RunDir, level: float = 0.995) -> pa.Table | None:
    """``eval/overlap.parquet`` from every predictions table and ``dedup/overlaps.parquet``.

    Without dedup's overlaps the overlap is unknown: nothing is written (a table from an earlier
    dedup is removed) and it says so; eval sets dedup did not search are left out and named.
    """
    from eval.overlap import overlap_table

    parts = [run.read_parquet(r) for r in run.glob("eval/predictions/*.parquet")]
    parts += [run.read_parquet(r) for r in run.glob("eval/predictions/*/*.parquet")]
    if not parts:
        return None
    preds = pa.concat_tables(
        [p.select(["dataset", "eval_id", "correct", "task", "checkpoint"]) for p in parts]
    )
    if not run.exists(RunDir.OVERLAPS):
        run.remove(OVERLAP)
        print(
            f"[eval] overlap analysis: no dedup run: overlap unknown (no {run.full_url(RunDir.OVERLAPS)}; "
            "run `webclip dedup` with these eval sets, then `webclip eval` again)",
            file=sys.stderr,
        )
        return None
    overlaps = run.read_parquet(RunDir.OVERLAPS)
    overlaps = overlaps.select([c for c in ("eval_set", "eval_id", "confirmed") if c in overlaps.column_names])
    searched = _searched_by_dedup(run)
    unsearched = sorted(set(preds.column("dataset").to_pylist()) - (searched or set()))
    if searched is None:
        unsearched = []
    if unsearched:
        print(
            f"[eval] overlap analysis: dedup did not search {', '.join(unsearched)}: overlap unknown there "
            "(add them to `evalsets:` and rerun `webclip dedup`)",
            file=sys.stderr,
        )
    table = overlap_table(preds, overlaps, level, searched=searched)
    run.write_parquet(OVERLAP, table)
    return table


def _searched_by_dedup(run: RunDir) -> set[str] | None:
    """The eval sets dedup compared with the training data (its summary, else its eval hash files);
    None when neither says (an overlaps table from elsewhere: every dataset in it counts)."""
    if run.exists("dedup/summary.json"):
        sets = run.read_json("dedup/summary.json").get("eval_sets")
        if isinstance(sets, dict):
            return set(sets)
    hashed = {r.split("/")[1] for r in run.glob(f"{RunDir.EVALSETS}/*/hashes.parquet")}
    return hashed or None
