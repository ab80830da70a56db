"""File operations inside a container's root, done safely from the host.

A container's root is untrusted: a symlink in it may point anywhere. Paths
inside it are therefore resolved component by component as the jail would see
them (an absolute link restarts at the container root, `..` never climbs
above it), so the host never writes outside the root on a container's behalf.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path, PurePosixPath

from kleened.host.base import HostError

MAX_SYMLINKS = 40


class UnsafePath(HostError):
    pass


def safe_join(root: Path, inner: str) -> Path:
    """The host path of `inner` (an absolute path inside the jail) under `root`.

    Refuses relative paths and `..` components outright; symlinks met on the way
    are followed as the jail would follow them, confined to `root`.
    """
    if not inner.startswith("/"):
        raise UnsafePath(f"'{inner}' is not an absolute path")
    if ".." in PurePosixPath(inner).parts:
        raise UnsafePath(f"'{inner}' must not contain '..'")
    root = root.resolve()
    parts = list(PurePosixPath(inner).parts[1:])
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise UnsafePath(f"too many symbolic links in '{inner}'")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                current = root
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
            continue
        current = candidate
    return current


def _prepare_target(source: Path, target: Path) -> None:
    try:
        st = source.stat()
    except OSError as err:
        # [exact] (sic) the original's wording
        raise HostError(
            f"error ocurred while determining source type: {err.strerror.lower()}"
        ) from err
    if stat.S_ISDIR(st.st_mode):
        target.mkdir(parents=True, exist_ok=True)
    elif stat.S_ISREG(st.st_mode):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.touch(exist_ok=True)
        except OSError as err:
            raise HostError(f"could not create destination file: {err.strerror}") from err
    else:
        raise HostError("could not determine source type, must be either directory or regular file")


async def prepare_mount_target(source: Path, target: Path) -> None:
    """Create the mount point for `source` (a directory or a regular file)."""
    await asyncio.to_thread(_prepare_target, source, target)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _copy_contents(source: Path, target: Path) -> None:
    for entry in source.iterdir():
        dest = target / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dest, follow_symlinks=False)


async def populate_volume(image_dir: Path, volume_dir: Path) -> bool:
    """Pre-fill an empty volume from the image's directory, dotfiles included.

    The original copied even into volumes that had content and skipped
    dotfiles (reference §10.2); we copy only into an empty volume.
    """
    if not image_dir.is_dir() or _is_empty_dir(image_dir) or not _is_empty_dir(volume_dir):
        return False
    await asyncio.to_thread(_copy_contents, image_dir, volume_dir)
    return True
