"""The Storage contract, run against every implementation.

`dir` runs on plain directories under tmp_path; `zfs` runs the zfs command
against a real pool (zfs-fuse, from tests.fixtures.zfs). Each test gets a
fresh root dataset to work under. Both storages are built with a runner that
records every command before running it for real, so a test can check that a
bad name was refused before anything ran.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kleened.host import cmd
from kleened.host.base import DatasetBusy, Storage, StorageError
from kleened.host.dirstore import DirStorage
from kleened.host.mountinfo import mounts_under
from kleened.host.overlaystore import OverlayStorage
from kleened.host.zfs import ZfsStorage


@dataclass
class Subject:
    storage: Storage
    root: str  # a dataset this test may create things under
    reopen: Callable[[], Storage]  # a new storage object on the same datasets (a restart)
    commands: list[tuple[str, ...]] = field(default_factory=list)

    def ds(self, name: str) -> str:
        return f"{self.root}/{name}"


def recording(commands: list[tuple[str, ...]]) -> cmd.Runner:
    async def run(
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> cmd.CommandResult:
        commands.append(tuple(argv))
        return await cmd.run(argv, timeout=timeout, env=env, input=input)

    return run


@pytest.fixture(params=["dir", "overlay", pytest.param("zfs", marks=pytest.mark.zfs)])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    commands: list[tuple[str, ...]] = []
    if request.param in ("dir", "overlay"):
        kind = DirStorage if request.param == "dir" else OverlayStorage
        base = tmp_path / "datasets"
        dir_storage = kind(base, runner=recording(commands))
        await dir_storage.open()
        await dir_storage.create("kltest")
        yield Subject(dir_storage, "kltest", lambda: kind(base), commands)
        # what a daemon's stop does: no clone stays mounted (read afresh, as
        # a test may have changed the datasets through a reopened object)
        await kind(base).close()
        assert not mounts_under(base)
        return
    root = request.getfixturevalue("zfs_root")
    zfs_storage = ZfsStorage(root.pool.zfs, runner=recording(commands), backend="cli")
    yield Subject(
        zfs_storage, root.dataset, lambda: ZfsStorage(root.pool.zfs, backend="cli"), commands
    )


async def write(s: Subject, dataset: str, name: str, text: str) -> Path:
    path = await s.storage.mountpoint(dataset) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def read(s: Subject, dataset: str, name: str) -> str | None:
    path = await s.storage.mountpoint(dataset) / name
    return path.read_text() if path.exists() else None


async def with_snapshot(s: Subject, name: str = "img") -> tuple[str, str]:
    dataset = s.ds(name)
    await s.storage.create(dataset)
    await write(s, dataset, "etc/motd", "from the image\n")
    await s.storage.snapshot(f"{dataset}@image")
    return dataset, f"{dataset}@image"


# --------------------------------------------------------------------------- datasets


async def test_create_exists_and_mountpoint_is_writable(storage: Subject) -> None:
    st, ds = storage.storage, storage.ds("a")
    assert isinstance(st, Storage) and st.kind in ("dir", "zfs")
    assert not await st.exists(ds)
    await st.create(ds)
    assert await st.exists(ds)
    mountpoint = await st.mountpoint(ds)
    assert mountpoint.is_dir()
    (mountpoint / "hello").write_text("hi")
    assert (await st.mountpoint(ds) / "hello").read_text() == "hi"
    assert await st.origin(ds) is None
    assert await st.list_snapshots(ds) == []


async def test_create_twice_or_without_parent_fails(storage: Subject) -> None:
    st = storage.storage
    await st.create(storage.ds("a"))
    with pytest.raises(StorageError, match="already exists"):
        await st.create(storage.ds("a"))
    with pytest.raises(StorageError, match="parent does not exist"):
        await st.create(storage.ds("no/such"))


async def test_list_children_direct_and_sorted(storage: Subject) -> None:
    st = storage.storage
    for name in ("b", "a", "v1.2", "a/x", "a/x/deep"):
        await st.create(storage.ds(name))
    assert await st.list_children(storage.root) == [
        storage.ds("a"),
        storage.ds("b"),
        storage.ds("v1.2"),
    ]
    assert await st.list_children(storage.ds("a")) == [storage.ds("a/x")]
    assert await st.list_children(storage.ds("b")) == []


async def test_destroy_missing_dataset_is_a_clear_error(storage: Subject) -> None:
    missing = storage.ds("missing")
    with pytest.raises(StorageError) as err:
        await storage.storage.destroy(missing)
    assert not isinstance(err.value, DatasetBusy)
    assert missing in str(err.value) and "does not exist" in str(err.value)
    with pytest.raises(StorageError, match="does not exist"):
        await storage.storage.destroy_snapshot(f"{storage.root}@nothing")


async def test_destroy_removes_children_and_snapshots(storage: Subject) -> None:
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await st.create(f"{ds}/child")
    await st.snapshot(f"{ds}/child@s")
    mountpoint = await st.mountpoint(ds)
    await st.destroy(ds)
    for name in (ds, snap, f"{ds}/child", f"{ds}/child@s"):
        assert not await st.exists(name)
    assert not (mountpoint / "etc/motd").exists()
    assert await st.list_children(storage.root) == []


async def test_non_recursive_destroy_refuses_a_dataset_with_snapshots(storage: Subject) -> None:
    ds, snap = await with_snapshot(storage)
    with pytest.raises(StorageError):
        await storage.storage.destroy(ds, recursive=False)
    assert await storage.storage.exists(snap)
    await storage.storage.destroy_snapshot(snap)
    await storage.storage.destroy(ds, recursive=False)
    assert not await storage.storage.exists(ds)


# --------------------------------------------------------------------------- snapshots


async def test_rollback_restores_content(storage: Subject) -> None:
    st, ds = storage.storage, storage.ds("a")
    await st.create(ds)
    await write(storage, ds, "kept", "one")
    await write(storage, ds, "dir/removed-later", "two")
    await st.snapshot(f"{ds}@s1")
    await write(storage, ds, "kept", "changed")
    (await st.mountpoint(ds) / "dir/removed-later").unlink()
    await write(storage, ds, "added", "new")
    await st.snapshot(f"{ds}@s2")
    await write(storage, ds, "after-s2", "x")

    await st.rollback(f"{ds}@s1")

    assert await read(storage, ds, "kept") == "one"
    assert await read(storage, ds, "dir/removed-later") == "two"
    assert await read(storage, ds, "added") is None
    assert await read(storage, ds, "after-s2") is None
    # Newer snapshots go, as with zfs rollback -r.
    assert await st.list_snapshots(ds) == [f"{ds}@s1"]
    assert not await st.exists(f"{ds}@s2")


async def test_rollback_keeps_child_datasets(storage: Subject) -> None:
    st, ds = storage.storage, storage.ds("a")
    await st.create(ds)
    await st.snapshot(f"{ds}@empty")
    await st.create(f"{ds}/child")
    await write(storage, f"{ds}/child", "file", "child data")
    await st.rollback(f"{ds}@empty")
    assert await read(storage, f"{ds}/child", "file") == "child data"


async def test_list_snapshots_oldest_first(storage: Subject) -> None:
    st, ds = storage.storage, storage.ds("a")
    await st.create(ds)
    for name in ("zeta", "alpha", "m.1"):
        await st.snapshot(f"{ds}@{name}")
    assert await st.list_snapshots(ds) == [f"{ds}@zeta", f"{ds}@alpha", f"{ds}@m.1"]
    assert await st.exists(f"{ds}@alpha")
    assert not await st.exists(f"{ds}@beta")
    with pytest.raises(StorageError, match="already exists"):
        await st.snapshot(f"{ds}@alpha")


async def test_snapshot_of_a_missing_dataset_fails(storage: Subject) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        await storage.storage.snapshot(f"{storage.ds('missing')}@s")


# --------------------------------------------------------------------------- clones


async def test_clone_sees_snapshot_and_is_independent(storage: Subject) -> None:
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await write(storage, ds, "after-snapshot", "not in the clone")
    clone = storage.ds("c1")
    await st.clone(snap, clone)

    assert await read(storage, clone, "etc/motd") == "from the image\n"
    assert await read(storage, clone, "after-snapshot") is None
    await write(storage, clone, "etc/motd", "changed in the clone\n")
    await write(storage, clone, "clone-only", "x")
    assert await read(storage, ds, "etc/motd") == "from the image\n"
    assert await read(storage, ds, "clone-only") is None
    await write(storage, ds, "etc/motd", "changed in the image\n")
    assert await read(storage, clone, "etc/motd") == "changed in the clone\n"

    assert await st.origin(clone) == snap
    assert await st.origin(ds) is None
    assert await st.clones_of(ds) == [clone]
    assert await st.clones_of(clone) == []


async def test_clones_of_covers_every_snapshot(storage: Subject) -> None:
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await st.snapshot(f"{ds}@build1")
    await st.clone(snap, storage.ds("c2"))
    await st.clone(f"{ds}@build1", storage.ds("c1"))
    assert await st.clones_of(ds) == [storage.ds("c1"), storage.ds("c2")]
    assert await st.origin(storage.ds("c1")) == f"{ds}@build1"


async def test_snapshot_leaves_out_child_datasets(storage: Subject) -> None:
    st = storage.storage
    ds = storage.ds("a")
    await st.create(ds)
    await st.create(f"{ds}/child")
    await write(storage, f"{ds}/child", "file", "child data")
    await write(storage, ds, "own", "parent data")
    await st.snapshot(f"{ds}@s")
    await st.clone(f"{ds}@s", storage.ds("c"))
    assert await read(storage, storage.ds("c"), "own") == "parent data"
    assert await read(storage, storage.ds("c"), "child/file") is None


async def test_destroy_with_dependent_clone_is_busy_until_the_clone_goes(storage: Subject) -> None:
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    clone = storage.ds("container1")
    await st.clone(snap, clone)

    with pytest.raises(DatasetBusy, match=clone):
        await st.destroy(ds)
    with pytest.raises(DatasetBusy, match=clone):
        await st.destroy_snapshot(snap)
    assert await st.exists(ds) and await st.exists(snap)
    assert await read(storage, ds, "etc/motd") == "from the image\n"

    await st.destroy(clone)
    assert await st.clones_of(ds) == []
    await st.destroy(ds)
    assert not await st.exists(ds)
    assert not await st.exists(snap)


async def test_recursive_destroy_takes_clones_inside_the_tree(storage: Subject) -> None:
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await st.clone(snap, f"{ds}/inner")
    await st.destroy(ds)
    assert not await st.exists(ds)
    assert not await st.exists(f"{ds}/inner")


async def test_rollback_past_a_cloned_snapshot_is_busy(storage: Subject) -> None:
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await st.snapshot(f"{ds}@later")
    await st.clone(f"{ds}@later", storage.ds("c"))
    with pytest.raises(DatasetBusy, match=storage.ds("c")):
        await st.rollback(snap)
    assert await st.list_snapshots(ds) == [snap, f"{ds}@later"]


# --------------------------------------------------------------------------- rename


async def test_rename_moves_content_and_snapshots(storage: Subject) -> None:
    st = storage.storage
    ds, _ = await with_snapshot(storage)
    await st.create(f"{ds}/child")
    await st.snapshot(f"{ds}/child@s")
    target = storage.ds("renamed.v2")
    await st.rename(ds, target)
    assert not await st.exists(ds)
    assert await read(storage, target, "etc/motd") == "from the image\n"
    assert await st.list_snapshots(target) == [f"{target}@image"]
    assert await st.list_children(target) == [f"{target}/child"]
    assert await st.list_snapshots(f"{target}/child") == [f"{target}/child@s"]
    await write(storage, target, "still-writable", "yes")


async def test_renamed_clone_keeps_its_origin(storage: Subject) -> None:
    """A finished build container is renamed into image/<id> and keeps its origin."""
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await st.create(storage.ds("image"))
    build = storage.ds("build")
    await st.clone(snap, build)
    await write(storage, build, "built", "yes")
    image = storage.ds("image/child")
    await st.rename(build, image)

    assert await st.origin(image) == snap
    assert await st.clones_of(ds) == [image]
    assert await read(storage, image, "built") == "yes"
    with pytest.raises(DatasetBusy, match=image):
        await st.destroy(ds)
    # Renaming the origin carries the dependency along.
    await st.rename(ds, storage.ds("base"))
    assert await st.origin(image) == f"{storage.ds('base')}@image"
    assert await st.clones_of(storage.ds("base")) == [image]


async def test_rename_onto_an_existing_dataset_fails(storage: Subject) -> None:
    st = storage.storage
    await st.create(storage.ds("a"))
    await st.create(storage.ds("b"))
    with pytest.raises(StorageError):
        await st.rename(storage.ds("a"), storage.ds("b"))
    with pytest.raises(StorageError):
        await st.rename(storage.ds("missing"), storage.ds("c"))
    assert await st.exists(storage.ds("a")) and await st.exists(storage.ds("b"))


async def test_a_new_storage_object_sees_the_same_state(storage: Subject) -> None:
    """What the daemon finds after a restart."""
    st = storage.storage
    ds, snap = await with_snapshot(storage)
    await st.snapshot(f"{ds}@later")
    await st.clone(snap, storage.ds("c"))
    again = storage.reopen()
    assert await again.exists(ds) and await again.exists(snap)
    assert await again.list_snapshots(ds) == [snap, f"{ds}@later"]
    assert await again.list_children(storage.root) == [storage.ds("c"), ds]
    assert await again.origin(storage.ds("c")) == snap
    assert await again.clones_of(ds) == [storage.ds("c")]
    assert await again.mountpoint(ds) == await st.mountpoint(ds)
    with pytest.raises(DatasetBusy):
        await again.destroy(ds)


# --------------------------------------------------------------------------- zfs-fuse timing


async def test_destroy_and_rename_right_after_clone(storage: Subject) -> None:
    """zfs-fuse says "dataset is busy" for a moment after a clone or create."""
    st = storage.storage
    _, snap = await with_snapshot(storage)
    for i in range(3):
        await st.clone(snap, storage.ds(f"c{i}"))
        await st.destroy(storage.ds(f"c{i}"))
    await st.clone(snap, storage.ds("r"))
    await st.rename(storage.ds("r"), storage.ds("r2"))
    assert await read(storage, storage.ds("r2"), "etc/motd") == "from the image\n"
    await st.destroy(storage.ds("r2"))
    await st.create(storage.ds("n"))
    await st.destroy(storage.ds("n"))
    assert await st.list_children(storage.root) == [storage.ds("img")]


# --------------------------------------------------------------------------- space, names


async def test_used_space_counts_written_data(storage: Subject) -> None:
    st, ds = storage.storage, storage.ds("a")
    await st.create(ds)
    (await st.mountpoint(ds) / "blob").write_bytes(os.urandom(256 * 1024))
    deadline = time.monotonic() + 10
    while (used := await st.used_space(ds)) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # zfs accounts for new data when the transaction group syncs
    assert used > 0


INVALID_NAMES = [
    "",
    "-rf",
    "-o",
    "pool/-x",
    "a/../b",
    "../etc",
    "a/./b",
    "/abs",
    "a//b",
    "a/b/",
    "a b",
    "a;rm -rf /",
    "a$(reboot)",
    "a@b@c",
    "a@",
    "@s",
    "a/.hidden",
    "x" * 300,
    "a\nb",
]


async def test_invalid_names_are_refused_before_any_command_runs(storage: Subject) -> None:
    st = storage.storage
    _, snap = await with_snapshot(storage)
    storage.commands.clear()
    calls = []
    for bad in INVALID_NAMES:
        calls += [
            st.create(bad),
            st.destroy(bad),
            st.snapshot(bad),
            st.destroy_snapshot(bad),
            st.clone(snap, bad),
            st.clone(bad, storage.ds("x")),
            st.rollback(bad),
            st.rename(storage.ds("img"), bad),
            st.rename(bad, storage.ds("x")),
            st.exists(bad),
            st.list_snapshots(bad),
            st.list_children(bad),
            st.clones_of(bad),
            st.origin(bad),
            st.mountpoint(bad),
            st.used_space(bad),
        ]
    for call in calls:
        with pytest.raises(StorageError):
            await call
    assert storage.commands == []
    # A snapshot where a dataset is wanted (and the reverse) is refused too.
    for call in (st.create(snap), st.snapshot(storage.ds("img")), st.clone(snap, snap)):
        with pytest.raises(StorageError):
            await call
    assert storage.commands == []
    assert await st.list_children(storage.root) == [storage.ds("img")]


async def test_destroy_refuses_while_something_is_mounted_inside(
    storage: Subject, tmp_path: Path
) -> None:
    st, ds = storage.storage, storage.ds("a")
    await st.create(ds)
    source = tmp_path / "volume"
    source.mkdir()
    (source / "precious").write_text("keep me")
    target = await st.mountpoint(ds) / "mnt"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True, timeout=10)
    try:
        with pytest.raises(DatasetBusy):
            await st.destroy(ds)
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=10)
    assert (source / "precious").read_text() == "keep me"
    await st.destroy(ds)
    assert (source / "precious").read_text() == "keep me"


# --------------------------------------------------------------------------- zfs only


@pytest.mark.zfs
async def test_zfs_copy_is_an_independent_dataset(zfs_root) -> None:
    """`copy` (zfs send | zfs receive) backs the zfs-copy image method."""
    st = ZfsStorage(zfs_root.pool.zfs, backend="cli")
    source, target = f"{zfs_root.dataset}/src", f"{zfs_root.dataset}/copy"
    await st.create(source)
    (await st.mountpoint(source) / "base.txt").write_text("base system")
    await st.snapshot(f"{source}@xfer")
    await st.copy(f"{source}@xfer", target)

    assert (await st.mountpoint(target) / "base.txt").read_text() == "base system"
    assert await st.origin(target) is None
    assert await st.list_snapshots(target) == [f"{target}@xfer"]
    assert await st.clones_of(source) == []
    await st.destroy(source)
    assert (await st.mountpoint(target) / "base.txt").read_text() == "base system"
    with pytest.raises(StorageError, match="does not exist"):
        await st.copy(f"{source}@xfer", f"{zfs_root.dataset}/again")
