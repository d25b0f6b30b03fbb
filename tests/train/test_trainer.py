"""The DeepSpeed trainer on CPU (gloo), every run `train/main.py` run as a script, in its own process or
under a 2-process `deepspeed` launch: the logit-scale clamp (ZeRO-3 bf16 single process; ZeRO-2 and
ZeRO-3 with 2 ranks), exact gradient accumulation, kill + resume, zero-shot evaluation during training,
and 2-process runs over shards with a corrupt sample for ZeRO 2 and 3.

Cost: a run is mostly process start-up and teardown (importing torch, DeepSpeed and inductor: ~10 s of
CPU), not steps. So (1) runs that need no process of their own run one after another in one process
(tests/train/run_many.py: the launch runs ZeRO-2 then ZeRO-3 in each rank; two single-process workers),
(2) the processes of a fixture start together (one torch thread each; 2 cores run two at once), and
(3) one run serves several claims where that takes nothing from them: the accumulated run is both the
big batch's equal and the uninterrupted reference of the kill + resume, and the 2-process runs start
above the logit-scale cap. The killed and the resumed runs are processes of their own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MAIN = str(REPO / "train" / "main.py")
DS = REPO / "infra" / "deepspeed"
TIMEOUT = 600


def _env() -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(run: Path, shards: list[str], ds: str, *sets: str) -> list[str]:
    base = ["--run", str(run), "--deepspeed_config", str(DS / ds)]
    defaults = (
        f"train.data={json.dumps(shards)}",
        "train.workers=0",
        "train.shuffle_buffer=16",
        "train.warmup=0",
        "train.log_every=1",
    )
    for s in (*defaults, *sets):
        base += ["--set", s]
    return base


class Run:
    """One training: its run directory, its arguments to ``train/main.py`` and its console log."""

    def __init__(self, root: Path, name: str, shards: list[str], ds: str, *sets: str):
        self.dir = root / name
        self.log = root / f"{name}.log"
        self.argv = _args(self.dir, shards, ds, *sets)

    def rows(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "train" / "metrics.jsonl").read_text().splitlines()]

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.rows()}  # a re-run step keeps its last value

    def export(self) -> dict[str, torch.Tensor]:
        return torch.load(self.dir / "train" / "export" / "model.pt")


class Proc:
    """A process running ``runs``: one run as ``python train/main.py``, several as ``train/main.py`` run
    one after another in one process (tests/train/run_many.py); ``procs=2``: under a 2-process
    ``deepspeed`` launch."""

    def __init__(self, *runs: Run, procs: int = 1):
        self.runs = runs
        if len(runs) == 1:
            script = [MAIN, *runs[0].argv]
        else:
            spec = runs[0].log.with_suffix(".spec.json")
            spec.write_text(json.dumps([[str(r.log), r.argv] for r in runs]))
            script = [str(Path(__file__).with_name("run_many.py")), str(spec)]
        cmd = [sys.executable, *script]
        if procs > 1:
            launcher = ["-m", "deepspeed.launcher.runner", "--num_gpus", str(procs)]
            cmd = [sys.executable, *launcher, "--master_port", str(_free_port()), *script]
        with runs[0].log.open("ab") as out:
            # own session: a launch is stopped with its ranks (killpg) if the test gives up on it
            self.proc = subprocess.Popen(
                cmd, env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self) -> None:
        """Fails the test with the runs' log tails when the process did not exit 0."""
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            rc = None
        tails = "\n".join(
            f"--- {r.log.name}\n{r.log.read_text(errors='replace')[-3000:]}"
            for r in self.runs
            if r.log.exists()
        )
        assert rc == 0, f"exit {rc}\n{tails}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _wait_for_step(proc: Proc, step: int) -> None:
    """Until the run's metrics.jsonl has a row of ``step`` (complete lines only) or the process ends."""
    metrics = proc.runs[0].dir / "train" / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.proc.poll() is None:
        text = metrics.read_text() if metrics.exists() else ""
        if any(json.loads(x)["step"] >= step for x in text.splitlines(keepends=True) if x.endswith("\n")):
            return
        time.sleep(0.05)


# ---------------------------------------------------------------- single-process runs, started together

EVAL_CLASSES = ["red square", "green square", "blue stripe", "yellow stripe"]


