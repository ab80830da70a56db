"""`dir` storage whose clones are overlayfs mounts (Linux, `storage: overlay`).

A clone is an overlay of the origin snapshot (read-only lower directory) and
an upper directory of its own: creating a container costs a mkdir and a
mount instead of a copy of the image, and its used space is what it wrote,
as with a ZFS clone. On file systems where every inode costs (this project's
VMs: ~0.5 ms per symlink), copying even a 2 MB busybox tree took 20-200 ms;
see benchmarks/ row 6.

Everything else is `DirStorage`: snapshots and rollbacks are copies (of the
merged view), the layout and metadata file are the same, and a layered clone
has `layered: true` in the metadata with its layers in
`<base>/.snapshots/<dataset>/.layer/{upper,work}`, so destroy and rename carry
them along. Mounts live as long as the daemon: `open()` mounts every layered
dataset, `close()` unmounts those with nothing mounted on top (a running jail
keeps its own reference in its mount namespace). A path overlayfs cannot take
in its options (a `,` or `:`) gets a plain copy instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from kleened.host.base import StorageError
from kleened.host.dirstore import LAYER_DIR, DirStorage, _Dataset, _split, disk_usage
from kleened.host.mountinfo import mounts_under
from kleened.host.zfs import check_dataset, check_snapshot

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
UNSAFE_IN_OPTIONS = (",", ":", "\\")


class OverlayStorage(DirStorage):
    kind = "dir"  # the same layout, database location and refusals as `dir`

    def _layers(self, dataset: str) -> tuple[Path, Path]:
        layer = self._hidden / dataset / LAYER_DIR
        return layer / "upper", layer / "work"

    def _mount_argv(self, dataset: str) -> list[str]:
        origin = self._datasets[dataset].origin
        assert origin is not None
        upper, work = self._layers(dataset)
        lower = self._snapshot_path(origin)
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        return ["mount", "-t", "overlay", "overlay", "-o", options, str(self._path(dataset))]

    async def _unmount(self, name: str) -> None:
        argv = ["umount", str(self._path(name))]
        await self._must(argv, timeout=MOUNT_TIMEOUT, failure=f"cannot unmount '{name}'")

    def _is_mounted(self, dataset: str) -> bool:
        return os.path.realpath(self._path(dataset)) in mounts_under(self._path(dataset))

    async def _mount(self, name: str) -> None:
        failure = f"cannot mount '{name}'"
        await self._must(self._mount_argv(name), timeout=MOUNT_TIMEOUT, failure=failure)

    async def _attach(self, names: list[str]) -> None:
        for name in self._layered(names):
            if not self._is_mounted(name):
                await self._mount(name)

    async def _detach(self, names: list[str]) -> None:
        # deepest first: a layered child is mounted inside its parent
        for name in sorted(self._layered(names), key=len, reverse=True):
            if self._is_mounted(name):
                await self._unmount(name)

    # ----------------------------------------------------------------- Storage

    async def clone(self, snapshot: str, target: str) -> None:
        dataset, name = _split(check_snapshot(snapshot))
        check_dataset(target)
        paths = (self._snapshot_path(snapshot), self._path(target), self._hidden / target)
        if any(mark in str(path) for path in paths for mark in UNSAFE_IN_OPTIONS):
            await super().clone(snapshot, target)
            return
        async with self._changing("clone", snapshot):
            entry = self._datasets.get(dataset)
            if entry is None or name not in entry.snapshots:
                raise StorageError(f"cannot open '{snapshot}': snapshot does not exist")
            path = self._check_new(target, "create")
            upper, work = self._layers(target)
            upper.mkdir(parents=True)
            work.mkdir()
            path.mkdir(mode=0o755, exist_ok=True)
            self._datasets[target] = _Dataset(origin=snapshot, layered=True)
            try:
                await self._mount(target)  # a new, empty directory: nothing is there yet
            except BaseException:
                del self._datasets[target]
                await self._remove(self._hidden / target)
                path.rmdir()
                raise
            self._save()

    async def used_space(self, dataset: str) -> int:
        entry = self._get(check_dataset(dataset))
        if not entry.layered:
            return await super().used_space(dataset)
        upper, _ = self._layers(dataset)
        return await asyncio.to_thread(disk_usage, upper, self._child_names(dataset))

    async def open(self) -> None:
        """Mount every layered dataset (after a reboot, or a daemon that was killed).
        One that cannot be mounted is logged and left: the others still serve."""
        async with self._lock:
            for name in sorted(self._layered(sorted(self._datasets)), key=len):
                try:
                    await self._attach([name])
                except StorageError as err:
                    log.error("%s", err)

    async def close(self) -> None:
        """Unmount the layered datasets nothing else is mounted on (shutdown)."""
        async with self._lock:
            for name in sorted(self._layered(sorted(self._datasets)), key=len, reverse=True):
                own = os.path.realpath(self._path(name))
                points = mounts_under(self._path(name))
                # mounted, and nothing mounted inside it
                if own in points and all(point == own for point in points):
                    try:
                        await self._unmount(name)
                    except StorageError:
                        continue  # busy: it stays, and open() finds it mounted
