"""What `storage: overlay` adds to the `dir` contract (which it also passes, see
test_storage_contract.py): clones are overlayfs mounts, not copies."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kleened.host import cmd
from kleened.host.base import StorageError
from kleened.host.dirstore import disk_usage
from kleened.host.mountinfo import mounts_under
from kleened.host.overlaystore import OverlayStorage


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OverlayStorage]:
    base = tmp_path / "datasets"
    st = OverlayStorage(base)
    await st.open()
    await st.create("k")
    await st.create("k/image")
    await st.create("k/image/base")
    big = await st.mountpoint("k/image/base") / "big"
    big.write_bytes(os.urandom(4 << 20))
    (await st.mountpoint("k/image/base") / "etc").mkdir()
    (await st.mountpoint("k/image/base") / "etc/motd").write_text("image\n")
    await st.snapshot("k/image/base@image")
    await st.create("k/container")
    yield st
    await OverlayStorage(base).close()
    assert not mounts_under(base)


async def test_a_clone_is_a_mount_over_the_snapshot_not_a_copy(store: OverlayStorage) -> None:
    await store.clone("k/image/base@image", "k/container/c1")
    root = await store.mountpoint("k/container/c1")
    assert str(root) in mounts_under(root)
    assert (root / "etc/motd").read_text() == "image\n"
    assert await store.used_space("k/container/c1") < 64 * 1024  # the 4 MB stayed below
    (root / "etc/motd").write_text("container\n")
    (root / "new").write_bytes(os.urandom(1 << 20))
    assert await store.used_space("k/container/c1") >= 1 << 20
    snapshot = store.base / ".snapshots" / "k/image/base@image"
    assert (snapshot / "etc/motd").read_text() == "image\n"  # the image is untouched
    # a snapshot of the clone is a copy of what the container sees
    await store.snapshot("k/container/c1@s1")
    await store.clone("k/container/c1@s1", "k/container/c2")
    c2 = await store.mountpoint("k/container/c2")
    assert (c2 / "etc/motd").read_text() == "container\n" and (c2 / "new").exists()


async def test_clones_come_back_after_a_restart_and_go_with_destroy(
    store: OverlayStorage,
) -> None:
    await store.clone("k/image/base@image", "k/container/c1")
    root = await store.mountpoint("k/container/c1")
    (root / "written").write_text("kept\n")
    await store.close()  # the daemon stops (or the host reboots)
    assert str(root) not in mounts_under(root)
    again = OverlayStorage(store.base)
    await again.open()
    assert (root / "written").read_text() == "kept\n"
    assert (root / "etc/motd").read_text() == "image\n"
    await again.destroy("k/container/c1")
    assert not root.exists() and not mounts_under(store.base / "k")
    assert not (store.base / ".snapshots" / "k/container/c1").exists()  # its layers too


async def test_rename_and_rollback_of_a_clone(store: OverlayStorage) -> None:
    await store.clone("k/image/base@image", "k/container/b")
    (await store.mountpoint("k/container/b") / "step").write_text("1\n")
    await store.snapshot("k/container/b@one")
    (await store.mountpoint("k/container/b") / "step").write_text("2\n")
    # what a build's end does: the container becomes an image
    await store.rename("k/container/b", "k/image/built")
    built = await store.mountpoint("k/image/built")
    assert str(built) in mounts_under(built)
    assert (built / "step").read_text() == "2\n"
    assert await store.origin("k/image/built") == "k/image/base@image"
    # a rollback makes it a plain copy of the snapshot
    await store.rollback("k/image/built@one")
    assert (built / "step").read_text() == "1\n"
    assert str(built) not in mounts_under(built)
    assert (built / "big").stat().st_size == 4 << 20
    assert disk_usage(built) >= 4 << 20


async def test_a_failed_mount_leaves_no_dataset(store: OverlayStorage) -> None:
    async def refusing(argv, **kw):  # type: ignore[no-untyped-def]
        return cmd.CommandResult(tuple(argv), 32, b"", b"mount: permission denied")

    broken = OverlayStorage(store.base, runner=refusing)
    with pytest.raises(StorageError, match="permission denied"):
        await broken.clone("k/image/base@image", "k/container/x")
    assert not await broken.exists("k/container/x")
    assert not (store.base / "k/container/x").exists()
    assert not (store.base / ".snapshots" / "k/container/x").exists()
    assert not await OverlayStorage(store.base).exists("k/container/x")


async def test_a_clone_that_cannot_be_mounted_does_not_stop_the_others(
    store: OverlayStorage, caplog: pytest.LogCaptureFixture
) -> None:
    await store.snapshot("k/image/base@second")
    await store.clone("k/image/base@image", "k/container/good")
    await store.clone("k/image/base@second", "k/container/bad")
    await store.close()
    shutil.rmtree(store.base / ".snapshots" / "k/image/base@second")  # its lower layer is gone
    again = OverlayStorage(store.base)
    await again.open()  # a daemon must still start
    good, bad = (
        await again.mountpoint("k/container/good"),
        await again.mountpoint("k/container/bad"),
    )
    assert (good / "etc/motd").read_text() == "image\n"
    assert str(bad) not in mounts_under(bad)
    assert "cannot mount 'k/container/bad'" in caplog.text
