"""Build and locate `kleened-reaper`, the C helper behind Linux jails.

The binary is compiled once per source version into a cache directory
(`<libexec_dir>/kleened-reaper`, with the source's hash next to it) and rebuilt
when `reaper.c` changes. A static build is preferred, so it runs whatever the
container's libc; without a static libc it falls back to a dynamic one. A
jail never costs a new Python interpreter: only this binary runs per start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kleened.host.base import JailError

SOURCE = Path(__file__).with_name("reaper.c")
BINARY_NAME = "kleened-reaper"
COMPILE_TIMEOUT = 120.0
CFLAGS = ["-O2", "-Wall", "-D_FORTIFY_SOURCE=2"]

# libexec dirs whose binary was checked against the current source in this process
_verified: dict[Path, Path] = {}


def source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def binary_path(libexec_dir: Path) -> Path:
    return libexec_dir / BINARY_NAME


def _stamp_path(libexec_dir: Path) -> Path:
    return libexec_dir / f"{BINARY_NAME}.sha256"


def _is_current(libexec_dir: Path, digest: str) -> bool:
    binary = binary_path(libexec_dir)
    try:
        return os.access(binary, os.X_OK) and _stamp_path(libexec_dir).read_text() == digest
    except OSError:
        return False


def _compile(output: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise JailError("cannot build kleened-reaper: no C compiler (cc) found")
    errors = ""
    for extra in (["-static"], []):
        argv = [compiler, *CFLAGS, *extra, "-o", str(output), str(SOURCE)]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise JailError(f"cannot build kleened-reaper: {err}") from err
        if done.returncode == 0:
            return
        errors = done.stderr.strip()
    raise JailError(f"cannot build kleened-reaper: {errors[-2000:]}")


def ensure_reaper_sync(libexec_dir: Path) -> Path:
    """The path of an up-to-date binary, compiling it if needed (blocking)."""
    libexec_dir = Path(libexec_dir)
    if libexec_dir in _verified:
        return _verified[libexec_dir]
    digest = source_hash()
    binary = binary_path(libexec_dir)
    if not _is_current(libexec_dir, digest):
        libexec_dir.mkdir(parents=True, exist_ok=True)
        # One build at a time across daemons and test workers sharing the dir.
        with open(libexec_dir / f".{BINARY_NAME}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _is_current(libexec_dir, digest):
                fd, tmp = tempfile.mkstemp(prefix=f".{BINARY_NAME}.", dir=libexec_dir)
                os.close(fd)
                try:
                    _compile(Path(tmp))
                    os.chmod(tmp, 0o755)
                    # rename is atomic: running jails keep the old inode
                    os.replace(tmp, binary)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                _stamp_path(libexec_dir).write_text(digest)
    _verified[libexec_dir] = binary
    return binary


async def ensure_reaper(libexec_dir: Path) -> Path:
    """`ensure_reaper_sync` without blocking the event loop when a build is needed."""
    cached = _verified.get(Path(libexec_dir))
    if cached is not None:
        return cached
    return await asyncio.to_thread(ensure_reaper_sync, libexec_dir)
