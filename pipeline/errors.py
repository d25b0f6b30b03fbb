"""Errors that stop a run before any work, with the exit code the CLI maps them to."""

from __future__ import annotations

#: Exit code for a configuration or input mistake: nothing was run, nothing was written.
EXIT_CONFIG = 2
#: Exit code for a stage that ran but left failed tasks behind (rerun to retry them).
EXIT_FAILED_TASKS = 3
#: Exit code after SIGINT (Ctrl-C): 128 + SIGINT, as shells report it; rerun to resume.
EXIT_INTERRUPTED = 130


class ConfigError(Exception):
    """A bad configuration or unusable input, found before any work was done.

    The message names the key (or file), the value, and the fix; the CLI prints it and exits
    with :data:`EXIT_CONFIG`.
    """

    exit_code = EXIT_CONFIG


class StageFailed(Exception):
    """A stage finished with tasks that kept failing after their retries."""

    exit_code = EXIT_FAILED_TASKS

    def __init__(self, stage: str, failures: dict[str, str]):
        self.stage = stage
        self.failures = failures
        lines = [f"stage {stage!r}: {len(failures)} task(s) failed after retries:"]
        lines += [f"  - {task}: {error}" for task, error in sorted(failures.items())]
        lines.append("Rerun the same command to retry only these tasks.")
        super().__init__("\n".join(lines))
