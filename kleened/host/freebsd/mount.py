"""nullfs and devfs mounts with mount_nullfs(8), mount(8) and umount(8) (reference §10.3).

Pure functions build the argument vectors and parse `mount --libxo json`;
`FreeBSDMounts` implements the `Mounts` Protocol on an injectable runner.

`mount --libxo json` prints `{"mount": {"mounted": [{"special": ..., "node":
..., "fstype": ..., "opts": [...]}, ...]}}`: `node` is the mount point,
`special` the source (`devfs` for devfs, the source directory for nullfs).
"""

from __future__ import annotations

import os.path
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kleened.host.base import MountError
from kleened.host.freebsd import runner as runner_module
from kleened.host.freebsd.libxo import libxo_list
from kleened.host.freebsd.runner import DEFAULT_TIMEOUT, CommandError, Runner, abnormal_exit

MOUNT = "/sbin/mount"
MOUNT_NULLFS = "/sbin/mount_nullfs"
UMOUNT = "/sbin/umount"


class MountCommandError(MountError):
    """mount_nullfs/mount/umount exited non-zero; keeps the exit code and output."""

    def __init__(self, message: str, *, argv: Sequence[str], returncode: int, output: str):
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


@dataclass(frozen=True)
class MountEntry:
    special: str  # what is mounted: a source directory, "devfs", a dataset
    node: Path  # where
    fstype: str
    opts: tuple[str, ...] = ()


def _path(path: object, what: str) -> str:
    # Paths are always absolute, so none can be mistaken for an option.
    text = os.path.normpath(str(path))
    if "\x00" in text or not PurePosixPath(text).is_absolute():
        raise MountError(f"invalid {what} {str(path)!r}: must be an absolute path")
    return text


def mount_nullfs_argv(source: Path, target: Path, read_only: bool = False) -> list[str]:
    """`/sbin/mount_nullfs [-o ro] <source> <target>`."""
    options = ["-o", "ro"] if read_only else []
    return [MOUNT_NULLFS, *options, _path(source, "mount source"), _path(target, "mount point")]


def mount_devfs_argv(target: Path) -> list[str]:
    """`/sbin/mount -t devfs devfs <target>`, devfs with the default ruleset."""
    return [MOUNT, "-t", "devfs", "devfs", _path(target, "mount point")]


def umount_argv(target: Path) -> list[str]:
    """`/sbin/umount <target>`."""
    return [UMOUNT, _path(target, "mount point")]


def mount_list_argv(fstype: str | None = None) -> list[str]:
    """`/sbin/mount --libxo json [-t <fstype>]`: the mount table as JSON."""
    return [MOUNT, "--libxo", "json", *(["-t", fstype] if fstype else [])]


def _malformed(reason: str) -> MountError:
    return MountError(f"could not parse the output of {MOUNT}: {reason}")


def _entry(item: Any) -> MountEntry:
    if not isinstance(item, dict):
        raise _malformed("a mount entry is not an object")
    node, special, fstype = item.get("node"), item.get("special", ""), item.get("fstype", "")
    if not isinstance(node, str) or not node:
        raise _malformed("a mount entry has no mount point ('node')")
    if not isinstance(special, str) or not isinstance(fstype, str):
        raise _malformed(f"invalid entry for {node}")
    opts = item.get("opts", [])
    if isinstance(opts, str):  # libxo writes a one-element leaf list either way
        opts = [opts]
    if not isinstance(opts, list):
        raise _malformed(f"invalid options for {node}")
    return MountEntry(special=special, node=Path(node), fstype=fstype, opts=tuple(map(str, opts)))


def parse_mount_list(json_text: str) -> list[MountEntry]:
    """Mounted file systems, in the order mount(8) lists them (oldest first)."""
    items = libxo_list(json_text, "mount", "mounted", _malformed)
    return [_entry(item) for item in items]


def is_at_or_below(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def mount_points_under(entries: Sequence[MountEntry], root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first so each can be unmounted in turn.

    A point mounted twice (stacked mounts) appears twice: each needs its own umount.
    """
    base = Path(os.path.normpath(root))
    found = [
        (index, entry.node)
        for index, entry in enumerate(entries)
        if is_at_or_below(Path(os.path.normpath(entry.node)), base)
    ]
    # Deeper first; at equal depth, later mounts first (they sit on top).
    found.sort(key=lambda item: (len(item[1].parts), item[0]), reverse=True)
    return [node for _, node in found]


class FreeBSDMounts:
    """The `Mounts` Protocol with mount_nullfs(8), mount(8) and umount(8)."""

    def __init__(self, *, run: Runner | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._run: Runner = run if run is not None else runner_module.run
        self._timeout = timeout

    async def _checked(self, argv: list[str]) -> str:
        try:
            code, output = await self._run(argv, timeout=self._timeout)
        except CommandError as err:
            raise MountError(str(err)) from err
        # The exit status decides. The original also took any output as a
        # failure (reference §10.3), but a mount that succeeded with a warning
        # is still mounted, and reporting it as failed would hide that.
        if code != 0:
            raise MountCommandError(
                abnormal_exit(argv[0], code, output), argv=argv, returncode=code, output=output
            )
        return output

    async def mount_nullfs(self, source: Path, target: Path, *, read_only: bool = False) -> None:
        await self._checked(mount_nullfs_argv(source, target, read_only))

    async def mount_devfs(self, target: Path) -> None:
        """Not needed for jails (`mount.devfs=true` has jail(8) do it); kept for builds."""
        await self._checked(mount_devfs_argv(target))

    async def unmount(self, target: Path) -> None:
        await self._checked(umount_argv(target))

    async def list_mounts(self, fstype: str | None = None) -> list[MountEntry]:
        return parse_mount_list(await self._checked(mount_list_argv(fstype)))

    async def is_mounted(self, target: Path) -> bool:
        wanted = Path(_path(target, "mount point"))
        return any(Path(os.path.normpath(e.node)) == wanted for e in await self.list_mounts())

    async def mounted_under(self, root: Path) -> list[Path]:
        return mount_points_under(await self.list_mounts(), Path(_path(root, "directory")))
