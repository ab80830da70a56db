"""Start-to-exit of `/bin/true` in a Linux jail against a bare `unshare`.

    .venv/bin/python benchmarks/jail_start.py [--runs N]

Both are spawned through `host.process.spawn` and awaited the same way, so the
ratio shows what the jail machinery (the C reaper's /dev, pivot_root, user
lookup, relay, state file) costs over util-linux `unshare` doing the bare
namespaces + /proc + chroot. Needs root and busybox-static.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kleened.host.base import JailSpec
from kleened.host.linux.jail import LinuxJails
from kleened.host.process import spawn
from tests.fixtures.rootfs import make_busybox_rootfs


async def timed(action: Callable[[], Awaitable[int]], runs: int) -> list[float]:
    await action()  # warm-up (compiles the reaper on a first run)
    samples = []
    for _ in range(runs):
        begin = time.perf_counter()
        code = await action()
        samples.append(time.perf_counter() - begin)
        if code != 0:
            raise SystemExit(f"run failed with status {code}")
    return samples


UNSHARE = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--mount-proc"]


class Floors:
    """The floor of a run cycle: a jail of the daemon's own kind (the C reaper as
    pid 1 in `root`), started without API, database or storage; and the bare
    util-linux `unshare` below it. `benchmarks/run` reuses both."""

    def __init__(self, base: Path, root: Path) -> None:
        self.root = root
        self.jails = LinuxJails(state_dir=base / "jails", libexec_dir=base / "libexec")

    async def jail_true(self, name: str = "bench") -> int:
        spec = JailSpec(name=name, path=self.root, command=["/bin/true"])
        process = await self.jails.start(spec)
        return await process.wait()

    async def unshare_true(self) -> int:
        process = await spawn([*UNSHARE, f"--root={self.root}", "/bin/true"])
        return await process.wait()


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kleened-bench-") as tmp:
        base = Path(tmp)
        floors = Floors(base, make_busybox_rootfs(base / "rootfs"))
        jail = await timed(floors.jail_true, runs)
        bare = await timed(floors.unshare_true, runs)
    jail_ms, bare_ms = statistics.median(jail) * 1000, statistics.median(bare) * 1000
    print(f"runs per variant:            {runs}")
    print(f"LinuxJails.start + wait:     {jail_ms:.2f} ms (median)")
    print(f"bare unshare --root:         {bare_ms:.2f} ms (median)")
    print(f"ratio jail / unshare:        {jail_ms / bare_ms:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    asyncio.run(main(max(20, parser.parse_args().runs)))
