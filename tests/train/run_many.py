"""Run several trainings one after another in one process, each as ``train/main.py`` run as a script
(``runpy``, ``__main__``, its own ``sys.argv``), its console output to its own log. For the tests:
importing torch and DeepSpeed and tearing the interpreter down cost ~10 s of CPU per process, far more
than a tiny run. Under the ``deepspeed`` launcher each rank runs the sequence, and the arguments the
launcher appends (``--local_rank=N``) are passed on to every run.

    python tests/train/run_many.py SPEC.json       # SPEC: [[log_path, [arg, ...]], ...]
    deepspeed --num_gpus 2 tests/train/run_many.py SPEC.json

Exit status: 0 when every run exited 0; the first run that fails ends the process with 1 (under the
launcher that stops the other ranks, which would otherwise wait in a collective).
Torch-global state a run leaves behind is the caller's to order around (ZeRO-3 replaces
``torch.nn.functional.linear`` for the rest of the process).
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

MAIN = str(Path(__file__).resolve().parents[2] / "train" / "main.py")


def run_script(argv: list[str]) -> int:
    sys.argv = [MAIN, *argv]
    try:
        runpy.run_path(MAIN, run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main(spec_path: str, launcher_args: list[str]) -> int:
    os.environ["WEBCLIP_KEEP_PROCESS_GROUP"] = "1"  # the next run reuses it (DeepSpeed caches groups)
    for log, argv in json.loads(Path(spec_path).read_text()):
        with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                rc = run_script([*launcher_args, *argv])
            except BaseException:  # reported in the run's log
                traceback.print_exc()
                rc = 1
            print(f"[run_many] exit {rc}", flush=True)
        if rc != 0:
            return 1
    return 0


if __name__ == "__main__":
    launcher = [a for a in sys.argv[1:] if a.startswith("--local_rank")]  # placed first by deepspeed
    (spec,) = (a for a in sys.argv[1:] if not a.startswith("--local_rank"))
    rc = main(spec, launcher)
    # every run has returned (checkpoints, exports and logs written and closed or flushed; its last
    # collective done): skip tearing down an interpreter holding torch, DeepSpeed and inductor (2-4 s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
