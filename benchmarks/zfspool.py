"""A zfs-fuse pool that the benchmark creates and destroys itself: the tests'
recipe (tests/fixtures/zfs.py), which refuses to share a running zfs-fuse."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.zfs import ZfsPool, ZfsUnavailable, own_pool

POOL_SIZE = "1G"

__all__ = ["ZfsUnavailable", "zfs_pool"]


@contextmanager
def zfs_pool(work: Path) -> Iterator[ZfsPool]:
    with own_pool(work, f"klbench{secrets.token_hex(3)}", POOL_SIZE) as pool:
        yield pool
