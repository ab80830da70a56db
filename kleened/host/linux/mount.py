"""nullfs on Linux: bind mounts, read from /proc/self/mountinfo.

`mount_nullfs` is `mount --bind`, then `mount -o remount,bind,ro` for a
read-only mount (a bind mount takes its flags only from a remount). Targets
must exist already (the engine creates them with `files.prepare_mount_target`
after resolving them inside the container root) and must not be symlinks,
since mount(8) would follow one out of the container's root.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from kleened.host import mountinfo
from kleened.host.base import MountError

MOUNT_TIMEOUT = 30.0


def _normalise(path: Path) -> Path:
    """Absolute, with host symlinks in the parents resolved (as mountinfo shows
    them) but not the last component, which is the mount point itself."""
    path = Path(os.path.abspath(path))
    if path == Path("/"):
        return path
    return Path(os.path.realpath(path.parent)) / path.name


async def _run(argv: list[str]) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    except OSError as err:
        raise MountError(f"cannot run {argv[0]}: {err.strerror}") from err
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), MOUNT_TIMEOUT)
    except TimeoutError as err:
        proc.kill()
        await proc.wait()
        raise MountError(f"{argv[0]} timed out") from err
    if proc.returncode != 0:
        text = output.decode(errors="replace").strip()
        raise MountError(text or f"{' '.join(argv)} failed with status {proc.returncode}")


class LinuxMounts:
    """`host.base.Mounts` with bind mounts."""

    async def mount_nullfs(self, source: Path, target: Path, *, read_only: bool = False) -> None:
        try:
            src = os.stat(source)
        except OSError as err:
            raise MountError(f"cannot mount {source}: {err.strerror}") from err
        try:
            dst = os.lstat(target)
        except OSError as err:
            raise MountError(f"cannot mount on {target}: {err.strerror}") from err
        if stat.S_ISLNK(dst.st_mode):
            raise MountError(f"cannot mount on {target}: it is a symbolic link")
        if stat.S_ISDIR(src.st_mode) != stat.S_ISDIR(dst.st_mode) or not (
            stat.S_ISDIR(src.st_mode) or stat.S_ISREG(src.st_mode)
        ):
            raise MountError(
                f"cannot mount {source} on {target}: both must be directories or regular files"
            )
        await _run(["mount", "--bind", "--", str(source), str(target)])
        if read_only:
            try:
                await _run(["mount", "-o", "remount,bind,ro", "--", str(target)])
            except MountError:
                await _run(["umount", "--", str(target)])
                raise

    async def unmount(self, target: Path) -> None:
        await _run(["umount", "--", str(_normalise(target))])

    async def is_mounted(self, target: Path) -> bool:
        return str(_normalise(target)) in mountinfo.mount_points()

    async def mounted_under(self, root: Path) -> list[Path]:
        """Deepest first; a point mounted twice appears twice (the later one first)."""
        found = [
            (point.count("/"), index, point)
            for index, point in enumerate(mountinfo.points_under(str(_normalise(root))))
        ]
        found.sort(reverse=True)
        return [Path(point) for _, _, point in found]
