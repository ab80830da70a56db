"""A zfs-fuse pool that the benchmark creates and destroys itself.

The same recipe as tests/fixtures/zfs.py (a zfs-fuse of our own, a pool on a
sparse file), as a context manager that refuses to share a running zfs-fuse.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.zfs import ZfsPool, _find, _mounted_under, _retry_busy, _run, _running_zfs_fuse

POOL_SIZE = "1G"


class ZfsUnavailable(Exception):
    pass


@contextmanager
def zfs_pool(work: Path) -> Iterator[ZfsPool]:
    daemon, zfs, zpool = _find("zfs-fuse"), _find("zfs"), _find("zpool")
    if not (daemon and zfs and zpool):
        raise ZfsUnavailable("zfs-fuse is not installed")
    others = _running_zfs_fuse()
    if others:
        raise ZfsUnavailable(f"a zfs-fuse is already running (pid {others}); not sharing it")
    work.mkdir(parents=True)
    name = f"klbench{secrets.token_hex(3)}"
    log = (work / "zfs-fuse.log").open("wb")
    process = subprocess.Popen(
        [daemon, "--no-daemon", "--no-kstat-mount"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    created = False
    try:
        deadline = time.monotonic() + 15
        while _run([zpool, "list"], check=False).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ZfsUnavailable(
                    "zfs-fuse did not start: " + (work / "zfs-fuse.log").read_text()
                )
            time.sleep(0.1)
        _run(["truncate", "-s", POOL_SIZE, str(work / "pool.img")])
        _run([zpool, "create", "-m", str(work / "mnt"), name, str(work / "pool.img")])
        created = True
        yield ZfsPool(name=name, mountpoint=work / "mnt", zfs=zfs, zpool=zpool)
    finally:
        if created:
            _retry_busy([zpool, "destroy", "-f", name])
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        log.close()
        for point in _mounted_under(work):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _run(["umount", "-l", point], check=False)
        if not _mounted_under(work):
            shutil.rmtree(work, ignore_errors=True)
