"""What every case shares: the temp dir, the dir-storage daemon with its `base`
image, its API client, the floors and the budget."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Budget, Row
from benchmarks.daemon import Api
from benchmarks.jail_start import Floors
from tests.fixtures.daemon import DaemonProcess

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


@dataclass
class Context:
    tmp: Path
    daemon: DaemonProcess
    api: Api
    floors: Floors
    busybox: Path  # a busybox tree nobody else writes to
    archive_url: str  # base URL serving rootfs.tar and big.tar
    runs: int
    budget: Budget
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    async def jid(self, container: str) -> int:
        for c in await self.api.containers():
            if c["id"] == container and c["jid"]:
                return int(c["jid"])
        raise RuntimeError(f"container {container} is not running")

    async def klee(self, *args: str) -> None:
        env = {**os.environ, "KLEE_HOST": f"http://{self.daemon.socket}"}
        env.pop("KLEE_CONFIG", None)
        process = await asyncio.create_subprocess_exec(
            str(BIN / "klee"),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"klee {' '.join(args)}: {out.decode(errors='replace')}")
