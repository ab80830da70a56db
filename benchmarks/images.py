"""Root filesystems and image archives for the benchmarks, served from 127.0.0.1.

The small image is the tests' busybox tree (~2 MB). The large one is that tree
padded with ~200 MB of real files copied from the host's /usr (shared
libraries, locale data, documentation), since debootstrap would need a network
other than 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.rootfs import make_busybox_rootfs

PAD_SOURCES = ("/usr/lib", "/usr/share", "/usr/libexec", "/usr/bin")
PAD_MIN_FILE = 16 * 1024  # skip tiny files: keeps the tree near 2-5k files


def busybox_tree(path: Path) -> Path:
    return make_busybox_rootfs(path)


def padded_tree(path: Path, megabytes: int) -> tuple[Path, int, int]:
    """busybox + real host files under /pad until `megabytes`; (root, bytes, files)."""
    root = make_busybox_rootfs(path)
    want, total, count = megabytes * 1024 * 1024, 0, 0
    for source in PAD_SOURCES:
        for directory, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                src = Path(directory) / name
                try:
                    info = src.lstat()
                except OSError:
                    continue
                if not src.is_file() or src.is_symlink() or info.st_size < PAD_MIN_FILE:
                    continue
                dest = root / "pad" / src.relative_to("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                total += info.st_size
                count += 1
                if total >= want:
                    return root, total, count
    return root, total, count


def tree_size(root: Path) -> tuple[int, int]:
    total = count = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            p = Path(directory) / name
            if not p.is_symlink():
                total += p.stat().st_size
                count += 1
    return total, count


def make_tar(root: Path, target: Path) -> Path:
    with tarfile.open(target, "w") as tar:
        tar.add(root, arcname=".")
    return target


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 for `directory`; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
