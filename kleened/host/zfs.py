"""ZFS datasets, snapshots and clones: one `Storage` for FreeBSD and Linux.

`ZfsStorage` holds the policy that is the same whatever talks to ZFS: name
validation before anything runs, the dependent-clone check before a destroy
(so the caller gets DatasetBusy naming the clones instead of zfs's "use -R"
advice), and the retry for a dataset that is only busy for a moment. The
mechanics sit behind a small backend:

* `_CliBackend` runs the `zfs` command (`-H` output, `-p` numbers). It works
  with FreeBSD's and OpenZFS's zfs and with Debian's zfs-fuse 0.7, which has
  neither `zfs list -p` nor a `clones` property (both are worked around here).
* `_LibzfsBackend` uses py-libzfs when `import libzfs` succeeds (FreeBSD).
  It cannot run on these Linux machines, so it is deliberately small and
  mirrors the CLI backend call for call; only the CLI backend is tested here.

Dataset and snapshot names follow ZFS's rules, narrowed to what kleened
produces; `check_dataset`/`check_snapshot` are shared with `host.dirstore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from kleened.host import cmd
from kleened.host.base import DatasetBusy, StorageError

try:  # py-libzfs: FreeBSD only
    import libzfs  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the normal case on Linux
    libzfs = None

NAME_PATTERN = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)*(@[A-Za-z0-9][A-Za-z0-9_.:-]*)?$"
)
MAX_NAME_LENGTH = 255  # ZFS_MAX_DATASET_NAME_LEN - 1

LIST_TIMEOUT = 30.0
CHANGE_TIMEOUT = 120.0
DESTROY_TIMEOUT = 600.0  # destroying a large dataset frees many blocks
COPY_TIMEOUT = 3600.0  # send | receive of a whole base system

# zfs-fuse says "dataset is busy" when it cannot unmount a dataset's FUSE
# mount for a destroy or rename, which happens right after a create, clone or
# mount, and now and then for longer. Measured here: destroy after clone needs
# one retry (~40 ms); rename of a mounted dataset needed up to 28 retries
# (0.1-1.2 s); an explicit `zfs unmount` first makes both succeed on the
# next try. Real ZFS says "busy" when the dataset is in use, which a retry
# does not change: the budget bounds how long that error is delayed.
BUSY_TIMEOUT = 3.0
BUSY_FIRST_DELAY = 0.01
BUSY_MAX_DELAY = 0.1


class _Busy(DatasetBusy):
    """zfs said "dataset is busy": possibly transient, worth a retry."""


# --------------------------------------------------------------------------- names


def check_name(name: str, *, kind: Literal["dataset", "snapshot", "any"] = "any") -> str:
    """Refuse names zfs would misread (options, `..`, empty parts) before any command runs."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise StorageError(f"invalid dataset name: {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise StorageError(f"invalid dataset name (longer than {MAX_NAME_LENGTH}): {name!r}")
    if kind == "dataset" and "@" in name:
        raise StorageError(f"expected a dataset, not a snapshot: {name!r}")
    if kind == "snapshot" and "@" not in name:
        raise StorageError(f"expected a snapshot (dataset@name): {name!r}")
    return name


def check_dataset(name: str) -> str:
    return check_name(name, kind="dataset")


def check_snapshot(name: str) -> str:
    return check_name(name, kind="snapshot")


def in_tree(name: str, root: str) -> bool:
    """`name` is `root` or one of its descendants (not a sibling like `root2`)."""
    return name == root or name.startswith(root + "/")


# --------------------------------------------------------------------------- parsing

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([BKMGTPEZ]?)$")
_UNITS = "BKMGTPEZ"


def parse_table(output: str, columns: int) -> list[list[str]]:
    """Rows of `zfs list -H` / `zfs get -H` output: tab-separated, one per line."""
    rows = []
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != columns:
            raise StorageError(f"unexpected zfs output (wanted {columns} columns): {line!r}")
        rows.append(fields)
    return rows


def parse_size(value: str) -> int:
    """A byte count: exact with `-p`, or zfs's abbreviated form (`364K`, `1.5M`) without."""
    match = _SIZE.match(value.strip())
    if match is None:
        raise StorageError(f"unexpected zfs size value: {value!r}")
    number, unit = match.groups()
    if not unit or unit == "B":
        return int(float(number))
    return int(float(number) * 1024 ** _UNITS.index(unit))


def parse_origin(value: str) -> str | None:
    return None if value in ("", "-") else value


def parse_clones(value: str) -> list[str]:
    """The `clones` property: comma-separated names, `-` (or empty) for none."""
    if value in ("", "-"):
        return []
    return sorted(name for name in value.split(",") if name)


def parse_mountpoint(value: str) -> Path | None:
    """None for `none`, `legacy` and `-`: zfs does not manage a mount there."""
    return None if value in ("", "-", "none", "legacy") else Path(value)


def zfs_error_message(result: cmd.CommandResult) -> str:
    """zfs's own words, without the usage text it appends to option errors."""
    text = result.err
    cut = re.search(r"^usage:", text, flags=re.MULTILINE | re.IGNORECASE)
    if cut is not None:
        text = text[: cut.start()]
    text = text.strip()
    if text:
        return text
    command = " ".join(["zfs", *result.argv[1:2]])
    return f"{command} exited with code {result.returncode}"


def is_busy(message: str) -> bool:
    # zfs-fuse/FreeBSD: "dataset is busy"; OpenZFS: "pool or dataset is busy".
    return "is busy" in message


def is_missing(message: str) -> bool:
    return "does not exist" in message


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    async def create(self, dataset: str) -> None: ...
    async def destroy(self, name: str, *, recursive: bool, dependents: bool) -> None: ...
    async def snapshot(self, snapshot: str) -> None: ...
    async def clone(self, snapshot: str, target: str) -> None: ...
    async def rollback(self, snapshot: str) -> None: ...  # destroys newer snapshots
    async def rename(self, source: str, target: str) -> None: ...
    async def unmount(self, dataset: str) -> None: ...
    async def mount_tree(self, dataset: str) -> None: ...
    async def exists(self, name: str) -> bool: ...
    async def snapshots(self, dataset: str) -> list[str]: ...  # oldest first
    async def filesystems(self, dataset: str, *, depth: int | None) -> list[str]: ...
    async def snapshot_clones(self, dataset: str, *, recursive: bool) -> dict[str, list[str]]: ...
    async def origin(self, dataset: str) -> str | None: ...
    async def mountpoint(self, dataset: str) -> tuple[str, bool]: ...  # (property, mounted)
    async def used(self, dataset: str) -> int: ...
    async def send_receive(self, snapshot: str, target: str) -> None: ...


class _CliBackend:
    def __init__(self, zfs: str, runner: cmd.Runner) -> None:
        self._zfs = zfs
        self._runner = runner
        self._has_clones_property: bool | None = None  # zfs-fuse lacks it

    async def _call(self, *args: str, timeout: float) -> cmd.CommandResult:
        try:
            return await self._runner([self._zfs, *args], timeout=timeout)
        except cmd.CommandError as err:
            raise StorageError(str(err)) from err

    async def _ok(self, *args: str, timeout: float = CHANGE_TIMEOUT) -> str:
        result = await self._call(*args, timeout=timeout)
        if not result.ok:
            message = zfs_error_message(result)
            raise (_Busy if is_busy(message) else StorageError)(message)
        return result.out

    async def _list(self, *args: str) -> str:
        return await self._ok("list", "-H", *args, timeout=LIST_TIMEOUT)

    async def create(self, dataset: str) -> None:
        await self._ok("create", dataset)

    async def destroy(self, name: str, *, recursive: bool, dependents: bool) -> None:
        flags = ["-R"] if dependents else ["-r"] if recursive else []
        await self._ok("destroy", *flags, name, timeout=DESTROY_TIMEOUT)

    async def snapshot(self, snapshot: str) -> None:
        await self._ok("snapshot", snapshot)

    async def clone(self, snapshot: str, target: str) -> None:
        await self._ok("clone", snapshot, target)

    async def rollback(self, snapshot: str) -> None:
        await self._ok("rollback", "-r", snapshot, timeout=DESTROY_TIMEOUT)

    async def rename(self, source: str, target: str) -> None:
        await self._ok("rename", source, target)

    async def unmount(self, dataset: str) -> None:
        await self._ok("unmount", dataset)

    async def mount_tree(self, dataset: str) -> None:
        # `list -r` is depth-first, parents before children: mount in that order.
        out = await self._list("-o", "name,canmount,mounted", "-t", "filesystem", "-r", dataset)
        for name, canmount, mounted in parse_table(out, 3):
            if canmount == "on" and mounted == "no":
                await self._ok("mount", name)

    async def exists(self, name: str) -> bool:
        result = await self._call(
            "list", "-H", "-o", "name", "-t", "all", name, timeout=LIST_TIMEOUT
        )
        if result.ok:
            return True
        message = zfs_error_message(result)
        if is_missing(message):
            return False
        raise StorageError(message)

    async def snapshots(self, dataset: str) -> list[str]:
        out = await self._list(
            "-o", "name", "-t", "snapshot", "-s", "createtxg", "-d", "1", dataset
        )
        return [row[0] for row in parse_table(out, 1)]

    async def filesystems(self, dataset: str, *, depth: int | None) -> list[str]:
        scope = ["-r"] if depth is None else ["-d", str(depth)]
        out = await self._list("-o", "name", "-t", "filesystem,volume", *scope, dataset)
        return [row[0] for row in parse_table(out, 1)]

    async def snapshot_clones(self, dataset: str, *, recursive: bool) -> dict[str, list[str]]:
        scope = ["-r"] if recursive else ["-d", "1"]
        if self._has_clones_property is not False:
            result = await self._call(
                "list",
                "-H",
                "-o",
                "name,clones",
                "-t",
                "snapshot",
                *scope,
                dataset,
                timeout=LIST_TIMEOUT,
            )
            if result.ok:
                self._has_clones_property = True
                return {name: parse_clones(value) for name, value in parse_table(result.out, 2)}
            message = zfs_error_message(result)
            if "invalid property 'clones'" not in message:
                raise StorageError(message)
            self._has_clones_property = False
        # No `clones` property (zfs-fuse): a clone lives in its origin's pool,
        # so every clone of `dataset` shows up in one listing of that pool.
        pool = dataset.split("/", 1)[0]
        out = await self._list("-o", "name,origin", "-t", "filesystem,volume", "-r", pool)
        rows = parse_table(out, 2)
        if not any(name == dataset for name, _ in rows):
            raise StorageError(f"cannot open '{dataset}': dataset does not exist")
        found: dict[str, list[str]] = {}
        for name, value in rows:
            origin = parse_origin(value)
            if origin is None:
                continue
            source = origin.split("@", 1)[0]
            if source == dataset or (recursive and in_tree(source, dataset)):
                found.setdefault(origin, []).append(name)
        return {snap: sorted(names) for snap, names in found.items()}

    async def origin(self, dataset: str) -> str | None:
        out = await self._list("-o", "origin", dataset)
        return parse_origin(parse_table(out, 1)[0][0])

    async def mountpoint(self, dataset: str) -> tuple[str, bool]:
        out = await self._list("-o", "mountpoint,mounted", dataset)
        value, mounted = parse_table(out, 2)[0]
        return value, mounted == "yes"

    async def used(self, dataset: str) -> int:
        # `zfs get -p` (unlike `zfs list -p`) exists in zfs-fuse too.
        out = await self._ok(
            "get", "-H", "-p", "-o", "value", "used", dataset, timeout=LIST_TIMEOUT
        )
        return parse_size(parse_table(out, 1)[0][0])

    async def send_receive(self, snapshot: str, target: str) -> None:
        try:
            sent, received = await cmd.run_pipeline(
                [self._zfs, "send", snapshot],
                [self._zfs, "receive", target],
                timeout=COPY_TIMEOUT,
            )
        except cmd.CommandError as err:
            raise StorageError(str(err)) from err
        for result in (sent, received):
            if not result.ok:
                raise StorageError(zfs_error_message(result))


class _LibzfsBackend:  # pragma: no cover - needs py-libzfs (FreeBSD); not testable here
    """The CLI backend's operations through py-libzfs, one thread call each.

    A fresh `libzfs.ZFS()` handle per call: libzfs handles are not shared
    between threads. Errors are worded like zfs's own so that messages do not
    depend on the backend.
    """

    async def _do(self, what: str, name: str, fn: Callable[[Any], Any]) -> Any:
        def work() -> Any:
            return fn(libzfs.ZFS())

        try:
            return await asyncio.to_thread(work)
        except libzfs.ZFSException as err:
            message = f"cannot {what} '{name}': {err}"
            if err.code == libzfs.Error.BUSY:
                raise _Busy(message) from err
            if err.code == libzfs.Error.NOENT:
                raise StorageError(f"cannot open '{name}': dataset does not exist") from err
            raise StorageError(message) from err

    async def create(self, dataset: str) -> None:
        pool = dataset.split("/", 1)[0]

        def work(z: Any) -> None:
            z.get(pool).create(dataset, {})
            z.get_dataset(dataset).mount()  # zfs create mounts; zfs_create() does not

        await self._do("create", dataset, work)

    async def destroy(self, name: str, *, recursive: bool, dependents: bool) -> None:
        def tree(z: Any, ds: Any) -> None:
            # As zfs destroy -r/-R: children, then (with -R) clones, then snapshots.
            for child in list(ds.children):
                tree(z, child)
            for snap in list(ds.snapshots):
                for clone in parse_clones(snap.properties["clones"].value) if dependents else []:
                    if _exists(z, clone):
                        tree(z, z.get_dataset(clone))
                snap.delete()
            ds.delete()

        def work(z: Any) -> None:
            if "@" in name:
                z.get_snapshot(name).delete()
                return
            ds = z.get_dataset(name)
            ds.umount()  # zfs_unmountall: the dataset and everything below it
            if recursive or dependents:
                tree(z, ds)
            else:
                ds.delete()

        await self._do("destroy", name, work)

    async def snapshot(self, snapshot: str) -> None:
        dataset = snapshot.split("@", 1)[0]
        await self._do("snapshot", snapshot, lambda z: z.get_dataset(dataset).snapshot(snapshot))

    async def clone(self, snapshot: str, target: str) -> None:
        def work(z: Any) -> None:
            z.get_snapshot(snapshot).clone(target)
            z.get_dataset(target).mount()

        await self._do("clone", snapshot, work)

    async def rollback(self, snapshot: str) -> None:
        dataset = snapshot.split("@", 1)[0]

        def work(z: Any) -> None:
            # zfs_rollback() goes back to the latest snapshot only; drop the
            # newer ones first, as zfs rollback -r does.
            names = _oldest_first(z.get_dataset(dataset).snapshots)
            for newer in names[names.index(snapshot) + 1 :]:
                z.get_snapshot(newer).delete()
            z.get_snapshot(snapshot).rollback(force=True)

        await self._do("rollback to", snapshot, work)

    async def rename(self, source: str, target: str) -> None:
        await self._do("rename", source, lambda z: z.get_dataset(source).rename(target))

    async def unmount(self, dataset: str) -> None:
        await self._do("unmount", dataset, lambda z: z.get_dataset(dataset).umount())

    async def mount_tree(self, dataset: str) -> None:
        await self._do("mount", dataset, lambda z: z.get_dataset(dataset).mount_recursive())

    async def exists(self, name: str) -> bool:
        return bool(await self._do("open", name, lambda z: _exists(z, name)))

    async def snapshots(self, dataset: str) -> list[str]:
        return list(
            await self._do(
                "open", dataset, lambda z: _oldest_first(z.get_dataset(dataset).snapshots)
            )
        )

    async def filesystems(self, dataset: str, *, depth: int | None) -> list[str]:
        def work(z: Any) -> list[str]:
            ds = z.get_dataset(dataset)
            if depth == 0:
                return [dataset]
            below = ds.children if depth == 1 else ds.children_recursive
            return [dataset, *(c.name for c in below)]

        return list(await self._do("open", dataset, work))

    async def snapshot_clones(self, dataset: str, *, recursive: bool) -> dict[str, list[str]]:
        def work(z: Any) -> dict[str, list[str]]:
            ds = z.get_dataset(dataset)
            snaps = ds.snapshots_recursive if recursive else ds.snapshots
            return {s.name: parse_clones(s.properties["clones"].value) for s in snaps}

        return dict(await self._do("open", dataset, work))

    async def origin(self, dataset: str) -> str | None:
        value = await self._do(
            "open", dataset, lambda z: z.get_dataset(dataset).properties["origin"].value
        )
        return parse_origin(value or "")

    async def mountpoint(self, dataset: str) -> tuple[str, bool]:
        def work(z: Any) -> tuple[str, bool]:
            ds = z.get_dataset(dataset)
            return ds.properties["mountpoint"].value, ds.mountpoint is not None

        return tuple(await self._do("open", dataset, work))  # type: ignore[return-value]

    async def used(self, dataset: str) -> int:
        value = await self._do(
            "open", dataset, lambda z: z.get_dataset(dataset).properties["used"].rawvalue
        )
        return parse_size(str(value))

    async def send_receive(self, snapshot: str, target: str) -> None:
        # A stream between two libzfs calls needs a pipe and two threads; the
        # CLI does exactly this, so use it (it exists wherever libzfs does).
        await _CliBackend(default_zfs_binary(), cmd.run).send_receive(snapshot, target)


def _exists(z: Any, name: str) -> bool:  # pragma: no cover - py-libzfs only
    try:
        z.get_object(name)
    except libzfs.ZFSException as err:
        if err.code == libzfs.Error.NOENT:
            return False
        raise
    return True


def _oldest_first(snapshots: Any) -> list[str]:  # pragma: no cover - py-libzfs only
    ordered = sorted(snapshots, key=lambda s: int(s.properties["createtxg"].rawvalue))
    return [s.name for s in ordered]


def default_zfs_binary() -> str:
    return shutil.which("zfs") or "/sbin/zfs"


# --------------------------------------------------------------------------- storage


async def _retry_busy(
    operation: Callable[[], Awaitable[None]],
    *,
    budget: float,
    assist: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run `operation`, retrying while zfs says busy, for at most `budget` seconds.

    `assist` runs once after the first busy failure (an explicit unmount);
    its own failure is ignored: the operation's error is the one to report.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = BUSY_FIRST_DELAY
    while True:
        try:
            await operation()
            return
        except _Busy:
            if loop.time() + delay > deadline:
                raise
        if assist is not None:
            with contextlib.suppress(StorageError):
                await assist()
            assist = None
        await asyncio.sleep(delay)
        delay = min(delay * 2, BUSY_MAX_DELAY)


class ZfsStorage:
    """`host.base.Storage` on ZFS (py-libzfs when importable, else the zfs command)."""

    kind = "zfs"

    async def open(self) -> None:
        """ZFS mounts its datasets itself."""

    async def close(self) -> None:
        """Nothing to release: the datasets stay mounted, as with ZFS on boot."""

    def __init__(
        self,
        zfs: str | None = None,
        *,
        runner: cmd.Runner | None = None,
        backend: Literal["auto", "cli", "libzfs"] = "auto",
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.zfs = zfs or default_zfs_binary()
        self.busy_timeout = busy_timeout
        use_libzfs = backend == "libzfs" or (backend == "auto" and libzfs is not None)
        if use_libzfs and libzfs is None:
            raise StorageError("py-libzfs is not installed")
        self._backend: _Backend = (
            _LibzfsBackend() if use_libzfs else _CliBackend(self.zfs, runner or cmd.run)
        )

    @property
    def backend_name(self) -> str:
        return "libzfs" if isinstance(self._backend, _LibzfsBackend) else "cli"

    async def create(self, dataset: str) -> None:
        await self._backend.create(check_dataset(dataset))

    async def destroy(self, dataset: str, *, recursive: bool = True) -> None:
        check_dataset(dataset)
        await self._must_exist(dataset, "destroy")
        clones = await self._backend.snapshot_clones(dataset, recursive=recursive)
        dependent = sorted({c for names in clones.values() for c in names})
        outside = [c for c in dependent if not (recursive and in_tree(c, dataset))]
        if outside:
            raise DatasetBusy(
                f"cannot destroy '{dataset}': it has dependent clones: {', '.join(outside)}"
            )
        # Clones inside the tree go with it; zfs wants -R for that.
        try:
            await _retry_busy(
                lambda: self._backend.destroy(
                    dataset, recursive=recursive, dependents=bool(dependent)
                ),
                budget=self.busy_timeout,
                assist=lambda: self._backend.unmount(dataset),
            )
        except StorageError:
            # A refused destroy can leave the dataset unmounted (zfs-fuse).
            with contextlib.suppress(StorageError):
                await self._backend.mount_tree(dataset)
            raise

    async def snapshot(self, snapshot: str) -> None:
        await self._backend.snapshot(check_snapshot(snapshot))

    async def destroy_snapshot(self, snapshot: str) -> None:
        check_snapshot(snapshot)
        await self._must_exist(snapshot, "destroy")
        dataset = snapshot.split("@", 1)[0]
        clones = (await self._backend.snapshot_clones(dataset, recursive=False)).get(snapshot, [])
        if clones:
            raise DatasetBusy(
                f"cannot destroy '{snapshot}': it has dependent clones: {', '.join(clones)}"
            )
        await _retry_busy(
            lambda: self._backend.destroy(snapshot, recursive=False, dependents=False),
            budget=self.busy_timeout,
        )

    async def clone(self, snapshot: str, target: str) -> None:
        await self._backend.clone(check_snapshot(snapshot), check_dataset(target))

    async def rollback(self, snapshot: str) -> None:
        dataset = check_snapshot(snapshot).split("@", 1)[0]
        snapshots = await self._backend.snapshots(dataset)
        if snapshot not in snapshots:
            raise StorageError(f"cannot rollback to '{snapshot}': snapshot does not exist")
        newer = snapshots[snapshots.index(snapshot) + 1 :]
        if newer:
            clones = await self._backend.snapshot_clones(dataset, recursive=False)
            blocking = sorted({c for snap in newer for c in clones.get(snap, [])})
            if blocking:
                raise DatasetBusy(
                    f"cannot rollback to '{snapshot}': newer snapshots have dependent clones: "
                    + ", ".join(blocking)
                )
        await _retry_busy(lambda: self._backend.rollback(snapshot), budget=self.busy_timeout)

    async def rename(self, source: str, target: str) -> None:
        check_dataset(source)
        check_dataset(target)
        # zfs rename unmounts and remounts the dataset, its children and every
        # clone of their snapshots (the clones' origin changes name too).
        clones: list[str] = []

        async def unmount_all() -> None:
            tree = await self._backend.snapshot_clones(source, recursive=True)
            clones.extend(sorted({c for names in tree.values() for c in names}))
            for name in [source, *clones]:
                with contextlib.suppress(StorageError):
                    await self._backend.unmount(name)

        try:
            await _retry_busy(
                lambda: self._backend.rename(source, target),
                budget=self.busy_timeout,
                assist=unmount_all,
            )
        except StorageError:
            await self._remount([source, *clones])
            raise
        # What the assist unmounted, or zfs-fuse failed to remount, is mounted again.
        renamed = [target + c[len(source) :] if in_tree(c, source) else c for c in clones]
        await self._remount([target, *renamed])

    async def _remount(self, datasets: list[str]) -> None:
        for name in datasets:
            with contextlib.suppress(StorageError):
                await self._backend.mount_tree(name)

    async def exists(self, dataset_or_snapshot: str) -> bool:
        return await self._backend.exists(check_name(dataset_or_snapshot))

    async def list_snapshots(self, dataset: str) -> list[str]:
        return await self._backend.snapshots(check_dataset(dataset))

    async def list_children(self, dataset: str) -> list[str]:
        names = await self._backend.filesystems(check_dataset(dataset), depth=1)
        return sorted(name for name in names if name != dataset)

    async def clones_of(self, dataset: str) -> list[str]:
        clones = await self._backend.snapshot_clones(check_dataset(dataset), recursive=False)
        return sorted({c for names in clones.values() for c in names})

    async def origin(self, dataset: str) -> str | None:
        return await self._backend.origin(check_dataset(dataset))

    async def mountpoint(self, dataset: str) -> Path:
        value, mounted = await self._backend.mountpoint(check_dataset(dataset))
        path = parse_mountpoint(value)
        if path is None:
            raise StorageError(f"dataset '{dataset}' has no mountpoint (mountpoint={value})")
        if not mounted:
            # Writing into the directory now would put data into the parent dataset.
            raise StorageError(f"dataset '{dataset}' is not mounted (mountpoint {path})")
        return path

    async def used_space(self, dataset: str) -> int:
        return await self._backend.used(check_dataset(dataset))

    async def copy(self, snapshot: str, target: str) -> None:
        """`zfs send <snapshot> | zfs receive <target>`: an independent copy that
        keeps the snapshot (used by the zfs-copy image method). Not in the
        Storage Protocol: `dir` storage has no such operation."""
        await self._backend.send_receive(check_snapshot(snapshot), check_dataset(target))

    async def _must_exist(self, name: str, what: str) -> None:
        if not await self._backend.exists(name):
            kind = "snapshot" if "@" in name else "dataset"
            raise StorageError(f"cannot {what} '{name}': {kind} does not exist")