def _evalset(root: Path) -> str:
    """A folder eval set of 4 classes x 3 images, drawn like the training shards."""
    from tests.train.conftest import sample_image

    rng = np.random.default_rng(7)
    for i, name in enumerate(EVAL_CLASSES):
        d = root / f"{i}_{name.replace(' ', '_')}"
        d.mkdir(parents=True)
        for j in range(3):
            (d / f"{j}.jpg").write_bytes(sample_image(*name.split(" "), rng))
    spec = {"name": "shapes", "kind": "folder", "path": str(root), "classes": EVAL_CLASSES}
    return "evalsets=" + json.dumps([{**spec, "templates": "photo"}])


@pytest.fixture(scope="module")
def single(tmp_path_factory, shards) -> dict[str, Any]:
    """The single-process runs: two processes running several each, and the killed + resumed run."""
    root = tmp_path_factory.mktemp("single")
    resume = ("train.steps=6", "train.lr=1e-3", "train.checkpoint_every=3")
    acc = ("train.batch_size=8", "train.grad_accum=2", *resume)
    # tiny-rn: BatchNorm makes train/eval mode and running statistics visible in losses and weights
    rn = ("train.model=tiny-rn", "train.steps=4", "train.lr=1e-3", "train.checkpoint_every=0")
    rn += ("train.batch_size=8", "train.log_every=3", _evalset(root / "evalset"))
    runs = {
        # bf16 module weights, fp32 master partitions; start far above the cap (exp(6) = 403): lr 0.5
        # pulls the scale down by ~1 over the run, so the master ends above ln 100 unless it is clamped,
        # and a module copy not clamped after the step is above it in the next forward
        "zero3": Run(
            root,
            "zero3",
            shards,
            "zero3.json",
            "train.steps=5",
            "train.batch_size=8",
            "train.lr=0.5",
            "train.model_overrides={init_logit_scale: 6.0}",
            "train.checkpoint_every=0",
        ),
        "big": Run(root, "big", shards, "zero2_fp32.json", "train.batch_size=16", *resume),
        # the run above, flat by default under ZeRO-2, with DeepSpeed stepping each parameter tensor
        "per_tensor": Run(
            root,
            "per_tensor",
            shards,
            "zero2_fp32.json",
            "train.batch_size=16",
            *resume,
            "train.flat_params=false",
        ),
        "acc": Run(root, "acc", shards, "zero2_fp32.json", *acc),
        "killed": Run(root, "killed", shards, "zero2_fp32.json", *acc),
        "eval": Run(root, "eval", shards, "zero2_fp32.json", *rn, "train.eval_every=2"),
        "noeval": Run(root, "noeval", shards, "zero2_fp32.json", *rn, "train.eval_every=0"),
        # exp(1000) overflows fp32: the first step's logits, and so its loss, are not finite
        "diverged": Run(
            root,
            "diverged",
            shards,
            "zero2_fp32.json",
            "train.steps=3",
            "train.batch_size=8",
            "train.checkpoint_every=0",
            "train.model_overrides={init_logit_scale: 1000.0}",
        ),
    }
    procs: list[Proc] = []
    try:
        # its own process: it must exit 3, where run_many would stop the runs after it
        procs.append(diverged := Proc(runs["diverged"]))
        killed = Proc(runs["killed"])
        # ZeRO-3 replaces torch.nn.functional.linear for the rest of its process: it runs last in its
        # process; the runs compared exactly (eval/noeval) run first in theirs
        procs += [killed, Proc(runs["noeval"], runs["acc"], runs["per_tensor"])]
        procs += [Proc(runs["eval"], runs["big"], runs["zero3"])]
        _wait_for_step(killed, 4)  # a row of step 4 is written after the step-3 checkpoint is complete
        assert killed.proc.poll() is None, (
            "the run ended before it was killed\n" + runs["killed"].log.read_text()
        )
        killed.proc.send_signal(signal.SIGKILL)  # die mid-run, after the step-3 checkpoint
        assert killed.proc.wait() == -signal.SIGKILL
        latest = (runs["killed"].dir / "train" / "checkpoints" / "latest").read_text().strip()
        procs.append(Proc(runs["killed"]))  # the same command again: resumes from step 3
        for proc in procs[2:]:
            proc.wait()
        yield {**runs, "latest_after_kill": latest, "diverged_exit": diverged.proc.wait(timeout=TIMEOUT)}
    finally:
        for proc in procs:
            proc.stop()


def test_zero3_large_lr_keeps_logit_scale_at_most_100(single):
    rows = single["zero3"].rows()
    assert rows[0]["logit_scale"] > 100  # the first forward ran on the unclamped initial value
    # every later forward used a clamped weight: a clamp of the bf16 copy alone would be undone
    # by the next optimizer step copying the fp32 master back
    assert max(r["logit_scale"] for r in rows[1:]) <= 100.0 * (1 + 2**-7)
    # the master weights themselves were clamped: the export is built from them
    sd = single["zero3"].export()
    assert sd["logit_scale"].shape == torch.Size([])
    assert float(sd["logit_scale"]) <= math.log(100) + 1e-6


