"""Linux jails: pid, mount, uts, ipc (and net) namespaces around a C pid 1.

`kleened-reaper` (reaper.c, built by `reaper.py`) does the work in one exec:

* `start` makes the spawned process the jail's *monitor*. It clones pid 1
  into new namespaces; pid 1 mounts /proc and a private /dev, sets the
  hostname, pivots into the jail's root, runs the command as the user found in
  the jail's own /etc/passwd, and lives until no process is left in the jail,
  so a jail lives as long as FreeBSD's would. The monitor relays the jail's
  output to the daemon. As with jail(8), the daemon sees the first process
  end when the *command* ends (its status, or 128+signal), not when the jail
  does: the monitor reports the status on a separate pipe and stops relaying,
  and stays, dropping later output, until the jail is empty. When the daemon
  goes away the monitor drops the output instead of letting SIGPIPE kill the
  jail.
* `exec` enters a running jail's namespaces and root (setns, no nsenter) and
  runs a command there, staying outside to forward signals: SIGTERM reaches
  the command and a SIGKILLed helper takes the command with it, as with jexec.

Each running jail has a state file `<state_dir>/<name>.json` with the host pid
of its pid 1 and that process's start time (a guard against pid reuse), so a
new daemon process finds, enters and stops the jails a previous one started.

With a tty, the pty comes from the jail's own devpts instance (opened inside
the jail, the master passed back over a socket), so `tty` in the jail prints
`/dev/pts/N`; the monitor or exec helper relays it to plain pipes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kleened.host.base import (
    BeforeCommand,
    ExecSpec,
    HostError,
    JailError,
    JailSpec,
    OutputStream,
    RunningJail,
)
from kleened.host.linux.reaper import ensure_reaper
from kleened.host.process import SpawnedProcess, spawn

NETWORK_MODES = ("host", "new", "disabled")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
ENV_RE = re.compile(r"^[^=\0]+=[^\0]*$")
HOSTNAME_MAX = 64
# The helpers run with this environment only; the jail's clean one is built by reaper.c.
HELPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
# reaper.c takes the jail's own entries from these variables: not from argv, where
# `ps` would show them to every user, and inert to a dynamic loader.
JAIL_ENV_PREFIX = "KLEENED_JAIL_ENV_"
HANDSHAKE_TIMEOUT = 60.0  # set-up, including a `before_command` hook
HELPER_TIMEOUT = 10.0  # short helper commands (hostname) and waiting for a failed helper
KILL_WAIT = 10.0  # after SIGKILL to pid 1 the kernel empties the namespace promptly
MONITOR_WAIT = 5.0


class FirstProcess:
    """The jail's first process: the monitor, but ending with the command.

    `wait()` gives the status the monitor writes on the exit pipe once the
    command has ended and its output has been relayed; if the monitor ends
    first (the jail ended with the command, or the monitor was signalled and
    detached), its own status, which is then the command's or 128+signal.
    """

    def __init__(self, monitor: SpawnedProcess, exit_fd: int) -> None:
        self._monitor = monitor
        self.pid = monitor.pid
        self._status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._follow(exit_fd))

    async def _follow(self, exit_fd: int) -> None:
        reading = False

        async def reported() -> int | None:
            nonlocal reading
            reading = True  # from here on _lines owns (and closes) the fd
            async for line in _lines(exit_fd):
                if line.strip().isdigit():
                    return int(line)
            return None

        report = asyncio.ensure_future(reported())
        exited = asyncio.ensure_future(self._monitor.wait())
        done, _ = await asyncio.wait({report, exited}, return_when=asyncio.FIRST_COMPLETED)
        code = report.result() if report in done else None
        if code is None:
            code = await exited
        # a detached copy of the monitor may hold the pipe open for good
        for task in (report, exited):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not reading:
            os.close(exit_fd)
        self._status.set_result(code)

    def subscribe(self) -> OutputStream:
        return self._monitor.subscribe()

    async def write(self, data: bytes) -> None:
        await self._monitor.write(data)

    async def close_stdin(self) -> None:
        await self._monitor.close_stdin()

    async def wait(self) -> int:
        return await asyncio.shield(self._status)

    @property
    def returncode(self) -> int | None:
        return self._status.result() if self._status.done() else None

    def send_signal(self, sig: int) -> None:
        # Once the command has ended the monitor belongs to the jail, not to it.
        if not self._status.done():
            self._monitor.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class JailState:
    """What a daemon needs to find a jail again; one JSON file per jail."""

    name: str
    pid: int  # host pid of the jail's pid 1 (the reaper)
    starttime: int  # /proc/<pid>/stat field 22, to tell pid 1 from a reused pid
    monitor_pid: int
    monitor_starttime: int
    root: str
    network_mode: str
    hostname: str
    started_at: float


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a host pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def _alive(pid: int, starttime: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == starttime and stat[0] not in ("Z", "X")


def _open_pidfd(pid: int, starttime: int) -> int | None:
    """A pidfd for the process if it is still the one we recorded."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # checked after opening: the fd then surely refers to the recorded process
    if not _alive(pid, starttime):
        os.close(fd)
        return None
    return fd


