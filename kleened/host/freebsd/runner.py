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

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from typing import Protocol

from kleened.host.base import HostError

SAFE_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
MINIMAL_ENV: dict[str, str] = {"PATH": SAFE_PATH}
DEFAULT_TIMEOUT = 30.0


class Runner(Protocol):
    async def __call__(self, argv: Sequence[str], *, timeout: float) -> tuple[int, str]: ...


class CommandError(HostError):
    """The command could not be run to completion (as opposed to exiting non-zero)."""


class CommandTimeout(CommandError):
    """The command did not finish in time and was killed."""


class CommandNotStarted(CommandError):
    """exec failed: the program is missing or not executable."""


def abnormal_exit(program: str, returncode: int, output: str) -> str:
    """The original's wording for a failed command (reference §6.5)."""
    return f"{program} exited abnormally with exit code {returncode}: '{output}'"


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The child leads its own session (start_new_session), so its pid is the
    # process-group id; killing the group also ends grandchildren that would
    # otherwise keep the output pipe open.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run(argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """Run `argv`, return `(returncode, stdout+stderr as text)`.

    Raises CommandNotStarted when the program cannot be executed and
    CommandTimeout (after killing it) when it runs longer than `timeout`.
    A non-zero exit is *not* an error here: callers decide what it means.
    """
    if not argv:
        raise CommandNotStarted("no command given")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(MINIMAL_ENV),
            start_new_session=True,
        )
    except OSError as err:
        raise CommandNotStarted(f"could not run {argv[0]}: {err.strerror or err}") from err
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g} s") from None
    except BaseException:  # cancelled: do not leave the child behind
        _kill_group(process)
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())
        raise
    code = process.returncode
    assert code is not None
    # asyncio reports death by signal N as -N; the rest of kleened says 128 + N.
    return (128 - code if code < 0 else code), output.decode("utf-8", errors="replace")
