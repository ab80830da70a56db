"""Run a short-lived host command: argument vector in, exit code and output out.

The generic runner the host modules share. It never uses a shell, always has a
timeout, gives the child a minimal environment by default (the daemon's own
environment must not leak into what it starts, reference §14.3.9; `LC_ALL=C`
so the messages we match on are the untranslated ones), keeps stdout and
stderr apart, and kills the child's whole process group on timeout or
cancellation, so nothing it started outlives the call.

`run` reports a non-zero exit as a result, not an error: callers decide what it
means. `check_output` is the common "must succeed" case and raises the caller's
own error class with the command's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kleened.host.base import HostError

SAFE_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
DEFAULT_ENV: Mapping[str, str] = {"PATH": SAFE_PATH, "LC_ALL": "C"}


class CommandError(HostError):
    """The command could not be run to completion (as opposed to exiting non-zero)."""


class CommandNotStarted(CommandError):
    """exec failed: the program is missing or not executable."""


class CommandTimeout(CommandError):
    """The command did not finish in time and was killed."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int  # the exit code, or 128 + N when killed by signal N
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


class Runner(Protocol):
    """`run`'s signature, for code that takes its runner as a parameter (tests
    pass a wrapper that records each argument vector and then runs it)."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> Awaitable[CommandResult]: ...


def failure_message(result: CommandResult) -> str:
    """What went wrong, in the command's own words where it said any."""
    said = result.err.strip() or result.out.strip()
    if said:
        return said
    program = os.path.basename(result.argv[0]) if result.argv else "command"
    return f"{program} exited with code {result.returncode}"


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The child leads its own session (start_new_session), so its pid is the
    # process-group id; killing the group also ends grandchildren that would
    # otherwise keep the output pipes open.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _start(
    argv: Sequence[str], env: Mapping[str, str] | None, **pipes: int
) -> asyncio.subprocess.Process:
    if not argv:
        raise CommandNotStarted("no command given")
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=dict(DEFAULT_ENV if env is None else env),
            start_new_session=True,
            **pipes,  # type: ignore[arg-type]
        )
    except OSError as err:
        raise CommandNotStarted(f"could not run {argv[0]}: {err.strerror or err}") from err


def _returncode(process: asyncio.subprocess.Process) -> int:
    code = process.returncode
    assert code is not None
    # asyncio reports death by signal N as -N; the rest of kleened says 128 + N.
    return 128 - code if code < 0 else code


async def _reap_after(process: asyncio.subprocess.Process) -> None:
    _kill_group(process)
    with contextlib.suppress(Exception):
        await asyncio.shield(process.wait())


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    merge_stderr: bool = False,
) -> CommandResult:
    """Run `argv` to completion and collect its output.

    `env=None` means the minimal DEFAULT_ENV, not the daemon's environment.
    `merge_stderr` sends stderr into stdout, interleaved as the tool wrote it.
    Raises CommandNotStarted when the program cannot be executed and
    CommandTimeout (after killing its process group) when it runs longer
    than `timeout` seconds.
    """
    process = await _start(
        argv,
        env,
        stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(input), timeout)
    except TimeoutError:
        await _reap_after(process)
        raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g} s") from None
    except BaseException:  # cancelled: do not leave the child behind
        await _reap_after(process)
        raise
    return CommandResult(tuple(argv), _returncode(process), stdout, stderr or b"")


async def check_output(
    argv: Sequence[str],
    *,
    timeout: float,
    error: type[Exception] = HostError,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> str:
    """Run `argv`, return its stdout as text; any failure raises `error(message)`.

    The message is the command's own stderr (or stdout) when it printed one,
    so what reaches the API client is what the tool said.
    """
    try:
        result = await run(argv, timeout=timeout, env=env, input=input)
    except CommandError as err:
        raise error(str(err)) from err
    if not result.ok:
        raise error(failure_message(result))
    return result.out


async def run_pipeline(
    first: Sequence[str],
    second: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> tuple[CommandResult, CommandResult]:
    """`first | second` without a shell: first's stdout feeds second's stdin.

    Both results carry their own stderr; the pipe's data is not collected
    (first's `stdout` is empty). Both process groups are killed on timeout or
    cancellation.
    """
    read_end, write_end = os.pipe()
    try:
        producer = await _start(
            first,
            env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            consumer = await _start(
                second,
                env,
                stdin=read_end,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except BaseException:
            await _reap_after(producer)
            raise
    finally:
        # The children hold their own copies; ours would keep the pipe open
        # and the consumer would never see end-of-file.
        os.close(read_end)
        os.close(write_end)

    async def both() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        return await asyncio.gather(producer.communicate(), consumer.communicate())

    try:
        (_, first_err), (second_out, second_err) = await asyncio.wait_for(both(), timeout)
    except TimeoutError:
        await _reap_after(producer)
        await _reap_after(consumer)
        raise CommandTimeout(
            f"{first[0]} | {second[0]} did not finish within {timeout:g} s"
        ) from None
    except BaseException:
        await _reap_after(producer)
        await _reap_after(consumer)
        raise
    return (
        CommandResult(tuple(first), _returncode(producer), b"", first_err),
        CommandResult(tuple(second), _returncode(consumer), second_out, second_err),
    )
