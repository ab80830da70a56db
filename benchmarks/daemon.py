"""A `kleened serve` of the benchmark's own (temporary data_root and socket) and
an async API client for it: containers, execs over the /exec/start WebSocket,
images over /images/create.

Reuses the test fixtures' `DaemonProcess` (start, ping, klee), never the
system socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fixtures.daemon import DaemonProcess, test_config

WS_TIMEOUT = 120.0


def start_daemon(tmp: Path, **extra: Any) -> DaemonProcess:
    """A daemon whose every path is under `tmp` (dir storage unless `extra` says)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = test_config(tmp, **extra)
    path = tmp / "kleened.yaml"
    path.write_text(yaml.safe_dump(cfg))
    daemon = DaemonProcess(
        config_path=path, socket=tmp / "kleened.sock", log_path=tmp / "kleened.log"
    )
    daemon.start(timeout=60)
    return daemon


def stop_daemon(daemon: DaemonProcess) -> None:
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):  # stop() has killed it then
        daemon.stop(signal.SIGTERM, timeout=30)


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` and its children (VmRSS, kB)."""
    total = 0
    for proc in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(p) for p in text.split()]
    return [k for kid in kids for k in (kid, *_children(kid))]


@dataclass
class ExecResult:
    code: int | None
    reason: str
    nbytes: int


class Api:
    """Async client on the daemon's UNIX socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket)),
            base_url="http://localhost",
            timeout=120,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.http.request(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()

    async def create_container(
        self, image: str, cmd: list[str], mounts: list[dict[str, Any]] | None = None
    ) -> str:
        body: dict[str, Any] = {"image": image, "cmd": cmd, "network_driver": "host"}
        if mounts:
            body["mounts"] = mounts
        return (await self._json("POST", "/containers/create", json=body))["id"]

    async def create_exec(self, container: str, cmd: list[str] | None = None) -> str:
        body = {"container_id": container, "cmd": cmd or []}
        return (await self._json("POST", "/exec/create", json=body))["id"]

    async def start_exec(
        self, exec_id: str, *, start_container: bool, attach: bool = True
    ) -> ExecResult:
        """Open /exec/start, send the config, read every frame until the close."""
        config = {"exec_id": exec_id, "attach": attach, "start_container": start_container}
        nbytes = 0
        async with websockets.unix_connect(
            str(self.socket), "ws://localhost/exec/start", max_size=2**22
        ) as ws:
            await ws.send(json.dumps(config))
            try:
                first = await asyncio.wait_for(ws.recv(), WS_TIMEOUT)
                if '"msg_type":"starting"' not in first:
                    nbytes += len(first)
                while True:
                    frame = await asyncio.wait_for(ws.recv(), WS_TIMEOUT)
                    nbytes += len(frame)
            except ConnectionClosed:
                pass
            return ExecResult(ws.close_code, ws.close_reason or "", nbytes)

    async def run_cycle(self, cmd: list[str], image: str = "base") -> ExecResult:
        """What `klee run IMAGE CMD` does: create, exec create, start attached."""
        cid = await self.create_container(image, cmd)
        eid = await self.create_exec(cid)
        result = await self.start_exec(eid, start_container=True)
        if result.code != 1000 or "exit-code 0" not in result.reason:
            raise RuntimeError(f"run cycle failed: {result.code} {result.reason}")
        return result

    async def containers(self, all_: bool = True) -> list[dict[str, Any]]:
        return await self._json(
            "GET", "/containers/list", params={"all": "true" if all_ else "false"}
        )

    async def inspect(self, container: str) -> dict[str, Any]:
        return await self._json("GET", f"/containers/{container}/inspect")

    async def stop_container(self, container: str) -> None:
        await self._json("POST", f"/containers/{container}/stop")

    async def remove_container(self, container: str) -> None:
        await self._json("DELETE", f"/containers/{container}")

    async def prune(self) -> list[str]:
        return await self._json("POST", "/containers/prune")

    async def images(self) -> list[dict[str, Any]]:
        return await self._json("GET", "/images/list")

    async def _image_session(self, path: str, config: dict[str, Any], what: str) -> None:
        """Send an image WebSocket's config, read its frames; it must close with 1000."""
        async with websockets.unix_connect(
            str(self.socket), f"ws://localhost{path}", max_size=2**22
        ) as ws:
            await ws.send(json.dumps(config))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 600)
            except ConnectionClosed:
                pass
            if ws.close_code != 1000:
                raise RuntimeError(f"{what} failed: {ws.close_code} {ws.close_reason}")

    async def build(self, context: Path, tag: str) -> None:
        """/images/build of `context`'s Dockerfile from `base`, quietly."""
        config = {
            "context": str(context),
            "dockerfile": "Dockerfile",
            "quiet": True,
            "cleanup": True,
            "tag": tag,
            "buildargs": {},
            "container_config": {"image": "base", "cmd": [], "network_driver": "host"},
        }
        await self._image_session("/images/build", config, "build")

    async def create_image(self, url: str, tag: str) -> str:
        """/images/create with `fetch`; returns the new image's id."""
        config = {"method": "fetch", "url": url, "tag": tag, "dns": False, "localtime": False}
        await self._image_session("/images/create", config, "image create")
        name = tag.split(":")[0]
        for image in await self.images():
            if image["name"] == name:
                return image["id"]
        raise RuntimeError(f"image {tag} not listed after create")

    async def websocket_available(self, path: str) -> str | None:
        """None when `path` accepts a WebSocket, else why not."""
        try:
            async with websockets.unix_connect(str(self.socket), f"ws://localhost{path}") as ws:
                await ws.close()
                return None
        except InvalidStatus as err:
            return f"WebSocket handshake on {path} refused with HTTP {err.response.status_code}"
        except (OSError, ConnectionClosed) as err:
            return f"WebSocket on {path} failed: {err}"


async def cleanup_containers(api: Api, deadline: float = 120.0) -> None:
    """Stop what runs, then remove everything (the jails outlive the daemon)."""
    end = time.monotonic() + deadline
    for c in await api.containers():
        if c["running"]:
            await api.stop_container(c["id"])
    await api.prune()
    for c in await api.containers():
        if time.monotonic() > end:
            break
        await api.remove_container(c["id"])
