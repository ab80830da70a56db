"""1-3: the run cycle against its floor and peers, exec into a running
container, and throughput with 16 parallel clients."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.common import Row, median_ms, skipped, timed
from benchmarks.context import Context
from benchmarks.daemon import Api
from kleened.host.process import spawn

S1, S2, S3 = "1 run cycle", "2 exec", "3 throughput"
CLIENTS = 16


async def _run_argv(argv: list[str]) -> None:
    process = await spawn(argv)
    code = await process.wait()
    if code != 0:
        raise RuntimeError(f"{argv[0]} exited with {code}")


def podman_argv(root: Path) -> list[str] | str:
    """The podman command for the same rootfs, or why it cannot run here."""
    podman = shutil.which("podman")
    if podman is None:
        return "podman is not installed"
    # runc, not crun (crun refuses hybrid cgroups here); rlimits may only be
    # lowered without CAP_SYS_RESOURCE, and podman raises nproc/nofile by default.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    argv = [podman, "run", "--rm", "--runtime", "runc", "--network", "none"]
    argv += ["--ulimit", f"nofile={min(nofile, 1024)}:{min(nofile, 1024)}"]
    argv += ["--ulimit", "nproc=1024:1024", "--rootfs", str(root), "/bin/true"]
    probe = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"podman run failed here: {probe.stderr.strip()[-200:]}"
    return argv


def docker_argv() -> list[str] | str:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    probe = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return "docker CLI only, no daemon: " + (probe.stderr.strip().splitlines() or [""])[-1]
    # docker cannot run a bare rootfs: it would need an imported image.
    return "docker daemon present but the benchmark only runs a bare rootfs (no import)"


async def run_cycle(ctx: Context) -> None:
    runs = ctx.runs
    floor = median_ms(await timed(ctx.floors.jail_true, runs))
    bare = median_ms(await timed(ctx.floors.unshare_true, runs))
    ctx.add(
        Row(
            S1,
            "floor: reaper jail /bin/true (LinuxJails)",
            floor,
            "ms",
            "bare unshare --root",
            bare,
            samples=runs,
        )
    )

    api_ms = median_ms(await timed(lambda: ctx.api.run_cycle(["/bin/true"]), runs, warmup=2))
    ctx.add(
        Row(
            S1,
            "API run cycle (create, exec create, WS start..close)",
            api_ms,
            "ms",
            "floor (reaper jail)",
            floor,
            "<=10x floor",
            api_ms <= 10 * floor,
            runs,
        )
    )

    klee_runs = max(5, runs // 2)
    klee_ms = median_ms(await timed(lambda: ctx.klee("run", "base", "/bin/true"), klee_runs))
    ctx.add(
        Row(
            S1,
            "klee run base /bin/true",
            klee_ms,
            "ms",
            "floor (reaper jail)",
            floor,
            samples=klee_runs,
            note="includes klee's Python start-up",
        )
    )

    podman_root = ctx.tmp / "podman-rootfs"
    shutil.copytree(ctx.busybox, podman_root, symlinks=True)
    argv = await asyncio.to_thread(podman_argv, podman_root)
    if isinstance(argv, str):
        ctx.add(skipped(S1, "podman run --rm", argv, "API <=1/5 of podman"))
    else:
        podman_runs = max(5, runs // 2)
        podman = median_ms(await timed(lambda: _run_argv(argv), podman_runs))
        ctx.add(
            Row(
                S1,
                "podman run --rm --rootfs (runc, no net)",
                podman,
                "ms",
                "floor (reaper jail)",
                floor,
                samples=podman_runs,
            )
        )
        ctx.add(
            Row(
                S1,
                "API run cycle vs podman",
                api_ms,
                "ms",
                "podman run --rm",
                podman,
                "<=1/5 of podman",
                api_ms <= podman / 5,
                runs,
            )
        )
        ctx.add(
            Row(
                S1,
                "klee run vs podman",
                klee_ms,
                "ms",
                "podman run --rm",
                podman,
                samples=klee_runs,
            )
        )
    reason = await asyncio.to_thread(docker_argv)
    ctx.add(skipped(S1, "docker run --rm", reason))
    shutil.rmtree(podman_root, ignore_errors=True)
    await ctx.api.prune()


async def exec_cycle(ctx: Context) -> None:
    runs = ctx.runs
    cid = await ctx.api.create_container("base", ["/bin/sleep", "3600"])
    await ctx.api.start_exec(await ctx.api.create_exec(cid), start_container=True, attach=False)
    try:
        pid1 = await ctx.jid(cid)

        async def api_exec() -> None:
            eid = await ctx.api.create_exec(cid, ["/bin/true"])
            result = await ctx.api.start_exec(eid, start_container=False)
            if "exit-code 0" not in result.reason:
                raise RuntimeError(f"exec failed: {result.code} {result.reason}")

        nsenter = ["nsenter", f"--target={pid1}", "--all", "--root", "--wdns=/", "/bin/true"]
        api_ms = median_ms(await timed(api_exec, runs, warmup=2))
        bare = median_ms(await timed(lambda: _run_argv(nsenter), runs))
        ctx.add(
            Row(
                S2,
                "API exec /bin/true into running container",
                api_ms,
                "ms",
                "nsenter --all --root",
                bare,
                "<=5x nsenter",
                api_ms <= 5 * bare,
                runs,
            )
        )
    finally:
        await ctx.api.stop_container(cid)
        await ctx.api.remove_container(cid)


async def _rate(worker_count: int, seconds: float, make_worker) -> float:  # type: ignore[no-untyped-def]
    done = 0
    stop = time.monotonic() + seconds

    async def loop(i: int) -> None:
        nonlocal done
        work = await make_worker(i)
        while time.monotonic() < stop:
            await work()
            done += 1

    begin = time.monotonic()
    await asyncio.gather(*(loop(i) for i in range(worker_count)))
    return done / (time.monotonic() - begin)


async def api_rates(socket: Path, windows: int, seconds: float) -> list[float]:
    """Run cycles per second of CLIENTS parallel API clients, per window."""
    clients = [Api(socket) for _ in range(CLIENTS)]
    try:

        async def api_worker(i: int):  # type: ignore[no-untyped-def]
            return lambda: clients[i].run_cycle(["/bin/true"])

        await _rate(CLIENTS, 1.0, api_worker)  # warm-up: connections, caches
        return [await _rate(CLIENTS, seconds, api_worker) for _ in range(windows)]
    finally:
        for client in clients:
            await client.close()


async def throughput(ctx: Context, windows: int = 3, seconds: float = 4.0) -> None:
    try:
        api = await api_rates(ctx.daemon.socket, windows, seconds)
        await ctx.api.prune()

        async def floor_worker(i: int):  # type: ignore[no-untyped-def]
            return lambda: ctx.floors.jail_true(f"tp{os.getpid()}-{i}")

        floor = [await _rate(CLIENTS, seconds, floor_worker) for _ in range(windows)]
    finally:
        await ctx.api.prune()
    value = statistics.median(api)
    ctx.add(
        Row(
            S3,
            f"API run cycles/s, {CLIENTS} parallel clients",
            value,
            "cycles/s",
            f"{CLIENTS} parallel reaper jails",
            statistics.median(floor),
            ">=50/s",
            value >= 50,
            windows,
            note=f"{windows} windows of {seconds:g} s",
            higher_is_better=True,
        )
    )