def test_grad_accumulation_equals_one_big_batch(single):
    """ZeRO-2 (gradients partitioned and reduced per micro-step): 8 x 2 accumulated == one batch of 16."""
    big, acc = single["big"], single["acc"]
    a, b = big.export(), acc.export()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    la, lb = big.losses(), acc.losses()
    assert sorted(la) == sorted(lb) == list(range(1, 7))
    for step in la:
        assert abs(la[step] - lb[step]) < 1e-4, (step, la[step], lb[step])


def test_flat_parameters_train_as_per_tensor_parameters(single):
    """ZeRO-2 over one flat parameter per AdamW group (the default) trains as DeepSpeed over each
    parameter tensor: the same losses and the same exported weights (only the gradient norm's
    summation order differs)."""
    flat, per_tensor = single["big"], single["per_tensor"]
    assert "flat parameters" in flat.log.read_text() and "per-tensor parameters" in per_tensor.log.read_text()
    for run, layout in ((flat, "flat"), (per_tensor, "per-tensor")):  # what a resume is checked against
        assert (
            run.dir / "train" / "checkpoints" / "params_layout"
        ).read_text().strip() == f"{layout} aligned"
    la, lb = flat.losses(), per_tensor.losses()
    assert sorted(la) == sorted(lb) == list(range(1, 7))
    for step in la:
        assert abs(la[step] - lb[step]) < 1e-5, (step, la[step], lb[step])
    a, b = flat.export(), per_tensor.export()
    assert list(a) == list(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def test_kill_and_resume_gives_the_same_losses(single):
    """SIGKILL after the step-3 checkpoint, rerun: steps 4-6 equal the uninterrupted run (same config)."""
    assert single["latest_after_kill"] == "step3"
    full, resumed = single["acc"].losses(), single["killed"].losses()
    for step in (1, 2, 3, 4, 5, 6):
        assert abs(full[step] - resumed[step]) < 1e-6, (step, full[step], resumed[step])
    out = single["killed"].log.read_text()
    assert "resumed from" in out and "at step 3" in out


def test_a_diverged_run_stops_with_exit_3_naming_the_step(single):
    """A non-finite loss is not trained on: the run ends with exit 3 and a message that names the step
    and what to do, with the step's row logged and no export written."""
    run = single["diverged"]
    out = run.log.read_text()
    assert single["diverged_exit"] == 3, out[-3000:]
    assert "error: train: the loss is nan at step 1: training diverged. Lower train.lr" in out, out[-3000:]
    assert [r["step"] for r in run.rows()] == [1]
    assert not (run.dir / "train" / "export").exists()


def test_resumed_run_logs_read_as_one_run(single):
    """The killed run had logged step 4 before it died; after the resume every log holds each step once:
    metrics.jsonl, the CSV monitor (one header) and TensorBoard (the first attempt's step 4 purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed = single["killed"]
    # step 4's row, and its monitor events if they were written before the kill
    assert re.search(r"dropped \d+ log rows of steps after 3", killed.log.read_text())
    assert [r["step"] for r in killed.rows()] == [1, 2, 3, 4, 5, 6]
    lines = (killed.dir / "train" / "logs" / "csv" / "train_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and [x.split(",")[0] for x in lines[1:]] == ["1", "2", "3", "4", "5", "6"]
    acc = EventAccumulator(str(killed.dir / "train" / "logs" / "tensorboard"))
    acc.Reload()
    scalars = acc.Scalars("train/loss")
    assert [e.step for e in scalars] == [1, 2, 3, 4, 5, 6]
    full = single["acc"].losses()
    assert all(abs(e.value - full[e.step]) < 1e-6 for e in scalars)  # step 4 is the redone one


def test_zero_shot_eval_during_training_logged_at_interval_and_training_unchanged(single):
    """eval_every=2 over 4 steps: zero-shot metrics at steps 2 and 4 in the CSV and TensorBoard monitors
    and on the console; the losses and final weights (BatchNorm running statistics included) are
    exactly those of the same run without evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev, ref = single["eval"], single["noeval"]
    out = ev.log.read_text()
    shown = [line for line in out.splitlines() if "zero-shot:" in line]
    assert [line.split("step ")[1].split(" ")[0] for line in shown] == ["2", "4"], out[-3000:]
    assert all("zeroshot/shapes/top1=" in line for line in shown)
    assert "zero-shot" not in ref.log.read_text()

    csv_dir = ev.dir / "train" / "logs" / "csv"
    for key in ("top1", "top5", "mean_per_class_recall"):
        lines = (csv_dir / f"eval_zeroshot_shapes_{key}.csv").read_text().splitlines()
        assert lines[0] == f"step,{key}" and [x.split(",")[0] for x in lines[1:]] == ["2", "4"]
        assert all(0.0 <= float(x.split(",")[1]) <= 1.0 for x in lines[1:])
    # training scalars go to the monitors every log_every=3 steps and at the last step
    loss_csv = (csv_dir / "train_loss.csv").read_text().splitlines()
    assert [x.split(",")[0] for x in loss_csv[1:]] == ["3", "4"]

    acc = EventAccumulator(str(ev.dir / "train" / "logs" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/zeroshot/shapes/top1")] == [2, 4]
    assert [e.step for e in acc.Scalars("train/loss")] == [3, 4]

    assert [r["step"] for r in ev.rows()] == [1, 2, 3, 4]  # metrics.jsonl keeps a row per step
    assert ev.losses() == ref.losses()
    a, b = ev.export(), ref.export()
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- 2-process launches, started together


@pytest.fixture(scope="module")
def launches(tmp_path_factory, shards) -> dict[str, tuple[Run, str]]:
    root = tmp_path_factory.mktemp("launch")
    common = ("train.steps=16", "train.batch_size=8", "train.lr=2e-3", "train.checkpoint_every=0")
    # both start above the logit-scale cap (exp(4.7) = 110): with 2 ranks only one holds the 1-element
    # parameter's fp32 master (ZeRO-2) or real data in its partition (ZeRO-3), and the clamp must still
    # reach every later forward
    common += ("train.warmup=2", "train.model_overrides={init_logit_scale: 4.7}")
    runs = {
        ds: Run(root, ds.split("_")[0], shards, ds, *common) for ds in ("zero2_fp32.json", "zero3_fp32.json")
    }
    # one `deepspeed` launch, each rank running train/main.py for ZeRO-2 then ZeRO-3 (which must be
    # last: it replaces torch.nn.functional.linear for the rest of the process)
    proc = Proc(*runs.values(), procs=2)
    try:
        proc.wait()
        yield {ds: (run, run.log.read_text()) for ds, run in runs.items()}
    finally:
        proc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("ds", ["zero2_fp32.json", "zero3_fp32.json"])
def test_two_process_deepspeed_run_loss_decreases_and_scale_clamped(launches, ds):
    run, out = launches[ds]
    assert "on 2 x cpu" in out
    losses = run.losses()
    first = sum(losses[s] for s in (1, 2, 3)) / 3
    last = sum(losses[s] for s in (14, 15, 16)) / 3
    assert last < first - 0.05, losses
    stats = json.loads((run.dir / "train" / "data_stats.json").read_text())
    assert stats.get("corrupt_image", 0) >= 1  # skipped and counted (once per epoch read), not fatal
    assert (run.dir / "train" / "export" / "model.pt").is_file()
    rows = run.rows()
    assert rows[0]["logit_scale"] > 100
    assert max(r["logit_scale"] for r in rows[1:]) <= 100.0 * (1 + 1e-6)
    assert float(run.export()["logit_scale"]) <= math.log(100) + 1e-6


# ---------------------------------------------------------------- what an ML engineer meets next (issue 17)


def _rerun(run: Run, root: Path, name: str, *sets: str) -> tuple[subprocess.Popen, Path, Path]:
    """``python train/main.py`` on a copy of ``run``'s directory, with ``sets`` added to its arguments."""
    import shutil

    copy = root / name
    shutil.copytree(run.dir, copy)
    args = [a if a != str(run.dir) else str(copy) for a in run.argv]
    for s in sets:
        args += ["--set", s]
    log = root / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, MAIN, *args], env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, copy, log


@pytest.mark.slow
def test_resume_with_another_world_size_or_fewer_steps_stops_with_exit_2_naming_the_fix(
    single, launches, tmp_path
):
    """A 2-rank ZeRO-2 checkpoint resumed by one process, and a run at step 6 resumed with
    train.steps=3: both stop before any work with exit 2 and a message naming the setting and the fix
    (DeepSpeed raised a raw ZeRORuntimeException for the first; the second trained on silently)."""
    two_ranks, _ = launches["zero2_fp32.json"]
    world, _, world_log = _rerun(two_ranks, tmp_path, "world")
    fewer, fewer_dir, fewer_log = _rerun(single["big"], tmp_path, "fewer", "train.steps=3")
    assert world.wait(timeout=TIMEOUT) == 2, world_log.read_text()[-3000:]
    out = world_log.read_text()
    assert "was written by 2 rank(s) and this run has 1" in out and "--num_gpus 2" in out, out[-3000:]
    assert "load_universal" in out and "Traceback" not in out
    assert fewer.wait(timeout=TIMEOUT) == 2, fewer_log.read_text()[-3000:]
    out = fewer_log.read_text()
    assert "train.steps=3: the checkpoint to resume" in out and "already at step 6" in out, out[-3000:]
    assert "Traceback" not in out
    # nothing was trained or exported again
    assert json.loads((fewer_dir / "train" / "summary.json").read_text())["steps"] == 6


def test_the_checkpoint_folder_of_a_flat_run_loads_as_its_export(single):
    """``load_model('<run>/train/checkpoints')`` on the default flat parameters (ZeRO-2) gives the
    exported weights under OpenAI's names and computes (it failed on "flat_decay" keys)."""
    from train.export import load_model

    run = single["big"]
    assert (run.dir / "train" / "checkpoints" / "params_layout").read_text().startswith("flat")
    model, tokenizer, _ = load_model(run.dir / "train" / "checkpoints")
    export = run.export()
    sd = model.state_dict()
    assert list(sd) == list(export)
    for k, v in export.items():
        assert torch.allclose(sd[k], v, atol=1e-6), k
    with torch.no_grad():
        size = model.config.image_size
        image, text, scale = model(torch.zeros(1, 3, size, size), tokenizer(["a red square"]))
    assert image.shape == text.shape and torch.isfinite(scale).all()


def test_status_after_train_main_reports_train_done_and_short_failures(single, tmp_path):
    """``webclip status`` on a run trained by ``train/main.py`` (no stage marker) says train is done,
    with its steps; an earlier failure's multi-KB message is cut to one short line."""
    import shutil

    from pipeline.cli import status

    run = tmp_path / "status-run"
    shutil.copytree(single["big"].dir, run)
    text = status(str(run))
    line = next(x for x in text.splitlines() if x.strip().startswith("train "))
    assert " done " in line and "steps=6" in line, text
    # the same run before training finished, with a failed `webclip train` attempt on record
    (run / "train" / "summary.json").unlink()
    (run / "config.yaml").write_text("stages: [train]\n")  # a `webclip train` run: config written first
    (run / "_failed" / "train").mkdir(parents=True)
    (run / "_failed" / "train" / "train.json").write_text(json.dumps({"error": "Unexpected key(s) " * 500}))
    text = status(str(run))
    line = next(x for x in text.splitlines() if x.strip().startswith("train "))
    assert " failed " in line, text
    failed = [x for x in text.splitlines() if "failed train" in x]
    assert len(failed) == 1 and len(failed[0]) < 400 and "full text:" in failed[0], text


@pytest.mark.slow
def test_ctrl_c_under_the_deepspeed_launcher_ends_with_the_resume_line(tmp_path, shards):
    """SIGINT to the launch's whole process group (what Ctrl-C in a terminal does) during a 2-rank
    run: the ranks print no traceback, and the output ends with rank 0's line naming the step and the
    resume (printed after the launcher's own lines); the same command then resumes."""
    run = Run(
        tmp_path,
        "ctrlc",
        shards,
        "zero2_fp32.json",
        "train.steps=400",
        "train.batch_size=8",
        "train.checkpoint_every=2",
    )
    proc = Proc(run, procs=2)
    try:
        _wait_for_step(proc, 3)
        assert proc.proc.poll() is None, run.log.read_text()[-3000:]
        os.killpg(proc.proc.pid, signal.SIGINT)
        proc.proc.wait(timeout=120)
        deadline = time.monotonic() + 150  # the line comes after the launcher processes have exited
        while "rerun the same command" not in run.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        proc.stop()
    out = run.log.read_text(errors="replace")
    lines = [x for x in out.splitlines() if x.strip()]
    assert re.fullmatch(
        r"interrupted at step \d+; rerun the same command to resume from the last checkpoint \(step\d+\)",
        lines[-1],
    ), out[-3000:]
    assert "train/trainer.py" not in out and 'train/main.py", line' not in out, out[-3000:]
    assert out.count("interrupted at step") == 1  # rank 0 only
