"""Downloading and unpacking base-system archives for image creation.

Downloads go to a unique temporary file next to the datasets (never a shared
fixed path, §14.5.2) and report progress; archives are unpacked by tar(1),
which recognises xz, gzip, zstd and plain tar by their content.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kleened.host.base import HostError

PROGRESS_INTERVAL = 0.5  # seconds between progress lines
CHUNK = 1 << 20


class FetchError(HostError):
    pass


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


async def download(url: str, dest: Path) -> AsyncIterator[str]:
    """Copy `url` (http, https or file) to `dest`, yielding progress lines."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        source = Path(unquote(parts.path))
        if not source.is_file():
            raise FetchError(f"could not fetch file from url: {source} does not exist")
        await asyncio.to_thread(shutil.copyfile, source, dest)
        yield f"copied {_mb(source.stat().st_size)} from {source}\n"
        return
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"could not fetch file from url: unsupported scheme '{parts.scheme}'")
    # Imported here: httpx costs the idle daemon ~7 MB and is needed only now.
    import httpx

    timeout = httpx.Timeout(30.0, read=60.0)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=True, trust_env=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise FetchError(
                    f"could not fetch file from url: HTTP status {response.status_code}"
                )
            total = int(response.headers.get("content-length") or 0)
            done = 0
            last = 0.0
            with dest.open("wb") as out:
                async for chunk in response.aiter_bytes(CHUNK):
                    await asyncio.to_thread(out.write, chunk)
                    done += len(chunk)
                    now = time.monotonic()
                    if now - last >= PROGRESS_INTERVAL:
                        last = now
                        of = f" of {_mb(total)} ({100 * done // total}%)" if total else ""
                        yield f"fetched {_mb(done)}{of}\n"
            yield f"fetched {_mb(done)}\n"
    except httpx.HTTPError as err:
        raise FetchError(f"could not fetch file from url: {err}") from err


async def extract(archive: Path, dest: Path) -> AsyncIterator[str]:
    """Unpack with `tar -xvf`, yielding `Extracted <n> files...` every 100 entries."""
    proc = await asyncio.create_subprocess_exec(
        "tar",
        "-xvpf",
        str(archive),
        "-C",
        str(dest),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    count = 0
    stderr_task = asyncio.create_task(proc.stderr.read())
    async for _line in proc.stdout:
        count += 1
        if count % 100 == 0:
            yield f"Extracted {count} files...\n"
    errors = (await stderr_task).decode(errors="replace").strip()
    if await proc.wait() != 0:
        raise FetchError(f"could not extract tar archive: {errors}")
    yield f"Extracted {count} files...\n"
