"""The train stage: launches ``train/main.py`` (DeepSpeed) for the run as a subprocess, streaming its output."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.runconfig import stage_config_path
from pipeline.stage import Stage, Task
from pipeline.stats import Stats
from train.config import read_ds_json

REPO = Path(__file__).resolve().parents[1]


def _die_with_parent() -> None:
    """In the trainer's process, before exec: get SIGTERM when the driver dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _stop(p: subprocess.Popen) -> None:
    """Interrupt the trainer (it, or the launcher forwarding to its ranks, exits on SIGINT); escalate."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=wait)


#: What ``train/main.py``'s exit codes mean, for the stage's failure message.
TRAINER_EXITS = {
    2: "the trainer refused its configuration (its message is above); fix the train: settings and rerun",
    3: "training diverged (the trainer's message above names the step); lower train.lr or raise "
    "train.warmup and rerun: it resumes from the last checkpoint at the new rate (train.resume=false "
    "starts over)",
}


class TrainStage(Stage):
    """One task: run the distributed trainer with the configured launcher; resumable from checkpoints."""

    name = "train"
    outputs = ("train",)
    in_driver = True

    def validate(self) -> None:
        tc = self.config.train
        ds = Path(tc.deepspeed_config)
        if not (ds if ds.is_absolute() else REPO / ds).is_file():
            raise ConfigError(
                f"train.deepspeed_config: {tc.deepspeed_config!r} does not exist; use infra/deepspeed/*.json"
            )
        ds_json = read_ds_json(ds if ds.is_absolute() else REPO / ds)
        tc.flat_params_for(tc.zero_stage_in(ds_json))  # ZeRO-3 with train.flat_params=true stops here
        if tc.launcher == "deepspeed" and shutil.which("deepspeed") is None and tc.num_procs > 1:
            raise ConfigError(
                "train.launcher=deepspeed but no `deepspeed` on PATH; install deepspeed or use torchrun"
            )
        if tc.hostfile and not Path(tc.hostfile).is_file():
            raise ConfigError(f"train.hostfile: {tc.hostfile!r} does not exist")

    def check(self) -> None:
        if not self.config.train.data and not self.run.glob("clean/*.tar"):
            raise ConfigError(
                f"train: no shards in {self.run.full_url('clean')}; run the dedup stage or set train.data"
            )

    def tasks(self) -> list[Task]:
        return [Task(id="train")]

    def command(self) -> list[str]:
        """The launch command line for this run."""
        tc = self.config.train
        ds = (
            tc.deepspeed_config
            if Path(tc.deepspeed_config).is_absolute()
            else str(REPO / tc.deepspeed_config)
        )
        args = [str(REPO / "train" / "main.py"), "--run", self.run.url, "--deepspeed_config", ds]
        # the configuration this stage runs with (config.yaml is the union over stages: other sections
        # there may be what other stages ran with)
        cfg_file = None
        if self.run.is_local:
            cfg_file = self.run.local_path(stage_config_path("train"))
            if not cfg_file.is_file():
                cfg_file = self.run.local_path(self.run.CONFIG)
        if cfg_file is not None and cfg_file.is_file():
            args += ["--config", str(cfg_file)]
        if tc.launcher == "python" or (tc.launcher == "deepspeed" and tc.num_procs == 1 and not tc.hostfile):
            return [sys.executable, *args]
        if tc.launcher == "torchrun":
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(tc.num_procs),
                *args,
            ]
        launch = [sys.executable, "-m", "deepspeed.launcher.runner"]
        launch += ["--hostfile", tc.hostfile] if tc.hostfile else ["--num_gpus", str(tc.num_procs)]
        return [*launch, *args]

    def process(self, task: Task, stats: Stats) -> None:
        cmd = self.command()
        print(f"[train] {' '.join(cmd)}", file=sys.stderr, flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_die_with_parent,
        ) as p:
            assert p.stdout is not None
            try:
                for line in p.stdout:  # stream the trainer's progress to the console as it comes
                    sys.stderr.write(line)
                rc = p.wait()
            except BaseException:  # Ctrl-C / SIGINT to this process alone: the trainer must not outlive it
                _stop(p)
                raise
        if rc != 0:
            raise RuntimeError(f"trainer exited with status {rc}: {TRAINER_EXITS.get(rc, 'its output is above')}")
        out = self.run.local_path(self.run.TRAIN)
        data = (
            json.loads((out / "data_stats.json").read_text()) if (out / "data_stats.json").is_file() else {}
        )
        for reason, n in data.items():
            if reason == "read":
                stats.inc("samples_read", n)
            else:
                stats.drop(reason, n)
        stats.inc("steps", self.config.train.steps)
