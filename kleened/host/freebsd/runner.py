"""Run a short-lived host command and collect its merged output.

Every FreeBSD driver (jail, jls, mount, ...) talks to the OS through a
`Runner`: an async callable `run(argv, *, timeout) -> (returncode, output)`.
Drivers take the runner as a constructor argument, so their behaviour can be
checked against recorded argument vectors on hosts where jail(8) does not exist.

The default runner never uses a shell, gives the child a minimal environment
(the daemon's own environment must not leak into jails, reference §14.3.9),
merges stderr into stdout (the original's error messages quote that combined
text, reference §1) and kills the child's whole process group on timeout or
cancellation, so nothing it started outlives the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kleened.host import cmd
from kleened.host.cmd import CommandError, CommandNotStarted, CommandTimeout

__all__ = ["CommandError", "CommandNotStarted", "CommandTimeout", "Runner", "abnormal_exit", "run"]

SAFE_PATH = cmd.SAFE_PATH
MINIMAL_ENV: dict[str, str] = {"PATH": SAFE_PATH}
DEFAULT_TIMEOUT = 30.0


class Runner(Protocol):
    async def __call__(self, argv: Sequence[str], *, timeout: float) -> tuple[int, str]: ...


def abnormal_exit(program: str, returncode: int, output: str) -> str:
    """The original's wording for a failed command (reference §6.5)."""
    return f"{program} exited abnormally with exit code {returncode}: '{output}'"


async def run(argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """Run `argv`, return `(returncode, stdout+stderr as text)`.

    Raises CommandNotStarted when the program cannot be executed and
    CommandTimeout (after killing it) when it runs longer than `timeout`.
    A non-zero exit is *not* an error here: callers decide what it means.
    """
    result = await cmd.run(argv, timeout=timeout, env=MINIMAL_ENV, merge_stderr=True)
    return result.returncode, result.out
