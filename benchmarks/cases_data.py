"""4, 5 and 8: output streaming, list scaling, and the daemon's memory."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

from benchmarks.common import Row, median_ms, timed
from benchmarks.context import Context
from benchmarks.daemon import Api, rss_kb

S4, S5, S8 = "4 streaming", "5 list scaling", "8 memory"
STREAM_MB = 256
LIST_SIZES = (10, 100, 1000)
CREATE_PARALLEL = 8


def _pipe_rate(path: str) -> float:
    """MB/s of `cat path` read from a pipe by this process, 64 KiB at a time."""
    begin = time.perf_counter()
    with subprocess.Popen(["cat", path], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        total = 0
        while chunk := cat.stdout.read1(65536):
            total += len(chunk)
    if total != STREAM_MB << 20:
        raise RuntimeError(f"the pipe delivered {total} bytes")
    return total / (1 << 20) / (time.perf_counter() - begin)


async def streaming(ctx: Context, runs: int = 3) -> None:
    data = ctx.tmp / "stream"
    data.mkdir()
    big = data / "big"
    # Text, as logs are: binary output is valid too but grows by its U+FFFDs.
    # Real pages, not a sparse file: cat must read them.
    line = b"".join(bytes([33 + (i * 7) % 90]) for i in range(63)) + b"\n"
    with big.open("wb") as f:
        block = line * (1 << 14)  # 1 MiB
        for _ in range(STREAM_MB):
            f.write(block)
    mounts = [{"type": "nullfs", "source": str(data), "destination": "/data", "read_only": True}]
    cid = await ctx.api.create_container("base", ["/bin/sleep", "3600"], mounts=mounts)
    await ctx.api.start_exec(await ctx.api.create_exec(cid), start_container=True, attach=False)
    try:
        rates, received = [], []
        for _ in range(runs):
            eid = await ctx.api.create_exec(cid, ["/bin/cat", "/data/big"])
            begin = time.perf_counter()
            result = await ctx.api.start_exec(eid, start_container=False)
            rates.append(result.nbytes / (1 << 20) / (time.perf_counter() - begin))
            received.append(result.nbytes)
        pipe = [await asyncio.to_thread(_pipe_rate, str(big)) for _ in range(runs)]
    finally:
        await ctx.api.stop_container(cid)
        await ctx.api.remove_container(cid)
        big.unlink()
    value = statistics.median(rates)
    complete = all(n >= STREAM_MB << 20 for n in received)
    note = "every byte arrived" if complete else f"bytes received: {received}"
    ctx.add(
        Row(S4, f"cat {STREAM_MB} MB through /exec/start", value, "MB/s", "cat into a pipe",
            statistics.median(pipe), ">=200 MB/s", value >= 200 and complete, runs,
            note=note, higher_is_better=True)
    )  # fmt: skip


async def _create_many(ctx: Context, count: int) -> None:
    queue = asyncio.Queue[int]()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            await ctx.api.create_container("base", ["/bin/true"])

    await asyncio.gather(*(worker() for _ in range(CREATE_PARALLEL)))


async def list_scaling_and_memory(ctx: Context) -> None:
    """Containers are created (not started) up to each size; the list is timed at
    each, and the daemon's RSS is taken idle and at 1000 containers."""
    runs = max(20, ctx.runs)
    await ctx.api.prune()
    # Idle as a service is idle: restarted on its existing database (the first
    # start of all also runs the schema migration, which loads Alembic).
    await ctx.api.close()
    await asyncio.to_thread(ctx.daemon.stop)
    await asyncio.to_thread(ctx.daemon.start, 60)
    ctx.api = Api(ctx.daemon.socket)
    await ctx.api.containers()
    await asyncio.sleep(1)
    idle_kb = rss_kb(ctx.pid)
    bare_kb = await asyncio.to_thread(_bare_python_rss_kb)
    ctx.add(
        Row(S8, "daemon RSS, idle (restarted, no containers)", idle_kb / 1024, "MB",
            "python importing the same libraries", bare_kb / 1024, "<=80 MB",
            idle_kb / 1024 <= 80, 1)
    )  # fmt: skip

    async def list_all() -> None:
        await ctx.api.containers()

    async def list_images() -> None:
        await ctx.api.images()

    trivial = median_ms(await timed(list_images, runs, warmup=3))
    have = 0
    latency: dict[int, float] = {}
    for size in LIST_SIZES:
        if ctx.budget.left() < 60:
            ctx.add(Row(S5, f"list ?all=true, {size} containers", None, "ms",
                        note="skipped: out of time budget"))  # fmt: skip
            break
        await _create_many(ctx, size - have)
        have = size
        latency[size] = median_ms(await timed(list_all, runs, warmup=3))
        target = "<=25 ms" if size == 1000 else ""
        ctx.add(
            Row(S5, f"list ?all=true, {size} containers", latency[size], "ms",
                "GET /images/list (1 image)", trivial, target,
                latency[size] <= 25 if size == 1000 else None, runs)
        )  # fmt: skip
    if have:
        await asyncio.sleep(1)
        full_kb = rss_kb(ctx.pid)
        per = (full_kb - idle_kb) / have
        ctx.add(
            Row(S8, f"daemon RSS growth per container ({have} created)", per, "KB",
                "", None, "<=20 KB", per <= 20, 1,
                note=f"from {idle_kb / 1024:.1f} to {full_kb / 1024:.1f} MB; no baseline")
        )  # fmt: skip
    await ctx.api.prune()


def _bare_python_rss_kb() -> int:
    """RSS of this interpreter importing the daemon's libraries and nothing else."""
    code = (
        "import fastapi, uvicorn, sqlalchemy, aiosqlite, yaml, pydantic\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): print(line.split()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())
