"""The /exec/start WebSocket protocol, frame by frame (reference §5.1-5.2)."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base(shared_daemon, archive_server):
    r = shared_daemon.klee(
        "image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")
    )
    assert r.returncode == 0, r.stderr
    return shared_daemon


def new_exec(
    daemon, cmd: list[str], container: str | None = None, tty: bool = False
) -> tuple[str, str]:
    with daemon.client() as client:
        if container is None:
            r = client.post(
                "/containers/create", json={"image": "base", "cmd": cmd, "network_driver": "host"}
            )
            assert r.status_code == 201, r.text
            container = r.json()["id"]
        r = client.post("/exec/create", json={"container_id": container, "cmd": cmd, "tty": tty})
        assert r.status_code == 201, r.text
        return container, r.json()["id"]


async def session(daemon, first_frame, *, send: list[bytes] = ()) -> tuple[list, int, str]:
    """Open /exec/start, send the config, collect frames until the close."""
    frames: list = []
    async with websockets.unix_connect(str(daemon.socket), "ws://localhost/exec/start") as ws:
        await ws.send(first_frame)
        for data in send:
            await ws.send(data)
        try:
            while True:
                frames.append(await asyncio.wait_for(ws.recv(), 30))
        except ConnectionClosed:
            pass
        return frames, ws.close_code, ws.close_reason


def start(exec_id: str, attach=True, start_container=True) -> str:
    return json.dumps({"exec_id": exec_id, "attach": attach, "start_container": start_container})


async def test_attached_run(base):
    _, exec_id = new_exec(base, ["/bin/sh", "-c", "echo out; echo err >&2"])
    frames, code, reason = await session(base, start(exec_id))
    assert json.loads(frames[0]) == {"data": "", "message": "", "msg_type": "starting"}
    assert "".join(frames[1:]).splitlines() == ["out", "err"]
    assert code == 1000
    assert json.loads(reason) == {
        "data": "",
        "msg_type": "closing",
        "message": f"executable {exec_id} and its container exited with exit-code 0",
    }
    assert len(reason.encode()) <= 123


async def test_binary_config_frame_and_string_booleans(base):
    _, exec_id = new_exec(base, ["/bin/echo", "ok"])
    cfg = json.dumps({"exec_id": exec_id, "attach": "true", "start_container": "true"})
    frames, code, _ = await session(base, cfg.encode())
    assert code == 1000 and "ok\n" in frames


async def test_invalid_config_closes_1002(base):
    frames, code, reason = await session(base, "{not json")
    assert (frames, code) == ([], 1002)
    assert json.loads(reason)["msg_type"] == "error"
    assert json.loads(reason)["message"].startswith("invalid parameters: invalid json")
    frames, code, reason = await session(base, json.dumps({"exec_id": "x", "attach": True}))
    assert code == 1002
    assert json.loads(reason)["message"] == "invalid parameters: Missing field: start_container"
    frames, code, reason = await session(
        base, json.dumps({"exec_id": "x", "attach": "yes", "start_container": True})
    )
    assert json.loads(reason)["message"] == "invalid parameters: Invalid boolean. Got: string"


async def test_start_errors_close_1011_before_any_frame(base):
    frames, code, reason = await session(base, start("doesnotexist"))
    assert (frames, code) == ([], 1011)
    assert json.loads(reason) == {
        "data": "",
        "msg_type": "error",
        "message": "could not find execution instance matching 'doesnotexist'",
    }
    _, exec_id = new_exec(base, ["/bin/true"])
    frames, code, reason = await session(base, start(exec_id, start_container=False))
    assert (frames, code) == ([], 1011)
    assert (
        json.loads(reason)["message"] == "cannot start container when 'start_container' is false."
    )


async def test_detached_then_second_start(base):
    cid, exec_id = new_exec(base, ["/bin/sleep", "30"])
    frames, code, reason = await session(base, start(exec_id, attach=False))
    assert (frames, code) == ([], 1001)
    assert json.loads(reason) == {
        "data": "",
        "msg_type": "closing",
        "message": "succesfully started execution instance in detached mode",
    }
    frames, code, reason = await session(base, start(exec_id))
    assert code == 1011 and json.loads(reason)["message"] in (
        "executable already started",
        f"could not find execution instance matching '{exec_id}'",
    )

    # a second process joins the running container and reports its own end
    _, second = new_exec(base, ["/bin/sh", "-c", "exit 7"], container=cid)
    frames, code, reason = await session(base, start(second, start_container=False))
    assert json.loads(reason)["message"] == f"{second} has exited with exit-code 7"

    # exec stop with force: 137 for the killed process, the container keeps running
    _, third = new_exec(base, ["/bin/sleep", "60"], container=cid)

    async def stop_soon() -> None:
        await asyncio.sleep(0.5)
        with base.client() as client:
            r = client.post(
                f"/exec/{third}/stop", params={"force_stop": "true", "stop_container": "false"}
            )
            assert (r.status_code, r.json()) == (200, {"id": third})

    stopper = asyncio.create_task(stop_soon())
    frames, code, reason = await session(base, start(third, start_container=False))
    await stopper
    assert json.loads(reason)["message"] == f"{third} has exited with exit-code 137"
    with base.client() as client:
        assert client.post(f"/containers/{cid}/stop").status_code == 200


async def test_output_is_valid_utf8_whatever_the_bytes(base):
    # invalid UTF-8, and a multibyte character split by the output boundary
    script = r"printf '\377\376'; printf '\342\202'; sleep 0.2; printf '\254\n'"
    _, exec_id = new_exec(base, ["/bin/sh", "-c", script])
    frames, code, _ = await session(base, start(exec_id))
    text = "".join(frames[1:])
    assert code == 1000
    assert text == "\ufffd\ufffd€\n"


async def test_stdin_is_forwarded(base):
    _, exec_id = new_exec(base, ["/bin/sh", "-c", "read line; echo got:$line"])
    frames, code, _ = await session(base, start(exec_id), send=[b"hello\n"])
    assert "got:hello\n" in "".join(frames[1:])
    assert code == 1000


async def test_tty(base):
    _, exec_id = new_exec(base, ["/bin/sh", "-c", "tty"], tty=True)
    frames, code, _ = await session(base, start(exec_id))
    assert "/dev/pts/" in "".join(frames[1:])
    assert code == 1000


async def test_stop_container_through_exec_stop(base):
    cid, exec_id = new_exec(base, ["/bin/sleep", "60"])

    async def stop_soon() -> None:
        await asyncio.sleep(0.5)
        with base.client() as client:
            r = client.post(
                f"/exec/{exec_id}/stop", params={"force_stop": "false", "stop_container": "true"}
            )
            assert r.status_code == 200

    stopper = asyncio.create_task(stop_soon())
    _, code, reason = await session(base, start(exec_id))
    await stopper
    assert code == 1000
    message = json.loads(reason)["message"]
    assert message.startswith(f"executable {exec_id} and its container exited with exit-code ")
    with base.client() as client:
        assert client.get(f"/containers/{cid}/inspect").json()["container"]["running"] is False


@pytest.mark.parametrize("tty", [False, True])
async def test_first_process_leaving_a_daemon_behind_ends_like_jail8(base, tty):
    # The server keeps stdout open; the first process still ends when the shell
    # does, and the container keeps running with the server in it.
    # (a terminal's hangup would end the sleep with the shell: it ignores it)
    command = ["/bin/sh", "-c", "trap '' HUP; sleep 300 & echo started; exit 4"]
    cid, exec_id = new_exec(base, command, tty=tty)
    frames, code, reason = await asyncio.wait_for(session(base, start(exec_id)), 20)
    assert "".join(frames[1:]).strip() == "started"
    assert code == 1000
    assert json.loads(reason)["message"] == f"{exec_id} has exited with exit-code 4"
    with base.client() as client:
        assert client.get(f"/containers/{cid}/inspect").json()["container"]["running"] is True
        # an exec that leaves a process behind ends with its command too
        r = client.post("/exec/create", json={"container_id": cid, "cmd": command})
        second = r.json()["id"]
    frames, code, reason = await asyncio.wait_for(session(base, start(second)), 20)
    assert "".join(frames[1:]).strip() == "started"
    assert json.loads(reason)["message"] == f"{second} has exited with exit-code 4"
    with base.client() as client:
        assert client.post(f"/containers/{cid}/stop").status_code == 200
        assert client.delete(f"/containers/{cid}").status_code == 200


async def test_output_is_not_compressed(base):
    # Clients offer permessage-deflate by default; compressing process output
    # on a mostly local socket costs the daemon more than it saves, so it is declined.
    _, exec_id = new_exec(base, ["/bin/echo", "hi"])
    async with websockets.unix_connect(str(base.socket), "ws://localhost/exec/start") as ws:
        assert ws.protocol.extensions == []
        await ws.send(start(exec_id))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 30)
