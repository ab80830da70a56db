"""Child processes whose output is streamed to any number of subscribers.

`spawn` starts a host-side child with stdout and stderr merged into one pipe
(or, with `tty=True`, a pseudo-terminal allocated here, no helper binary) and
returns a `SpawnedProcess`, the `host.base.Process` of both platforms.

Reading never blocks the event loop (`loop.add_reader` on non-blocking fds).
A subscriber gets every byte from the moment it subscribes: when one falls
`buffer_limit` bytes behind, reading stops (the pipe fills and the process
waits, as it would writing to a slow terminal) until it has caught up by
half, so a slow client costs bounded memory and loses nothing. A subscriber
that is closed or dropped no longer holds the process. Output produced before
anybody subscribed is kept, drop-oldest within the same bound, and given to
the first subscriber, because callers typically subscribe a moment after the
start and a quick command (`echo hi`) would otherwise be lost; a process
nobody attaches to (a detached exec) is never held.

The exit is noticed through a pidfd, so no thread waits per child and the
child is reaped as soon as it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import termios
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kleened.host.base import HostError

DEFAULT_BUFFER_LIMIT = 1 << 20  # how far a subscriber may fall behind before reading pauses
READ_SIZE = 65536
EOF_CHAR = b"\x04"  # what closing stdin means on a terminal (VEOF, ^D)
# After the child exits, its output is read until EOF, or until it has been idle
# this long, or at most LINGER_MAX: a process it left in the background may hold
# the pipe for good (`sh -c 'daemon & echo started'`), and jail(8)/jexec callers
# see the command end when the command does.
LINGER_IDLE = 0.1
LINGER_MAX = 2.0


class _Subscription:
    """One subscriber's queue: an async iterator of output chunks.

    With `on_drained` it is lossless: the fanout stops reading while it is
    `full` and `on_drained` tells it when it has caught up. Without, it keeps
    the newest `limit` bytes (the buffer before anybody subscribed).
    """

    def __init__(self, limit: int, on_drained: Callable[[], None] | None = None) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._on_drained = on_drained
        self.dropped = 0  # bytes lost by falling behind (only without on_drained)

    @property
    def full(self) -> bool:
        return self._on_drained is not None and self._size > self._limit

    def _push(self, chunk: bytes) -> None:
        if self._ended:  # closed by its reader
            return
        if self._on_drained is not None:
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._wake()
            return
        if len(chunk) > self._limit:
            self.dropped += len(chunk) - self._limit
            chunk = chunk[-self._limit :]
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size > self._limit:
            old = self._chunks.popleft()
            self._size -= len(old)
            self.dropped += len(old)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._on_drained is not None and self._size <= self._limit // 2:
            self._on_drained()
        return chunk

    async def aclose(self) -> None:
        """Stop receiving (an abandoned subscription is also dropped when collected)."""
        self._chunks.clear()
        self._size = 0
        self._end()
        if self._on_drained is not None:
            self._on_drained()


class OutputFanout:
    """Delivers every chunk to every live subscription, in order, never blocking.

    `pause()` is called when a subscription falls too far behind and
    `resume()` once none is; the owner stops and restarts reading.
    """

    def __init__(
        self,
        limit: int = DEFAULT_BUFFER_LIMIT,
        *,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._limit = limit
        self._subscriptions: weakref.WeakSet[_Subscription] = weakref.WeakSet()
        # Output from before the first subscriber, handed to that subscriber.
        self._early: _Subscription | None = _Subscription(limit)
        self._pause, self._resume = pause, resume
        self.paused = False
        self.ended = False

    def publish(self, chunk: bytes) -> None:
        if self._early is not None:
            self._early._push(chunk)
        subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            sub._push(chunk)
        if not self.paused and any(sub.full for sub in subscriptions):
            self.paused = True
            self._pause()

    def _drained(self) -> None:
        if self.paused and not any(sub.full for sub in list(self._subscriptions)):
            self.paused = False
            self._resume()

    def end(self) -> None:
        self.ended = True
        if self._early is not None:
            self._early._end()
        for sub in list(self._subscriptions):
            sub._end()

    def subscribe(self) -> _Subscription:
        if self._early is not None:
            sub, self._early = self._early, None
            sub._on_drained = self._drained
        else:
            sub = _Subscription(self._limit, self._drained)
            if self.ended:
                sub._end()
        self._subscriptions.add(sub)
        # a subscriber dropped without aclose() must not hold the process
        weakref.finalize(sub, self._drained)
        return sub


def _exit_status(returncode: int) -> int:
    """Popen's -N for "killed by signal N" becomes the shell's 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class SpawnedProcess:
    """A running child with fanned-out output; implements `host.base.Process`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        out_fd: int,
        in_fd: int | None,
        tty: bool,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        linger: bool = True,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._linger = linger
        self._last_output = 0.0
        self._exit_time = 0.0
        self._popen = popen
        self.pid = popen.pid
        self.tty = tty
        self._fanout = OutputFanout(
            buffer_limit, pause=self._pause_reading, resume=self._resume_reading
        )
        self._out_fd: int | None = out_fd
        self._in_fd = in_fd
        self._write_lock = asyncio.Lock()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._output_done: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(out_fd, False)
        if in_fd is not None:
            os.set_blocking(in_fd, False)
        self._loop.add_reader(out_fd, self._on_output)
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._on_exit)
            self._on_exit()  # it may be gone already
        else:  # FreeBSD: no pidfd; one small thread blocks in waitpid instead
            threading.Thread(target=self._wait_in_thread, daemon=True).start()

    # ----------------------------------------------------------------- output

    def _on_output(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One read of the output: published, or the end noticed. True if data came."""
        if self._out_fd is None or self._output_done.done():
            return False
        try:
            data = os.read(self._out_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            # EIO from a pty master: every slave is closed, the output has ended.
            if err.errno != errno.EIO:
                self._fanout.publish(f"\n[output error: {err.strerror}]\n".encode())
            data = b""
        if data:
            self._last_output = self._loop.time()
            self._fanout.publish(data)
            return True
        self._close_output()
        return False

    def _pause_reading(self) -> None:
        if self._out_fd is not None:
            self._loop.remove_reader(self._out_fd)

    def _resume_reading(self) -> None:
        if self._out_fd is not None and not self._output_done.done():
            self._loop.add_reader(self._out_fd, self._on_output)

    def _close_output(self) -> None:
        if self._out_fd is None or self._output_done.done():
            return
        self._loop.remove_reader(self._out_fd)
        self._fanout.end()
        self._output_done.set_result(None)
        # A pty master is closed only once the child is reaped: a program that
        # closes its terminal just before exiting (GNU cat does) would otherwise
        # get the hangup's SIGHUP and end with 129 instead of its own status.
        if not self.tty or self._exited.done():
            self._release_output()

    def _release_output(self) -> None:
        if self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None
        if self.tty:  # the master is also the input: nothing can be written any more
            self._close_input()

    def subscribe(self) -> _Subscription:
        return self._fanout.subscribe()

    async def output_ended(self) -> None:
        """Return once the output has reached its end (all subscribers are told too)."""
        await asyncio.shield(self._output_done)

    # ----------------------------------------------------------------- input

    def _close_input(self) -> None:
        if self._in_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self._in_fd)
            os.close(self._in_fd)
            self._in_fd = None

    async def _writable(self, fd: int) -> None:
        ready = self._loop.create_future()
        self._loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            # The process's end closes the input; don't wait past it.
            await asyncio.wait({ready, self._exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._in_fd == fd:
                self._loop.remove_writer(fd)

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            view = memoryview(data)
            while view and self._in_fd is not None:
                try:
                    written = os.write(self._in_fd, view)
                except (BlockingIOError, InterruptedError):
                    if self._exited.done():
                        return  # a full terminal nobody reads any more
                    await self._writable(self._in_fd)
                    continue
                except OSError:  # EPIPE/EIO: the reader is gone; writes are ignored now
                    self._close_input()
                    return
                view = view[written:]

    async def close_stdin(self) -> None:
        """End the input: close the pipe, or on a terminal send its EOF character."""
        if self.tty:
            await self.write(EOF_CHAR)
            return
        async with self._write_lock:
            self._close_input()

    # ----------------------------------------------------------------- exit

    def _wait_in_thread(self) -> None:
        self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self._popen.poll() is None:
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self.tty:
            self._close_input()  # later writes are silently ignored
        elif self._output_done.done():
            self._release_output()
        assert self._popen.returncode is not None
        if not self._exited.done():
            self._exited.set_result(_exit_status(self._popen.returncode))
            if self._linger and not self._output_done.done():
                self._exit_time = self._loop.time()
                self._check_linger()

    def _check_linger(self) -> None:
        """End the output of an exited child once it has gone quiet."""
        if self._output_done.done():
            return
        now = self._loop.time()
        if self._fanout.paused:
            # Waiting for a slow reader is not silence: the clocks stand still.
            self._exit_time += LINGER_IDLE
            self._last_output = now
            self._loop.call_later(LINGER_IDLE, self._check_linger)
            return
        quiet_at = max(self._last_output, self._exit_time) + LINGER_IDLE
        deadline = self._exit_time + LINGER_MAX
        if now >= quiet_at or now >= deadline:
            self._drain()
            self._close_output()
            return
        self._loop.call_later(min(quiet_at, deadline) - now, self._check_linger)

    def _drain(self) -> None:
        """Publish what is already in the pipe (a bounded amount: a background
        writer may keep it full) before it is closed."""
        for _ in range(16):
            if not self._read_once():
                return

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def send_signal(self, sig: int) -> None:
        # Until we reap it the pid cannot be reused, so this never hits a stranger.
        if self.returncode is None:
            self._popen.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --------------------------------------------------------------------- spawning


def _configure_tty(fd: int) -> None:
    """What kleened_pty did (§8.5): no `\\n` -> `\\r\\n` on output, VMIN=1, VTIME=0."""
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.ONLCR
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _controlling_tty(then: Callable[[], object] | None) -> Callable[[], None]:
    def preexec() -> None:
        # start_new_session already made us a session leader; fd 0 is the slave.
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if then is not None:
            then()

    return preexec


async def spawn(
    argv: Sequence[str],
    *,
    tty: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdin_eof: bool = False,
    preexec: Callable[[], object] | None = None,
    pass_fds: Sequence[int] = (),
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    linger: bool = True,
) -> SpawnedProcess:
    """Start `argv` with streamed output.

    Without `tty`, stdin is a pipe (`/dev/null` with `stdin_eof`) and stdout
    and stderr share one pipe. With `tty`, a pty pair is allocated here and the
    slave becomes the child's controlling terminal and its fds 0-2. The child
    always gets a new session, so a terminal the daemon runs in never signals
    it. `preexec` runs in the child just before exec; `pass_fds` stay open in it.
    With `linger` (the default) the output ends shortly after the child exits
    even if a background process still holds it; without, only at EOF.
    """
    if not argv:
        raise HostError("no command given")
    child_fds: list[int] = []
    ours: list[int] = []
    try:
        if tty:
            master, slave = os.openpty()
            ours.append(master)
            child_fds.append(slave)
            _configure_tty(slave)
            out_fd, in_fd = master, os.dup(master)
            ours.append(in_fd)
            stdin: int = slave
            stdout: int = slave
            stderr: int = slave
            preexec_fn: Callable[[], object] | None = _controlling_tty(preexec)
        else:
            out_fd, out_w = os.pipe()
            ours.append(out_fd)
            child_fds.append(out_w)
            stdout, stderr = out_w, subprocess.STDOUT
            if stdin_eof:
                stdin, in_fd = subprocess.DEVNULL, None
            else:
                in_r, in_fd = os.pipe()
                ours.append(in_fd)
                child_fds.append(in_r)
                stdin = in_r
            preexec_fn = preexec
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    except (OSError, subprocess.SubprocessError) as err:
        for fd in ours:
            os.close(fd)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise HostError(f"cannot run {argv[0]}: {reason}") from err
    finally:
        for fd in child_fds:
            os.close(fd)
    return SpawnedProcess(
        popen, out_fd=out_fd, in_fd=in_fd, tty=tty, buffer_limit=buffer_limit, linger=linger
    )
