"""`Storage` on plain directories, for hosts without ZFS (Linux development, CI).

Layout under the base directory:

    <base>/<dataset>                      the dataset's files (its mountpoint);
                                          a child dataset `a/b` is the directory
                                          `b` inside `a`, as ZFS mounts it
    <base>/.snapshots/<dataset>@<name>    a snapshot: a copy, read-only by convention
    <base>/.snapshots/.datasets.json      which datasets exist, their snapshots in
                                          creation order, and each clone's origin
    <base>/.snapshots/.tmp/               copies in progress and trees being deleted

Dataset components start with a letter or digit (`check_dataset`), so no
dataset can be called `.snapshots`, `..` or `.tmp`, and a snapshot path always
contains `@`, so it never collides with a dataset's snapshot directory.

Snapshots and clones are copies made with `cp -a --reflink=auto` (GNU
coreutils): instant on XFS/btrfs, a real copy on ext4. A dataset's own files
are what is copied, measured and rolled back: the directories of its child
datasets are left out, as they are separate file systems under ZFS.

Every change writes the metadata file atomically, and file-system moves come
before the metadata update (a crash leaves garbage in `.tmp`, not a record of
something that is not there). One daemon owns a base directory; changes are
serialised by an asyncio lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kleened.host import cmd
from kleened.host.base import DatasetBusy, StorageError
from kleened.host.mountinfo import mounts_under
from kleened.host.zfs import check_dataset, check_name, check_snapshot, in_tree

HIDDEN = ".snapshots"
META_FILE = ".datasets.json"
TMP_DIR = ".tmp"
LAYER_DIR = ".layer"  # <hidden>/<dataset>/.layer/{upper,work} of a layered clone
COPY_TIMEOUT = 3600.0
CP_BATCH = 256  # sources per cp invocation when some entries must be left out


@dataclass
class _Dataset:
    origin: str | None = None
    snapshots: list[str] = field(default_factory=list)  # short names, oldest first
    layered: bool = False  # an overlayfs clone (OverlayStorage), not a copy


def _split(snapshot: str) -> tuple[str, str]:
    dataset, _, name = snapshot.partition("@")
    return dataset, name


def _parent(dataset: str) -> str | None:
    return dataset.rsplit("/", 1)[0] if "/" in dataset else None


def disk_usage(path: Path, exclude: frozenset[str] = frozenset()) -> int:
    """Bytes allocated below `path`, like `du -s -B1 -x`: hard links once, no
    symlinks followed, other file systems not entered; top-level names in
    `exclude` (child datasets) are skipped."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    seen: set[tuple[int, int]] = set()
    total = top.st_blocks * 512
    stack = [(str(path), True)]
    while stack:
        directory, is_top = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if is_top and entry.name in exclude:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != top.st_dev:
                continue
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                stack.append((entry.path, False))
    return total


