"""LinuxMounts: real bind mounts on this host, always unmounted again."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kleened.host.base import MountError, Mounts
from kleened.host.linux.mount import LinuxMounts
from kleened.host.mountinfo import unescape

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="bind mounts need root on Linux"
)


@pytest.fixture
async def mounts(tmp_path: Path) -> AsyncIterator[LinuxMounts]:
    mounts = LinuxMounts()
    yield mounts
    for target in await mounts.mounted_under(tmp_path):
        await mounts.unmount(target)


def make_dirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


def test_unescape() -> None:
    assert unescape(r"/a\040b\011c\012d\134e") == "/a b\tc\nd\\e"


async def test_implements_the_protocol(mounts: LinuxMounts) -> None:
    assert isinstance(mounts, Mounts)


async def test_bind_a_directory(mounts: LinuxMounts, tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "root/target"
    make_dirs(source, target)
    (source / "file").write_text("hello")
    await mounts.mount_nullfs(source, target)
    assert await mounts.is_mounted(target)
    assert (target / "file").read_text() == "hello"
    (target / "written").write_text("back")
    assert (source / "written").read_text() == "back"
    await mounts.unmount(target)
    assert not await mounts.is_mounted(target)
    assert not (target / "file").exists()


async def test_bind_a_regular_file(mounts: LinuxMounts, tmp_path: Path) -> None:
    source, target = tmp_path / "source.conf", tmp_path / "root/etc/app.conf"
    source.write_text("setting=1\n")
    make_dirs(target.parent)
    target.touch()
    await mounts.mount_nullfs(source, target)
    assert target.read_text() == "setting=1\n"
    assert await mounts.mounted_under(tmp_path / "root") == [target]
    await mounts.unmount(target)
    assert target.read_text() == ""


async def test_read_only_refuses_writes(mounts: LinuxMounts, tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "root/ro"
    make_dirs(source, target)
    await mounts.mount_nullfs(source, target, read_only=True)
    with pytest.raises(OSError) as caught:
        (target / "new").write_text("x")
    assert caught.value.errno == errno.EROFS
    (source / "direct").write_text("still writable at the source")
    assert (target / "direct").exists()


async def test_paths_with_spaces_and_tabs(mounts: LinuxMounts, tmp_path: Path) -> None:
    source, target = tmp_path / "my source", tmp_path / "root/with space\tand tab"
    make_dirs(source, target)
    await mounts.mount_nullfs(source, target)
    assert await mounts.is_mounted(target)
    assert await mounts.mounted_under(tmp_path / "root") == [target]
    await mounts.unmount(target)
    assert not await mounts.is_mounted(target)


async def test_mounted_under_is_deepest_first(mounts: LinuxMounts, tmp_path: Path) -> None:
    source, root = tmp_path / "source", tmp_path / "root"
    make_dirs(source, root / "a", root / "z")
    await mounts.mount_nullfs(source, root / "a")
    make_dirs(root / "a/b/c")  # created in the source, seen through the mount
    await mounts.mount_nullfs(source, root / "a/b/c")
    await mounts.mount_nullfs(source, root / "z")
    found = await mounts.mounted_under(root)
    assert found[0] == root / "a/b/c"
    assert set(found[1:]) == {root / "a", root / "z"}
    assert await mounts.mounted_under(tmp_path / "elsewhere") == []
    # a sibling whose name merely starts the same is not "under"
    assert await mounts.mounted_under(tmp_path / "roo") == []


async def test_refusals(mounts: LinuxMounts, tmp_path: Path) -> None:
    directory, file, link = tmp_path / "dir", tmp_path / "file", tmp_path / "link"
    directory.mkdir()
    file.write_text("x")
    link.symlink_to("/etc")
    with pytest.raises(MountError, match="No such file"):
        await mounts.mount_nullfs(tmp_path / "missing", directory)
    with pytest.raises(MountError, match="No such file"):
        await mounts.mount_nullfs(directory, tmp_path / "missing")
    with pytest.raises(MountError, match="symbolic link"):
        await mounts.mount_nullfs(directory, link)
    with pytest.raises(MountError, match="both must be"):
        await mounts.mount_nullfs(directory, file)
    with pytest.raises(MountError):
        await mounts.unmount(directory)  # not a mount point
    assert await mounts.mounted_under(tmp_path) == []