async def _wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait for a pidfd to report the exit; False on timeout."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


async def _lines(fd: int) -> AsyncIterator[str]:
    """Lines from a pipe until EOF, read without blocking the loop (takes the fd)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        while line := await reader.readline():
            yield line.decode(errors="replace").rstrip("\n")
    finally:
        transport.close()


def _start_options(spec: JailSpec) -> tuple[str, bool]:
    """(hostname, mount /dev?) from the jail parameters that mean something here."""
    hostname, devfs = spec.name, True
    for param in spec.jail_params:
        name, sep, value = param.partition("=")
        if name == "host.hostname" and sep:
            hostname = value
        elif name == "mount.nodevfs":
            devfs = False
        elif name == "mount.devfs":
            devfs = value.lower() not in ("false", "0", "no")
        # Other jail(8) parameters have no Linux meaning at start and are ignored.
    return hostname, devfs


def _helper_env(entries: Sequence[str]) -> dict[str, str]:
    env = dict(HELPER_ENV)
    env.update({f"{JAIL_ENV_PREFIX}{i:05d}": entry for i, entry in enumerate(entries)})
    return env


def _check_name(name: str) -> None:
    # names become file names in the state directory
    if not NAME_RE.match(name):
        raise JailError(f"invalid jail name '{name}'")


def _check_hostname(hostname: str) -> None:
    if not hostname or len(hostname.encode()) > HOSTNAME_MAX or "\0" in hostname:
        raise JailError(f"invalid hostname '{hostname}'")


def _check_command(command: Sequence[str], env: Sequence[str]) -> None:
    if not command or not command[0]:
        raise JailError("no command given")
    if any("\0" in arg for arg in command):
        raise JailError("the command contains a NUL byte")
    for entry in env:
        if not ENV_RE.match(entry):
            raise JailError(f"invalid environment entry '{entry}': expected NAME=value")


class LinuxJails:
    """`host.base.Jails` on Linux.

    `state_dir` holds one state file per running jail (a tmpfs such as
    /run/kleened/jails is right: jails do not survive a reboot either);
    `libexec_dir` caches the compiled reaper. `reaper` points at a prebuilt
    binary instead (packaging).
    """

    def __init__(self, state_dir: Path, libexec_dir: Path, *, reaper: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.libexec_dir = Path(libexec_dir)
        self._reaper = Path(reaper) if reaper is not None else None

    async def reaper(self) -> Path:
        """The helper binary, compiled on first use if needed."""
        if self._reaper is None:
            try:
                self._reaper = await ensure_reaper(self.libexec_dir)
            except OSError as err:
                raise JailError(f"cannot build kleened-reaper: {err}") from err
        return self._reaper

    # ------------------------------------------------------------ state files

    def _state_path(self, name: str) -> Path:
        _check_name(name)
        return self.state_dir / f"{name}.json"

    def _load(self, name: str) -> JailState | None:
        try:
            return JailState(**json.loads(self._state_path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, state: JailState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._state_path(state.name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, path)

    def _forget(self, state: JailState) -> None:
        """Remove the state file, unless it already describes a newer jail."""
        current = self._load(state.name)
        if current is not None and (current.pid, current.starttime) == (
            state.pid,
            state.starttime,
        ):
            with contextlib.suppress(FileNotFoundError):
                self._state_path(state.name).unlink()

    def _running(self, name: str) -> JailState | None:
        state = self._load(name)
        if state is None:
            return None
        if not _alive(state.pid, state.starttime):
            self._forget(state)
            return None
        return state

    def _require_running(self, name: str) -> JailState:
        state = self._running(name)
        if state is None:
            raise JailError(f"jail '{name}' is not running")
        return state

    def jail_pid(self, name: str) -> int | None:
        """Host pid of the jail's pid 1 (for moving interfaces into its netns)."""
        state = self._running(name)
        return state.pid if state is not None else None

    # ------------------------------------------------------------ queries

    async def is_running(self, name: str) -> bool:
        return self._running(name) is not None

    async def list_running(self) -> dict[str, RunningJail]:
        found: dict[str, RunningJail] = {}
        try:
            entries = sorted(self.state_dir.glob("*.json"))
        except OSError:
            return found
        for path in entries:
            state = self._running(path.stem) if NAME_RE.match(path.stem) else None
            if state is None:
                continue
            found[state.name] = RunningJail(
                name=state.name,
                jid=state.pid,
                path=Path(state.root),
                extra={
                    "network_mode": state.network_mode,
                    "hostname": state.hostname,
                    "monitor_pid": str(state.monitor_pid),
                },
            )
        return found

    # ------------------------------------------------------------ start

    async def start(
        self, spec: JailSpec, *, before_command: BeforeCommand | None = None
    ) -> FirstProcess:
        """Create the jail with `spec.command` as its first process.

        `before_command(pid)` (optional) runs once the namespaces exist and
        before the command starts, with the host pid of the jail's pid 1:
        the place to move a veth into a "new" network namespace.
        """
        _check_name(spec.name)
        _check_command(spec.command, spec.env)
        if spec.network_mode not in NETWORK_MODES:
            raise JailError(f"invalid network mode '{spec.network_mode}'")
        root = Path(os.path.realpath(spec.path))
        if not root.is_dir():
            raise JailError(f"jail path '{spec.path}' is not a directory")
        hostname, devfs = _start_options(spec)
        _check_hostname(hostname)
        if self._running(spec.name) is not None:
            raise JailError(f"jail '{spec.name}' is already running")
        binary = await self.reaper()

        sync_r, sync_w = os.pipe()
        exit_r, exit_w = os.pipe()
        go_r, go_w = os.pipe() if before_command is not None else (None, None)
        argv = [str(binary), "start", "--sync-fd", str(sync_w), "--exit-fd", str(exit_w)]
        argv += ["--root", str(root)]
        argv += ["--hostname", hostname, "--net", spec.network_mode, "--user", spec.user or "root"]
        if spec.tty:
            argv.append("--tty")
        if not devfs:
            argv.append("--no-dev")
        if go_r is not None:
            argv += ["--go-fd", str(go_r)]
        argv += ["--", *spec.command]
        passed = [sync_w, exit_w] if go_r is None else [sync_w, exit_w, go_r]
        try:
            # the monitor ends the output itself, when the command has ended
            process = await spawn(
                argv,
                env=_helper_env(spec.env),
                stdin_eof=spec.stdin_eof,
                pass_fds=passed,
                linger=False,
            )
        except HostError as err:
            for fd in (sync_r, exit_r, go_w):
                if fd is not None:
                    os.close(fd)
            raise JailError(str(err)) from err
        finally:
            for fd in passed:
                os.close(fd)

        pid: int | None = None
        state: JailState | None = None
        error: str | None = None
        hook_error: BaseException | None = None
        setup_done = False

        async def release() -> None:
            """pid 1 waits set up for the go byte: run the hook, then let it go."""
            nonlocal go_w, hook_error
            assert go_w is not None and pid is not None
            try:
                if before_command is not None:
                    await before_command(pid)
                os.write(go_w, b"g")
            except Exception as err:  # the jail must not run half set up
                hook_error = err
            finally:
                os.close(go_w)  # closed without a byte: pid 1 aborts
                go_w = None

        async def on_line(kind: str, text: str) -> None:
            nonlocal pid, state, error, setup_done
            if kind == "P":
                pid = int(text)
                # pid 1 of a quick command may be gone already: no state then
                state = self._record(spec, root, hostname, pid, process)
            elif kind == "E" and error is None:
                error = text
            elif kind == "S":
                setup_done = True
            # P and S come from two processes: S may be read first
            if setup_done and pid is not None and go_w is not None:
                await release()

        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                async for line in _lines(sync_r):
                    await on_line(line[:1], line[1:])
        except BaseException:
            os.close(exit_r)
            await self._abandon(process, state)
            raise
        finally:
            if go_w is not None:
                os.close(go_w)
        if error is not None or hook_error is not None or pid is None:
            os.close(exit_r)
            await self._abandon(process, state)
            if hook_error is not None:
                raise JailError(f"jail set-up failed: {hook_error}") from hook_error
            if error is None:
                error = f"the jail's reaper ended early with status {process.returncode}"
            raise JailError(error)
        return FirstProcess(process, exit_r)

    def _record(
        self, spec: JailSpec, root: Path, hostname: str, pid: int, monitor: SpawnedProcess
    ) -> JailState | None:
        init = _proc_stat(pid)
        watcher = _proc_stat(monitor.pid)
        if init is None:
            return None
        state = JailState(
            name=spec.name,
            pid=pid,
            starttime=init[1],
            monitor_pid=monitor.pid,
            monitor_starttime=watcher[1] if watcher else 0,
            root=str(root),
            network_mode=spec.network_mode,
            hostname=hostname,
            started_at=time.time(),
        )
        self._save(state)
        return state

    async def _abandon(self, process: SpawnedProcess, state: JailState | None) -> None:
        """A start that failed or was cancelled: leave no jail, process or state behind."""
        if state is not None:
            pidfd = _open_pidfd(state.pid, state.starttime)
            if pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                await _wait_readable(pidfd, KILL_WAIT)
                os.close(pidfd)
            self._forget(state)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), HELPER_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()

    # ------------------------------------------------------------ exec

    async def exec(self, spec: ExecSpec) -> SpawnedProcess:
        _check_command(spec.command, spec.env)
        state = self._require_running(spec.name)
        binary = await self.reaper()
        sync_r, sync_w = os.pipe()
        argv = [str(binary), "exec", "--sync-fd", str(sync_w), "--pid", str(state.pid)]
        argv += ["--starttime", str(state.starttime), "--user", spec.user or "root"]
        if spec.workdir:
            argv += ["--workdir", spec.workdir]
        if spec.tty:
            argv.append("--tty")
        argv += ["--", *spec.command]
        try:
            process = await spawn(
                argv, env=_helper_env(spec.env), stdin_eof=spec.stdin_eof, pass_fds=[sync_w]
            )
        except HostError as err:
            os.close(sync_r)
            raise JailError(str(err)) from err
        finally:
            os.close(sync_w)
        error = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                async for line in _lines(sync_r):
                    if line.startswith("E") and error is None:
                        error = line[1:]
        except BaseException:
            await self._abandon(process, None)
            raise
        if error is not None:
            await self._abandon(process, None)
            raise JailError(error)
        return process

    # ------------------------------------------------------------ stop, wait

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM to pid 1, which passes it to every process in the jail; after
        `timeout`, SIGKILL to pid 1, which takes the whole namespace with it."""
        state = self._require_running(name)
        pidfd = _open_pidfd(state.pid, state.starttime)
        if pidfd is not None:
            try:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                    gone = await _wait_readable(pidfd, timeout)
                    if not gone:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        gone = await _wait_readable(pidfd, KILL_WAIT)
                except ProcessLookupError:
                    gone = True
                if not gone:
                    raise JailError(f"jail '{name}' did not stop")
            finally:
                os.close(pidfd)
        # The monitor follows pid 1 within moments; wait so nothing is left behind.
        monitor = _open_pidfd(state.monitor_pid, state.monitor_starttime)
        if monitor is not None:
            try:
                await _wait_readable(monitor, MONITOR_WAIT)
            finally:
                os.close(monitor)
        self._forget(state)

    async def wait_stopped(self, name: str) -> None:
        state = self._running(name)
        if state is None:
            return
        pidfd = _open_pidfd(state.pid, state.starttime)
        if pidfd is not None:
            try:
                await _wait_readable(pidfd, None)
            finally:
                os.close(pidfd)
        self._forget(state)

    # ------------------------------------------------------------ modify

    async def modify(self, name: str, params: Sequence[str]) -> None:
        """Only `host.hostname=` can change on a running Linux jail."""
        hostnames = []
        for param in params:
            key, sep, value = param.partition("=")
            if key != "host.hostname" or not sep:
                raise JailError(f"jail parameter '{key}' cannot be changed on Linux")
            _check_hostname(value)
            hostnames.append(value)
        state = self._require_running(name)
        if not hostnames:
            return
        binary = await self.reaper()
        hostname = hostnames[-1]
        argv = [str(binary), "hostname", "--pid", str(state.pid)]
        argv += ["--starttime", str(state.starttime), "--", hostname]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=HELPER_ENV,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as err:
            raise JailError(f"cannot run kleened-reaper: {err.strerror}") from err
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), HELPER_TIMEOUT)
        except TimeoutError as err:
            proc.kill()
            await proc.wait()
            raise JailError("timed out setting the hostname") from err
        if proc.returncode != 0:
            message = output.decode(errors="replace").strip().removeprefix("kleened-reaper: ")
            raise JailError(message or f"cannot set the hostname of jail '{name}'")
        state.hostname = hostname
        self._save(state)
