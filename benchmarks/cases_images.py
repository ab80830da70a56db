"""6 and 7: container create cost against image size (ZFS and dir storage), and a
10-step build against its RUN commands run directly."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.cases_run import CLIENTS, api_rates
from benchmarks.common import Row, median_ms, skipped, timed
from benchmarks.context import Context
from benchmarks.daemon import Api, cleanup_containers, start_daemon, stop_daemon
from benchmarks.zfspool import ZfsUnavailable, zfs_pool

S6, S7 = "6 create cost", "7 build"
BUILD_STEPS = [f"seq 1 20000 > /tmp/seq{i}; wc -l /tmp/seq{i}" for i in range(10)]


async def _create_cost(api: Api, image: str, runs: int) -> float:
    created: list[str] = []

    async def create() -> None:
        created.append(await api.create_container(image, ["/bin/true"]))

    samples = await timed(create, runs, warmup=1)
    for cid in created:
        await api.remove_container(cid)
    return median_ms(samples)


async def _sizes(ctx: Context, api: Api, storage: str, big_mb: float) -> None:
    runs = max(10, ctx.runs // 2)
    await api.create_image(f"{ctx.archive_url}/rootfs.tar", "small")
    await api.create_image(f"{ctx.archive_url}/big.tar", "big")
    small = await _create_cost(api, "small", runs)
    big = await _create_cost(api, "big", runs)
    target = "<=1.5x" if storage == "zfs" else ""
    met = big <= 1.5 * small if storage == "zfs" else None
    ctx.add(
        Row(S6, f"create on {storage}, {big_mb:.0f} MB image", big, "ms",
            f"create on {storage}, 2 MB image", small, target, met, runs)
    )  # fmt: skip


async def create_cost(ctx: Context, big_mb: float) -> None:
    """dir storage on the suite's daemon; overlay and ZFS (on a zfs-fuse pool of
    our own) on daemons of their own."""
    await _sizes(ctx, ctx.api, "dir", big_mb)
    daemon = start_daemon(ctx.tmp / "overlay-daemon", storage="overlay")
    api = Api(daemon.socket)
    try:
        await _sizes(ctx, api, "overlay", big_mb)
        runs = ctx.runs
        await api.create_image(f"{ctx.archive_url}/rootfs.tar", "base")
        cycle = median_ms(await timed(lambda: api.run_cycle(["/bin/true"]), runs, warmup=2))
        dir_cycle = next((r.value for r in ctx.rows if r.name.startswith("API run cycle (")), None)
        ctx.add(
            Row("1 run cycle", "API run cycle on overlay storage", cycle, "ms",
                "the same on dir storage", dir_cycle, samples=runs)
        )  # fmt: skip
        await api.prune()
        rate = statistics.median(await api_rates(daemon.socket, 3, 4.0))
        dir_rate = next((r.value for r in ctx.rows if r.name.startswith("API run cycles/s")), None)
        ctx.add(
            Row("3 throughput", f"API run cycles/s, {CLIENTS} clients, overlay storage", rate,
                "cycles/s", "the same on dir storage", dir_rate, ">=50/s", rate >= 50, 3,
                higher_is_better=True)
        )  # fmt: skip
    finally:
        await cleanup_containers(api)
        await api.close()
        stop_daemon(daemon)
    if ctx.budget.left() < 180:
        ctx.add(skipped(S6, "create on zfs", "out of time budget", "<=1.5x"))
        return
    try:
        with zfs_pool(ctx.tmp / "zfs") as pool:
            dataset = f"{pool.name}/bench"
            subprocess.run([pool.zfs, "create", dataset], check=True, capture_output=True)
            subprocess.run(
                [pool.zfs, "create", f"{dataset}/kleene"], check=True, capture_output=True
            )
            daemon = start_daemon(ctx.tmp / "zfs-daemon", storage="zfs",
                                  kleene_root=f"{dataset}/kleene")  # fmt: skip
            api = Api(daemon.socket)
            try:
                await _sizes(ctx, api, "zfs", big_mb)
            finally:
                await cleanup_containers(api)
                await api.close()
                stop_daemon(daemon)
    except ZfsUnavailable as err:
        ctx.add(skipped(S6, "create on zfs", str(err), "<=1.5x"))


def _run_directly(root: Path) -> float:
    """Seconds for the RUN commands one after another, chrooted, no jail or daemon."""
    begin = time.perf_counter()
    for command in BUILD_STEPS:
        subprocess.run(["chroot", str(root), "/bin/sh", "-c", command],
                       check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - begin


async def build(ctx: Context, runs: int = 3) -> None:
    context = ctx.tmp / "build-context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM base\n" + "".join(f"RUN {command}\n" for command in BUILD_STEPS)
    )
    samples = []
    for i in range(runs):
        begin = time.perf_counter()
        await ctx.api.build(context, f"bench-build:{i}")
        samples.append(time.perf_counter() - begin)
    root = ctx.tmp / "direct-root"
    shutil.copytree(ctx.busybox, root, symlinks=True)
    direct = [await asyncio.to_thread(_run_directly, root) for _ in range(runs)]
    shutil.rmtree(root)
    ctx.add(
        Row(S7, f"build of {len(BUILD_STEPS)} RUN steps (/images/build)", median_ms(samples),
            "ms", "the RUN commands chrooted, one after another", median_ms(direct),
            samples=runs, note="each step: exec in the build jail + a snapshot")
    )  # fmt: skip
