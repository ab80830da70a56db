"""The executor layer's contracts.

`engine/` talks only to these Protocols; `host.factory` picks the FreeBSD or the
Linux implementation once at start-up. Everything that touches the operating
system lives behind them, so the domain code never branches on the platform.

Vocabulary is FreeBSD's: a *dataset* is a ZFS dataset (or its `dir` stand-in),
a *jail* is an isolated process tree named after the container id, a *nullfs*
mount is a bind mount on Linux.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable


class HostError(Exception):
    """A host operation failed; `str(err)` is safe to show to API clients."""


class StorageError(HostError):
    """A dataset operation failed (carries zfs's own message where there is one)."""


class DatasetBusy(StorageError):
    """The dataset has dependent clones (or is in use) and cannot be destroyed."""


class JailError(HostError):
    """Starting, entering, modifying or stopping a jail failed."""


class MountError(HostError):
    """A nullfs/bind or devfs mount or unmount failed."""


# --------------------------------------------------------------------------- storage


@runtime_checkable
class Storage(Protocol):
    """Datasets with snapshots and clones: containerd's snapshotter, ZFS-shaped.

    Dataset names are ZFS-style paths (`<kleene_root>/image/<id>`); a snapshot is
    `dataset@name`. Implementations: `host.zfs.ZfsStorage` (zfs CLI or py-libzfs)
    and `host.dirstore.DirStorage` (plain directories, for hosts without ZFS),
    with `host.overlaystore.OverlayStorage` making its clones overlayfs mounts.
    """

    kind: str  # "zfs" or "dir"

    async def open(self) -> None:
        """At daemon start: make every dataset reachable at its mountpoint."""

    async def close(self) -> None:
        """At daemon stop: release what `open` and clones hold on the host."""

    async def create(self, dataset: str) -> None:
        """Create an empty dataset (parents must exist). Error if it exists."""

    async def destroy(self, dataset: str, *, recursive: bool = True) -> None:
        """Destroy a dataset and (recursive) its snapshots and children.

        Raises DatasetBusy if any other dataset is a clone of one of its
        snapshots. Destroying a dataset that does not exist is an error.
        """

    async def snapshot(self, snapshot: str) -> None:
        """Take `dataset@name`."""

    async def destroy_snapshot(self, snapshot: str) -> None: ...

    async def clone(self, snapshot: str, target: str) -> None:
        """Create `target` as a writable copy-on-write clone of `dataset@name`."""

    async def rollback(self, snapshot: str) -> None:
        """Roll the dataset back to `dataset@name` (newer snapshots are destroyed)."""

    async def rename(self, source: str, target: str) -> None: ...

    async def exists(self, dataset_or_snapshot: str) -> bool: ...

    async def list_snapshots(self, dataset: str) -> list[str]:
        """Full snapshot names (`dataset@name`), oldest first."""

    async def list_children(self, dataset: str) -> list[str]:
        """Direct child datasets, sorted."""

    async def clones_of(self, dataset: str) -> list[str]:
        """Datasets that are clones of any snapshot of `dataset`."""

    async def origin(self, dataset: str) -> str | None:
        """The snapshot a clone was made from, or None."""

    async def mountpoint(self, dataset: str) -> Path: ...

    async def used_space(self, dataset: str) -> int:
        """Bytes used by the dataset itself (ZFS `used`)."""


# --------------------------------------------------------------------------- processes


class OutputStream(Protocol):
    """A subscriber's view of a process's output."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None:
        """Stop receiving; the process is no longer held for this reader."""


@runtime_checkable
class Process(Protocol):
    """A running host-side child whose merged stdout/stderr is fanned out.

    Produced by `host.process.spawn` and by `Jails.start`/`Jails.exec`.
    Output is delivered to every subscriber in order; a slow or absent
    subscriber never blocks the process or the other subscribers.
    """

    pid: int

    def subscribe(self) -> OutputStream:
        """Output chunks from now on, ending when the process's output ends.

        Nothing is lost: a subscriber that falls behind holds the process
        (bounded memory) until it catches up or closes the stream.
        """

    async def write(self, data: bytes) -> None:
        """Write to stdin (or the pty). Silently ignored once the process has ended."""

    async def close_stdin(self) -> None: ...

    async def wait(self) -> int:
        """Exit status: the code, or 128 + N when killed by signal N."""

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


# --------------------------------------------------------------------------- jails


NetworkMode = Literal["host", "new", "disabled"]


@dataclass(frozen=True)
class MountSpec:
    """A nullfs (bind) mount of a host path into a jail's root."""

    source: Path
    target: Path  # absolute host path inside the jail root
    read_only: bool = False


@dataclass
class JailSpec:
    """Everything needed to create a jail with its first process."""

    name: str  # the container id; also the default hostname
    path: Path  # root directory (dataset mountpoint)
    command: Sequence[str]
    user: str = "root"
    env: Sequence[str] = ()  # NAME=value, applied over the clean login environment
    jail_params: Sequence[str] = ()  # user jail(8) parameters, as given
    tty: bool = False
    # FreeBSD: the network parameters of the reference §8.3 (ip4.addr=..., vnet...).
    network_params: Sequence[str] = ()
    # Linux: share the host's network namespace, get a new one (vnet/ipnet), or
    # a new one with only loopback (disabled).
    network_mode: NetworkMode = "host"
    stdin_eof: bool = False  # give the process an stdin that is already at EOF


@dataclass
class ExecSpec:
    """A further process in a running jail."""

    name: str
    command: Sequence[str]
    user: str = "root"
    env: Sequence[str] = ()
    tty: bool = False
    workdir: str | None = None
    stdin_eof: bool = False


@dataclass
class RunningJail:
    name: str
    jid: int  # FreeBSD jid; on Linux the host pid of the jail's pid 1
    path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


# Runs with the host pid of a new jail's pid 1, before the jail's command starts.
BeforeCommand = Callable[[int], Awaitable[None]]


@runtime_checkable
class Jails(Protocol):
    """Isolated process trees named after the container id.

    A jail lives while any process in it lives (FreeBSD semantics), and it
    survives a restart of the daemon: a new daemon process finds it with
    `list_running` and can exec into it and stop it.
    """

    async def start(
        self, spec: JailSpec, *, before_command: BeforeCommand | None = None
    ) -> Process:
        """Create the jail with `spec.command` as its first process.

        The process ends when the command does, as jail(8) returns then; the
        jail itself lives on while anything the command left behind does.
        `before_command(pid)` runs once the jail exists and before the command
        starts, with the host pid of its pid 1 (Linux: moving a veth into the
        jail's network namespace). FreeBSD takes its network set-up as jail
        parameters instead and refuses a hook.
        """

    async def exec(self, spec: ExecSpec) -> Process:
        """Start another process inside a running jail."""

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        """TERM every process in the jail, KILL what is left after `timeout`,
        and return once the jail is gone. Error if it was not running."""

    async def modify(self, name: str, params: Sequence[str]) -> None:
        """Change parameters of a running jail (`jail -m`); JailError if refused."""

    async def is_running(self, name: str) -> bool: ...

    async def list_running(self) -> dict[str, RunningJail]:
        """Every running jail this host knows, by name. One call, no per-jail work."""

    async def wait_stopped(self, name: str) -> None:
        """Return when the jail has ended (used to notice jails ending by themselves)."""


# --------------------------------------------------------------------------- mounts


@runtime_checkable
class Mounts(Protocol):
    async def mount_nullfs(self, source: Path, target: Path, *, read_only: bool = False) -> None:
        """Bind `source` (a directory or a regular file) onto `target`."""

    async def unmount(self, target: Path) -> None: ...

    async def is_mounted(self, target: Path) -> bool: ...

    async def mounted_under(self, root: Path) -> list[Path]:
        """Mount points at or below `root`, deepest first (for cleanup)."""
