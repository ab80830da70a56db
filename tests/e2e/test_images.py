"""Image management end to end: klee lsi/isi/tag/rmi/prune and image create.

On `dir` storage with the shared daemon, and on real ZFS (zfs-fuse) with a
daemon whose `kleene_root` lives in the test pool, where `zfs-copy` and
`zfs-clone` are exercised.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from websockets.sync.client import unix_connect

pytestmark = pytest.mark.e2e
ID = r"[0-9a-f]{12}"


def api(daemon, method: str, path: str, **kw):
    with daemon.client() as client:
        return client.request(method, path, **kw)


def images_by_id(daemon) -> dict[str, dict]:
    r = api(daemon, "GET", "/images/list")
    assert r.status_code == 200
    return {i["id"]: i for i in r.json()}


def create_base(daemon, url: str, tag: str) -> str:
    r = daemon.klee("image", "create", "-t", tag, "fetch", url)
    assert r.returncode == 0 and "image created" in r.stdout, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1]


def dataset_dirs(daemon) -> set[str]:
    """Image and container directories of a dir-storage daemon."""
    root = daemon.config_path.parent / "data" / "datasets" / "kleene"
    return {
        f"{kind}/{p.name}"
        for kind in ("image", "container")
        if (root / kind).is_dir()
        for p in (root / kind).iterdir()
    }


@pytest.fixture
def fresh(daemon_factory):
    """A daemon of its own: these tests count images and datasets."""
    return daemon_factory()


def test_list_inspect_tag_remove_prune(fresh, archive_server):
    url = archive_server.url_of("rootfs.tar.gz")
    first = create_base(fresh, url, "base")
    assert re.fullmatch(ID, first)
    img = json.loads(fresh.klee("isi", "base").stdout)
    assert img["id"] == first and (img["name"], img["tag"]) == ("base", "latest")
    assert img["cmd"] == ["/bin/sh", "/etc/rc"] and img["user"] == "root"
    assert img["instructions"] == [] and img["dataset"].endswith(f"/image/{first}")
    assert fresh.klee("isi", "nope").stdout.strip() == "image not found"

    # Tagging moves a name:tag: the second image takes base:latest, the first is untagged.
    second = create_base(fresh, url, "other:1")
    assert fresh.klee("image", "tag", "other:1", "base").stdout.strip() == second
    listed = images_by_id(fresh)
    assert (listed[second]["name"], listed[second]["tag"]) == ("base", "latest")
    assert (listed[first]["name"], listed[first]["tag"]) == ("", "")
    rows = fresh.klee("lsi").stdout
    assert second in rows and first in rows and "base" in rows
    assert api(fresh, "POST", "/images/nope/tag", params={"nametag": "x"}).status_code == 404
    r = api(fresh, "POST", f"/images/{second}/tag", params={"nametag": "-bad:x"})
    assert r.status_code == 404 and "invalid name:tag" in r.json()["message"]

    # In use by a container: refused with the original's message, by either name.
    cid = fresh.klee("create", "base", "true").stdout.strip().splitlines()[0]
    r = fresh.klee("rmi", "base")
    assert r.returncode == 1
    assert r.stdout == f"could not remove image {second} since it is used for containers:\n{cid}\n"
    assert fresh.klee("rmi", "nope").stdout == "Error: No such image: nope\n\n"

    # prune without -a removes only the untagged, unused image
    pruned = fresh.klee("image", "prune", "-f").stdout.split()
    assert pruned == [first]
    assert set(images_by_id(fresh)) == {second}
    assert f"image/{first}" not in dataset_dirs(fresh)
    # -a keeps what a container uses, until the container is gone
    assert fresh.klee("image", "prune", "-a", "-f").stdout.split() == []
    api(fresh, "DELETE", f"/containers/{cid}")
    assert fresh.klee("image", "prune", "-a", "-f").stdout.split() == [second]
    assert images_by_id(fresh) == {}
    assert dataset_dirs(fresh) == set()

    # rmi prints the full id even when given a prefix
    third = create_base(fresh, url, "")
    assert fresh.klee("rmi", third[:6]).stdout.strip() == third


def test_failed_image_creation_leaves_nothing(fresh, archive_server):
    for url in (
        archive_server.url_of("broken.tar.gz"),
        archive_server.url_of("does-not-exist.tar.gz"),
        "http://127.0.0.1:1/rootfs.tar.gz",
    ):
        r = fresh.klee("image", "create", "-t", "bad", "fetch", url)
        assert "image creation failed" in r.stdout, r.stdout
        assert images_by_id(fresh) == {}
        assert dataset_dirs(fresh) == set()
    storage_root = fresh.config_path.parent / "data" / "datasets" / "kleene"
    assert not list(storage_root.glob(".download-*"))


def test_client_leaving_image_creation_leaves_nothing(fresh, archive_server):
    """The client closes right after `starting`: the create is abandoned and cleaned up."""
    config = {
        "method": "fetch",
        "url": archive_server.url_of("rootfs.tar.gz"),
        "tag": "left",
        "dns": False,
        "localtime": False,
        "update": False,
        "autotag": False,
        "zfs_dataset": "",
    }
    with unix_connect(str(fresh.socket), "ws://localhost/images/create") as ws:
        ws.send(json.dumps(config))
        assert json.loads(ws.recv(timeout=10))["msg_type"] == "starting"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        listed = images_by_id(fresh)
        dirs = dataset_dirs(fresh)
        # Either it finished before it noticed (a whole image) or nothing is left.
        if (not listed and not dirs) or (len(listed) == 1 and len(dirs) == 1):
            break
    if listed:
        (only,) = listed
        assert dirs == {f"image/{only}"}
    else:
        assert dirs == set()


# --------------------------------------------------------------------------- ZFS


def zfs(pool, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([pool.zfs, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.zfs
def test_zfs_copy_clone_and_build(daemon_factory, zfs_root, busybox_tree, tmp_path):
    import shutil

    pool = zfs_root.pool
    source = f"{zfs_root.dataset}/source"
    assert zfs(pool, "create", source).returncode == 0
    shutil.copytree(busybox_tree, zfs_root.mountpoint / "source", symlinks=True, dirs_exist_ok=True)
    # kleene_root is made by `kleened init` in production; the daemon makes its children
    assert zfs(pool, "create", f"{zfs_root.dataset}/kleene").returncode == 0
    daemon = daemon_factory(storage="zfs", kleene_root=f"{zfs_root.dataset}/kleene")
    try:
        r = daemon.klee("image", "create", "-t", "copied", "zfs-copy", source)
        assert "image created" in r.stdout, r.stdout
        copied = r.stdout.strip().splitlines()[-1]
        r = daemon.klee("image", "create", "-t", "cloned", "zfs-clone", source)
        assert "image created" in r.stdout, r.stdout
        cloned = r.stdout.strip().splitlines()[-1]
        r = daemon.klee("image", "create", "zfs-copy", f"{zfs_root.dataset}/nope")
        assert "image creation failed: invalid dataset" in r.stdout

        origin = zfs(
            pool, "get", "-H", "-o", "value", "origin", f"{zfs_root.dataset}/kleene/image/{cloned}"
        )
        assert origin.stdout.strip() == f"{source}@{cloned}"
        # the copy's transfer snapshot is gone, the clone's origin stays until its image goes
        snaps = zfs(pool, "list", "-H", "-t", "snapshot", "-o", "name", "-r", source).stdout.split()
        assert snaps == [f"{source}@{cloned}"]

        out = daemon.klee("run", "copied", "cat", "/etc/hostname").stdout
        assert "busybox" in out
        # the container has stopped; its dataset stays mounted (only the jail's
        # own mounts inside it are undone)
        cid = re.findall(ID, out)[0]
        mounted = zfs(
            pool,
            "get",
            "-H",
            "-o",
            "value",
            "mounted",
            f"{zfs_root.dataset}/kleene/container/{cid}",
        )
        assert mounted.stdout.strip() == "yes", mounted
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM cloned\nRUN echo built > /built\nCMD cat /built\n")
        r = daemon.klee("build", "-t", "onzfs", str(ctx), timeout=120)
        assert r.returncode == 0 and "image created" in r.stdout, r.stdout
        built = r.stdout.strip().splitlines()[-1]
        snap = re.search(rf"--> Snapshot created: @({ID})", r.stdout).group(1)
        listing = zfs(
            pool,
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "name",
            "-r",
            f"{zfs_root.dataset}/kleene/image/{built}",
        ).stdout.split()
        assert f"{zfs_root.dataset}/kleene/image/{built}@{snap}" in listing
        assert "built" in daemon.klee("run", "onzfs").stdout
        r = daemon.klee("rmi", "cloned")
        assert f"since it is used for images:\n{built}" in r.stdout
        daemon.stop_containers()
        assert daemon.klee("rmi", "onzfs").stdout.strip() == built
        assert daemon.klee("rmi", "cloned").stdout.strip() == cloned
        assert daemon.klee("rmi", "copied").stdout.strip() == copied
        snaps = zfs(pool, "list", "-H", "-t", "snapshot", "-o", "name", "-r", source).stdout.split()
        assert snaps == []
        children = zfs(pool, "list", "-H", "-o", "name", "-r", f"{zfs_root.dataset}/kleene").stdout
        assert "/image/" not in children and "/container/" not in children
    finally:
        daemon.stop_containers()
        daemon.stop()