class DirStorage:
    """`host.base.Storage` with directories and copies instead of ZFS."""

    kind = "dir"

    def __init__(
        self, base: Path | str, *, runner: cmd.Runner | None = None, cp: str = "cp"
    ) -> None:
        self.base = Path(base)
        self._hidden = self.base / HIDDEN
        self._runner = runner or cmd.run
        self._cp = cp
        self._lock = asyncio.Lock()
        self._meta: dict[str, _Dataset] | None = None

    # ----------------------------------------------------------------- metadata

    @property
    def _datasets(self) -> dict[str, _Dataset]:
        if self._meta is None:
            self._meta = self._load()
        return self._meta

    def _load(self) -> dict[str, _Dataset]:
        try:
            raw: dict[str, Any] = json.loads((self._hidden / META_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot read storage metadata: {err}") from err
        return {
            name: _Dataset(
                entry.get("origin"), list(entry.get("snapshots", [])), bool(entry.get("layered"))
            )
            for name, entry in raw.get("datasets", {}).items()
        }

    def _save(self) -> None:
        data = {
            "version": 1,
            "datasets": {
                name: {"origin": ds.origin, "snapshots": ds.snapshots}
                | ({"layered": True} if ds.layered else {})
                for name, ds in sorted(self._datasets.items())
            },
        }
        self._hidden.mkdir(parents=True, exist_ok=True)
        tmp = self._hidden / f"{META_FILE}.{uuid.uuid4().hex}"
        # orjson: rewritten on every change, with every dataset in it; the json
        # module's indenting encoder made this a tenth of a busy daemon's time
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._hidden / META_FILE)

    @contextlib.asynccontextmanager
    async def _changing(self, what: str, name: str) -> AsyncIterator[None]:
        """One change at a time; a failing file-system call becomes a StorageError."""
        async with self._lock:
            try:
                yield
            except OSError as err:
                raise StorageError(f"cannot {what} '{name}': {err.strerror or err}") from err

    # ----------------------------------------------------------------- paths

    def _path(self, dataset: str) -> Path:
        return self.base / dataset

    def _snapshot_path(self, snapshot: str) -> Path:
        return self._hidden / snapshot

    def _tmp(self) -> Path:
        tmp = self._hidden / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / uuid.uuid4().hex

    def _get(self, dataset: str, what: str = "open") -> _Dataset:
        entry = self._datasets.get(dataset)
        if entry is None:
            raise StorageError(f"cannot {what} '{dataset}': dataset does not exist")
        return entry

    def _tree(self, dataset: str) -> list[str]:
        return sorted(name for name in self._datasets if in_tree(name, dataset))

    def _children(self, dataset: str) -> list[str]:
        prefix = dataset + "/"
        return sorted(
            name
            for name in self._datasets
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        )

    def _child_names(self, dataset: str) -> frozenset[str]:
        return frozenset(name.rsplit("/", 1)[1] for name in self._children(dataset))

    def _clones(self, tree: list[str]) -> dict[str, str]:
        """Datasets cloned from a snapshot of any dataset in `tree`: clone -> origin."""
        sources = set(tree)
        return {
            name: ds.origin
            for name, ds in self._datasets.items()
            if ds.origin is not None and _split(ds.origin)[0] in sources
        }

    def _check_not_busy(self, dataset: str, what: str) -> None:
        own = {os.path.realpath(self._path(name)) for name in self._layered(self._tree(dataset))}
        mounted = [point for point in mounts_under(self._path(dataset)) if point not in own]
        if mounted:
            raise DatasetBusy(
                f"cannot {what} '{dataset}': dataset is busy ({', '.join(mounted)} mounted)"
            )

    def _check_new(self, dataset: str, what: str) -> Path:
        """`dataset` may be created: not recorded, parent recorded, path free."""
        if dataset in self._datasets:
            raise StorageError(f"cannot {what} '{dataset}': dataset already exists")
        parent = _parent(dataset)
        if parent is not None and parent not in self._datasets:
            raise StorageError(f"cannot {what} '{dataset}': parent does not exist")
        path = self._path(dataset)
        # The parent's directory must really be where we put it (no symlink
        # from a dataset's contents steering us elsewhere).
        expected = os.path.join(os.path.realpath(self.base), *dataset.split("/")[:-1])
        if os.path.realpath(path.parent) != expected:
            raise StorageError(f"cannot {what} '{dataset}': {path.parent} is not a directory")
        # An empty directory is adopted: ZFS mounts over one, and it is what a
        # crash between mkdir and the metadata update leaves.
        adoptable = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
        if os.path.lexists(path) and not adoptable:
            raise StorageError(
                f"cannot {what} '{dataset}': {path} exists and is not an empty directory"
            )
        return path

    # ----------------------------------------------------------------- layered clones

    def _layered(self, names: list[str]) -> list[str]:
        return [name for name in names if self._datasets[name].layered]

    async def _detach(self, names: list[str]) -> None:
        """Unmount the layered datasets among `names` before their directories move
        or go (OverlayStorage; plain directories have nothing mounted)."""

    async def _attach(self, names: list[str]) -> None:
        """Mount the layered datasets among `names` again, at their current paths."""

    # ----------------------------------------------------------------- file operations

    async def _copy_tree(self, source: Path, target: Path, exclude: frozenset[str]) -> None:
        """Copy `source` to the new path `target`, leaving out top-level `exclude`."""
        present = exclude & set(os.listdir(source)) if exclude else set()
        try:
            if not present:
                await self._cp_run(["-T", str(source), str(target)])
                return
            target.mkdir()
            shutil.copystat(source, target, follow_symlinks=False)
            info = os.lstat(source)
            os.chown(target, info.st_uid, info.st_gid)
            names = sorted(set(os.listdir(source)) - present)
            for i in range(0, len(names), CP_BATCH):
                batch = [str(source / name) for name in names[i : i + CP_BATCH]]
                await self._cp_run(["-t", str(target), *batch])
        except BaseException:
            await self._remove(target)
            raise

    async def _must(self, argv: list[str], *, timeout: float, failure: str) -> None:
        """Run a host command; its failure is a StorageError that starts with `failure`."""
        try:
            result = await self._runner(argv, timeout=timeout)
        except cmd.CommandError as err:
            raise StorageError(f"{failure}: {err}") from err
        if not result.ok:
            raise StorageError(f"{failure}: {cmd.failure_message(result)}")

    async def _cp_run(self, args: list[str]) -> None:
        argv = [self._cp, "-a", "--reflink=auto", *args]
        await self._must(argv, timeout=COPY_TIMEOUT, failure="copy failed")

    async def _remove(self, *paths: Path) -> None:
        """Delete trees: first moved into .tmp (instant, atomic), then removed."""
        doomed = []
        for path in paths:
            if os.path.lexists(path):
                trash = self._tmp()
                os.rename(path, trash)
                doomed.append(trash)
        if doomed:
            await asyncio.to_thread(self._rmtrees, doomed)

    @staticmethod
    def _rmtrees(paths: list[Path]) -> None:
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _move(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)

    # ----------------------------------------------------------------- Storage

    async def open(self) -> None:
        """Plain directories need nothing at start."""

    async def close(self) -> None:
        """Nor at stop."""

    async def create(self, dataset: str) -> None:
        check_dataset(dataset)
        async with self._changing("create", dataset):
            path = self._check_new(dataset, "create")
            self.base.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o755, exist_ok=True)
            self._datasets[dataset] = _Dataset()
            self._save()

    async def destroy(self, dataset: str, *, recursive: bool = True) -> None:
        check_dataset(dataset)
        async with self._changing("destroy", dataset):
            entry = self._get(dataset, "destroy")
            tree = self._tree(dataset)
            if not recursive and (len(tree) > 1 or entry.snapshots):
                raise StorageError(
                    f"cannot destroy '{dataset}': it has children or snapshots"
                    " (destroy it recursively)"
                )
            outside = sorted(c for c in self._clones(tree) if c not in tree)
            if outside:
                raise DatasetBusy(
                    f"cannot destroy '{dataset}': it has dependent clones: {', '.join(outside)}"
                )
            self._check_not_busy(dataset, "destroy")
            await self._detach(tree)
            doomed = [self._path(dataset), self._hidden / dataset]
            doomed += [self._snapshot_path(f"{dataset}@{s}") for s in entry.snapshots]
            trash = []
            for path in doomed:
                if os.path.lexists(path):
                    trash.append(self._tmp())
                    os.rename(path, trash[-1])
            for name in tree:
                del self._datasets[name]
            self._save()
        await asyncio.to_thread(self._rmtrees, trash)

    async def snapshot(self, snapshot: str) -> None:
        dataset, name = _split(check_snapshot(snapshot))
        async with self._changing("snapshot", snapshot):
            entry = self._get(dataset, f"create snapshot '{snapshot}' of")
            if name in entry.snapshots:
                raise StorageError(f"cannot create snapshot '{snapshot}': dataset already exists")
            tmp = self._tmp()
            await self._copy_tree(self._path(dataset), tmp, self._child_names(dataset))
            self._move(tmp, self._snapshot_path(snapshot))
            entry.snapshots.append(name)
            self._save()

    async def destroy_snapshot(self, snapshot: str) -> None:
        dataset, name = _split(check_snapshot(snapshot))
        async with self._changing("destroy", snapshot):
            entry = self._datasets.get(dataset)
            if entry is None or name not in entry.snapshots:
                raise StorageError(f"cannot destroy '{snapshot}': snapshot does not exist")
            clones = sorted(
                c for c, origin in self._clones([dataset]).items() if origin == snapshot
            )
            if clones:
                raise DatasetBusy(
                    f"cannot destroy '{snapshot}': it has dependent clones: {', '.join(clones)}"
                )
            trash = self._tmp()
            if os.path.lexists(self._snapshot_path(snapshot)):
                os.rename(self._snapshot_path(snapshot), trash)
            entry.snapshots.remove(name)
            self._save()
        await asyncio.to_thread(self._rmtrees, [trash])

    async def clone(self, snapshot: str, target: str) -> None:
        dataset, name = _split(check_snapshot(snapshot))
        check_dataset(target)
        async with self._changing("clone", snapshot):
            entry = self._datasets.get(dataset)
            if entry is None or name not in entry.snapshots:
                raise StorageError(f"cannot open '{snapshot}': snapshot does not exist")
            path = self._check_new(target, "create")
            tmp = self._tmp()
            await self._copy_tree(self._snapshot_path(snapshot), tmp, frozenset())
            if path.exists():  # an adopted empty directory
                path.rmdir()
            self._move(tmp, path)
            self._datasets[target] = _Dataset(origin=snapshot)
            self._save()

    async def rollback(self, snapshot: str) -> None:
        dataset, name = _split(check_snapshot(snapshot))
        async with self._changing("rollback to", snapshot):
            entry = self._datasets.get(dataset)
            if entry is None or name not in entry.snapshots:
                raise StorageError(f"cannot rollback to '{snapshot}': snapshot does not exist")
            newer = entry.snapshots[entry.snapshots.index(name) + 1 :]
            newer_full = {f"{dataset}@{s}" for s in newer}
            blocking = sorted(c for c, o in self._clones([dataset]).items() if o in newer_full)
            if blocking:
                raise DatasetBusy(
                    f"cannot rollback to '{snapshot}': newer snapshots have dependent clones: "
                    + ", ".join(blocking)
                )
            self._check_not_busy(dataset, "rollback")
            await self._detach([dataset])
            path = self._path(dataset)
            fresh = self._tmp()
            await self._copy_tree(self._snapshot_path(snapshot), fresh, frozenset())
            # Swap the trees, then carry the child datasets' directories over.
            old = self._tmp()
            os.rename(path, old)
            os.rename(fresh, path)
            for child in self._child_names(dataset):
                if os.path.lexists(old / child):
                    try:
                        os.replace(old / child, path / child)
                    except OSError as err:
                        raise StorageError(
                            f"cannot rollback '{dataset}': child dataset {child} is in the way"
                            f" of the snapshot's {path / child}: {err.strerror}"
                        ) from err
            trash = [old]
            if entry.layered:  # now a plain copy of the snapshot: the layers go
                entry.layered = False
                if os.path.lexists(self._hidden / dataset / LAYER_DIR):
                    trash.append(self._tmp())
                    os.rename(self._hidden / dataset / LAYER_DIR, trash[-1])
            for s in newer:
                if os.path.lexists(self._snapshot_path(f"{dataset}@{s}")):
                    trash.append(self._tmp())
                    os.rename(self._snapshot_path(f"{dataset}@{s}"), trash[-1])
            del entry.snapshots[len(entry.snapshots) - len(newer) :]
            self._save()
        await asyncio.to_thread(self._rmtrees, trash)

    async def rename(self, source: str, target: str) -> None:
        check_dataset(source)
        check_dataset(target)
        async with self._changing("rename", source):
            self._get(source, "rename")
            if in_tree(target, source):
                raise StorageError(f"cannot rename '{source}' to '{target}': a dataset's own child")
            path = self._check_new(target, "rename to")
            self._check_not_busy(source, "rename")
            tree = self._tree(source)
            await self._detach(tree)
            if path.exists():  # an adopted empty directory
                path.rmdir()
            self._move(self._path(source), path)
            # Snapshots of the dataset itself, then those of its descendants (one directory).
            for s in self._datasets[source].snapshots:
                old = self._snapshot_path(f"{source}@{s}")
                if os.path.lexists(old):
                    self._move(old, self._snapshot_path(f"{target}@{s}"))
            if os.path.lexists(self._hidden / source):
                self._move(self._hidden / source, self._hidden / target)

            def renamed(name: str) -> str:
                return target + name[len(source) :] if in_tree(name, source) else name

            for name in tree:
                self._datasets[renamed(name)] = self._datasets.pop(name)
            for entry in self._datasets.values():
                if entry.origin is not None:
                    origin_ds, snap = _split(entry.origin)
                    entry.origin = f"{renamed(origin_ds)}@{snap}"
            self._save()
            await self._attach([renamed(name) for name in tree])

    async def exists(self, dataset_or_snapshot: str) -> bool:
        dataset, _, name = check_name(dataset_or_snapshot).partition("@")
        entry = self._datasets.get(dataset)
        if entry is None:
            return False
        return not name or name in entry.snapshots

    async def list_snapshots(self, dataset: str) -> list[str]:
        entry = self._get(check_dataset(dataset))
        return [f"{dataset}@{s}" for s in entry.snapshots]

    async def list_children(self, dataset: str) -> list[str]:
        self._get(check_dataset(dataset))
        return self._children(dataset)

    async def clones_of(self, dataset: str) -> list[str]:
        self._get(check_dataset(dataset))
        return sorted(self._clones([dataset]))

    async def origin(self, dataset: str) -> str | None:
        return self._get(check_dataset(dataset)).origin

    async def mountpoint(self, dataset: str) -> Path:
        self._get(check_dataset(dataset))
        path = self._path(dataset)
        if not path.is_dir():
            raise StorageError(f"dataset '{dataset}' has no directory at {path}")
        return path

    async def used_space(self, dataset: str) -> int:
        self._get(check_dataset(dataset))
        return await asyncio.to_thread(disk_usage, self._path(dataset), self._child_names(dataset))
