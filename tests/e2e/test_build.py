"""Image builds end to end: a real daemon, the real klee, a busybox base image.

Each test checks what klee prints, what the image record says, what a
container run from the image sees, and that nothing of a build is left on the
host but the documented `:failed` image.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

pytestmark = pytest.mark.e2e
ID = r"[0-9a-f]{12}"


@pytest.fixture(scope="module")
def base(shared_daemon, archive_server):
    r = shared_daemon.klee(
        "image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")
    )
    assert r.returncode == 0 and "image created" in r.stdout, r.stdout + r.stderr
    return shared_daemon


def context(tmp_path: Path, dockerfile: str, **files: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        path = ctx / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ctx


def build(daemon, ctx: Path, *args: str) -> subprocess.CompletedProcess:
    return daemon.klee("build", *args, str(ctx), timeout=120)


def api(daemon, method: str, path: str, **kw):
    with daemon.client() as client:
        return client.request(method, path, **kw)


def image(daemon, ident: str) -> dict:
    r = api(daemon, "GET", f"/images/{ident}/inspect")
    assert r.status_code == 200, r.text
    return r.json()


def run_out(daemon, *args: str) -> list[str]:
    r = daemon.klee("run", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def assert_no_build_leftovers(daemon, image_id: str) -> None:
    """No build container (record, jail, dataset), and no mount naming the build."""
    containers = api(daemon, "GET", "/containers/list", params={"all": "true"}).json()
    assert not [c for c in containers if c["id"] == image_id or c["name"].startswith("builder_")]
    deadline = time.monotonic() + 5
    while image_id in Path("/proc/self/mountinfo").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert image_id not in Path("/proc/self/mountinfo").read_text()
    root = daemon.config_path.parent / "data"
    leftovers = [p for p in root.rglob(f"*{image_id}*") if "container" in p.parts]
    assert not leftovers, leftovers
    assert not processes_naming(image_id)


def processes_naming(word: str) -> list[str]:
    """Command lines of live processes that mention `word` (a jail's reaper names its root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if word in cmdline:
                found.append(cmdline)
    return found


EVERY_INSTRUCTION = """\
# every instruction the builder knows
ARG GREETING=hello
FROM base
ARG WHO
ENV MESSAGE="${GREETING} ${WHO:-nobody}"
ENV EMPTY_DEFAULT=${UNSET:-fallback}
WORKDIR /app
WORKDIR sub
COPY file.txt ./
COPY dir /opt/
COPY ["file.txt", "/etc/copied.txt"]
RUN echo "$MESSAGE from $(pwd) arg=$WHO" > built.txt && \\
    echo step-output
RUN ["/bin/sh", "-c", "id -un > /app/sub/run-user"]
USER kleene
RUN id -un > /tmp/user-after
CMD cat built.txt
"""


def test_build_with_every_instruction(base, tmp_path):
    ctx = context(
        tmp_path, EVERY_INSTRUCTION, **{"file.txt": "from context\n", "dir__inner.txt": "in\n"}
    )
    r = build(base, ctx, "-t", "app", "--build-arg", "WHO=klee", "--build-arg", "UNUSED=x")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    m = re.fullmatch(rf"Started to build image with ID ({ID})", lines[0])
    assert m, lines
    image_id = m.group(1)
    steps = [line for line in lines if line.startswith("Step ")]
    assert steps[0] == "Step 1/15 : ARG GREETING=hello"
    assert steps[1] == "Step 2/15 : FROM base"
    assert "Step 15/15 : CMD cat built.txt" in steps and len(steps) == 15
    snapshots = re.findall(rf"--> Snapshot created: (@{ID})", r.stdout)
    assert len(snapshots) == 6  # 3 COPY + 3 RUN
    assert "step-output" in lines
    assert lines[-2:] == ["image created", image_id]

    img = image(base, "app")
    assert img["id"] == image_id and (img["name"], img["tag"]) == ("app", "latest")
    assert "MESSAGE=hello klee" in img["env"] and "EMPTY_DEFAULT=fallback" in img["env"]
    assert not any(e.startswith(("GREETING=", "WHO=")) for e in img["env"])  # ARGs not stored
    assert img["user"] == "kleene"
    assert img["cmd"] == ["/bin/sh", "-c", "cd /app/sub && cat built.txt"]
    assert img["buildargs"] == {"WHO": "klee", "UNUSED": "x"}
    instr = img["instructions"]
    assert [i[0] for i in instr][:2] == ["ARG GREETING=hello", "FROM base"]
    assert [i[1] for i in instr if i[1]] == snapshots
    assert all(i[1] == "" for i in instr if not i[0].startswith(("RUN", "COPY")))

    out = run_out(base, "app")
    assert "hello klee from /app/sub arg=klee" in out
    out = run_out(
        base,
        "app",
        "sh",
        "-c",
        "cat /app/sub/file.txt /opt/dir/inner.txt /etc/copied.txt /app/sub/run-user"
        " /tmp/user-after; id -un; echo msg=$MESSAGE; ls -a /",
    )
    assert out.count("from context") == 2 and "in" in out
    assert "root" in out and out.count("kleene") >= 2  # RUN before USER as root, after as kleene
    assert "msg=hello klee" in out
    assert "kleene_temporary_context_store" not in " ".join(out)
    assert_no_build_leftovers(base, image_id)

    # A build snapshot is usable as image@snapshot: after the first COPY only.
    out = run_out(base, f"app@{snapshots[0][1:]}", "ls", "/app/sub", "/opt")
    assert "file.txt" in out and "dir" not in out
    ctx2 = tmp_path / "ctx2"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text(f"FROM app:latest@{snapshots[1][1:]}\nRUN ls /opt/dir\n")
    r = build(base, ctx2, "-t", "child")
    assert r.returncode == 0 and "inner.txt" in r.stdout, r.stdout
    # in use by the containers run above, then (once they are gone) by the child image
    r = base.klee("rmi", "app")
    assert r.returncode == 1
    assert f"could not remove image {image_id} since it is used for containers:\n" in r.stdout
    api(base, "POST", "/containers/prune")
    child_id = image(base, "child")["id"]
    r = base.klee("rmi", "app")
    assert r.returncode == 1
    assert r.stdout == (
        f"could not remove image {image_id} since it is used for images:\n{child_id}\n"
    )
    assert base.klee("rmi", "child").stdout.splitlines() == [child_id]
    assert base.klee("rmi", "app").stdout.splitlines() == [image_id]
    assert api(base, "GET", f"/images/{image_id}/inspect").status_code == 404


def test_failing_run_keeps_a_failed_image(base, tmp_path):
    ctx = context(
        tmp_path,
        "FROM base\nRUN echo first > /first\nRUN ls /notexist\nRUN echo never\n",
    )
    r = build(base, ctx, "-t", "broken")
    assert r.returncode == 1
    image_id = re.search(rf"Started to build image with ID ({ID})", r.stdout).group(1)
    snap = re.search(rf"--> Snapshot created: @({ID})", r.stdout).group(1)
    assert "The command '/bin/sh -c ls /notexist' returned a non-zero code: 1" in r.stdout
    assert f"Failed to build image {image_id}. Most recent snapshot is @{snap}" in r.stdout
    assert "Step 4/4" not in r.stdout
    img = image(base, "broken:failed")
    assert img["id"] == image_id
    assert img["instructions"][-1] == ["RUN ls /notexist", ""]
    assert img["instructions"][1] == ["RUN echo first > /first", f"@{snap}"]
    out = run_out(base, f"broken:failed@{snap}", "ls", "/")
    assert "first" in out
    assert_no_build_leftovers(base, image_id)

    # With --rm nothing is kept.
    r = build(base, ctx, "-t", "broken2", "--rm")
    assert r.returncode == 1 and "Failed to build image" not in r.stdout
    image_id = re.search(rf"Started to build image with ID ({ID})", r.stdout).group(1)
    assert api(base, "GET", f"/images/{image_id}/inspect").status_code == 404
    assert_no_build_leftovers(base, image_id)


def test_failure_before_any_snapshot_and_bad_from(base, tmp_path):
    ctx = context(tmp_path, "FROM base\nUSER nosuchuser\nRUN true\n")
    r = build(base, ctx)
    assert r.returncode == 1
    assert "Most recent snapshot is no snapshots available" in r.stdout
    image_id = re.search(rf"Started to build image with ID ({ID})", r.stdout).group(1)
    img = image(base, image_id)  # an untagged build fails as name "", tag "failed"
    assert (img["name"], img["tag"]) == ("", "failed")

    (ctx / "Dockerfile").write_text("FROM doesnotexist\nRUN true\n")
    r = build(base, ctx, "-t", "x")
    assert r.returncode == 1
    assert "error: could not find image doesnotexist" in r.stdout
    assert "Failed to build image" not in r.stdout
    image_id = re.search(rf"Started to build image with ID ({ID})", r.stdout).group(1)
    assert api(base, "GET", f"/images/{image_id}/inspect").status_code == 404

    (ctx / "Dockerfile").write_text("FROM base@000000000000\n")
    r = build(base, ctx, "-t", "x")
    assert "error: invalid snapshot @000000000000" in r.stdout


def test_dockerfile_errors(base, tmp_path):
    ctx = context(tmp_path, "RUN echo before from\nFROM base\n")
    r = build(base, ctx)
    assert r.returncode == 1
    assert "'RUN echo before from' not permitted before a FROM instruction" in r.stdout
    (ctx / "Dockerfile").write_text("FROM base\nEXPOSE 80\n")
    r = build(base, ctx)
    assert "error in 'EXPOSE 80': invalid instruction" in r.stdout
    r = base.klee("build", "-f", "Nope", str(ctx))
    assert "Could not open Docker file" in r.stdout and ":enoent" in r.stdout
    r = base.klee("build", "-f", "../../../../etc/passwd", str(ctx))
    assert "outside the build context" in r.stdout and "root:" not in r.stdout


def test_no_host_execution_from_variables_or_output(base, tmp_path):
    marker = Path(f"/tmp/kleened-pwned-{secrets.token_hex(6)}")
    marker2 = Path(f"/tmp/kleened-pwned-{secrets.token_hex(6)}")
    dockerfile = (
        "FROM base\n"
        f"ENV X=$(touch {marker})\n"
        f"ENV Y=`touch {marker}`\n"
        f"RUN echo '`touch {marker2}`' && echo '$(touch {marker2})'\n"
        "RUN echo $X\n"
    )
    ctx = context(tmp_path, dockerfile)
    r = build(base, ctx, "-t", "inject")
    assert r.returncode == 0, r.stdout
    assert f"`touch {marker2}`" in r.stdout
    assert not marker.exists() and not marker2.exists()
    env = image(base, "inject")["env"]
    assert f"X=$(touch {marker})" in env


def test_copy_outside_context_refused(base, tmp_path):
    for source in ("../../etc/passwd", "/../etc/passwd", "link/passwd"):
        ctx_dir = tmp_path / secrets.token_hex(4)
        ctx = context(ctx_dir, f"FROM base\nCOPY {source} /x\n")
        (ctx / "link").symlink_to("/etc")
        r = build(base, ctx, "-t", "escape", "--rm")
        assert r.returncode == 1
        assert "is outside the build context" in r.stdout, r.stdout
        image_id = re.search(rf"Started to build image with ID ({ID})", r.stdout).group(1)
        assert_no_build_leftovers(base, image_id)
    ctx = context(tmp_path / "missing", "FROM base\nCOPY nothing-here /x\n")
    r = build(base, ctx, "--rm")
    assert "matches nothing in the build context" in r.stdout


def test_run_gets_stdin_at_eof_and_quiet(base, tmp_path):
    ctx = context(tmp_path, "FROM base\nRUN read line; echo status=$?\nCMD echo hi\n")
    r = build(base, ctx, "-q", "-t", "quiet")
    assert r.returncode == 0, r.stdout
    assert "Step " not in r.stdout and "status=" not in r.stdout
    assert "--> Snapshot created: @" in r.stdout
    ctx2 = tmp_path / "loud"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text((ctx / "Dockerfile").read_text())
    r = build(base, ctx2, "-t", "loud")
    assert "status=1" in r.stdout


def test_run_leaving_a_background_process_does_not_hang_the_build(base, tmp_path):
    # The first RUN starts the build jail, the second execs into it: both
    # leave a process holding their output, and neither may hold the step.
    dockerfile = (
        "FROM base\n"
        "RUN sleep 300 & echo first-bg\n"
        "RUN sleep 300 & echo second-bg\n"
        "RUN echo done > /done\n"
    )
    ctx = context(tmp_path, dockerfile)
    begin = time.monotonic()
    r = build(base, ctx, "-t", "background")
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - begin < 60
    assert "first-bg" in r.stdout and "second-bg" in r.stdout
    assert len(re.findall(r"--> Snapshot created: @", r.stdout)) == 3
    built = image(base, "background")
    assert_no_build_leftovers(base, built["id"])
    assert "done" in run_out(base, "background", "cat", "/done")


def test_disconnect_mid_build_leaves_nothing(base, tmp_path):
    ctx = context(tmp_path, "FROM base\nRUN echo started; sleep 60\n")
    config = {
        "context": str(ctx),
        "dockerfile": "Dockerfile",
        "tag": "gone",
        "quiet": "false",
        "cleanup": False,
        "buildargs": {},
        "container_config": {"image": None, "network_driver": "host"},
        "networks": [],
    }
    with unix_connect(str(base.socket), "ws://localhost/images/build") as ws:
        ws.send(json.dumps(config))
        start = json.loads(ws.recv(timeout=10))
        image_id = start["data"]
        while "started" not in ws.recv(timeout=20):
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        containers = api(base, "GET", "/containers/list", params={"all": "true"}).json()
        if not any(c["id"] == image_id for c in containers):
            break
        time.sleep(0.1)
    assert api(base, "GET", f"/images/{image_id}/inspect").status_code == 404
    assert_no_build_leftovers(base, image_id)


def test_invalid_build_config(base):
    with unix_connect(str(base.socket), "ws://localhost/images/build") as ws:
        ws.send(json.dumps({"dockerfile": "Dockerfile"}))
        text = ws.recv(timeout=10)
        assert "context" in text
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1002
        assert json.loads(ws.close_reason) == {
            "data": "",
            "message": "invalid parameters",
            "msg_type": "error",
        }


def ws_build(daemon, ctx: Path, **overrides) -> tuple[list[str], int | None, dict]:
    """A build over the raw WebSocket: (text frames, close code, close reason)."""
    config = {
        "context": str(ctx),
        "dockerfile": "Dockerfile",
        "tag": "",
        "quiet": False,
        "cleanup": True,
        "buildargs": {},
        "container_config": {"image": None, "network_driver": "host"},
        "networks": [],
        **overrides,
    }
    frames = []
    with unix_connect(str(daemon.socket), "ws://localhost/images/build") as ws:
        ws.send(json.dumps(config))
        try:
            while True:
                frames.append(ws.recv(timeout=60))
        except ConnectionClosed:
            pass
        return frames, ws.close_code, json.loads(ws.close_reason or "{}")


def test_build_container_joins_networks(base, tmp_path):
    name = f"bn{secrets.token_hex(3)}"
    r = base.klee("network", "create", "-t", "bridge", "--subnet", "10.91.7.0/24", name)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        ctx = context(tmp_path, "FROM base\nRUN ip -4 addr\n")
        frames, code, reason = ws_build(
            base,
            ctx,
            tag="netbuild",
            container_config={"image": None, "network_driver": "ipnet"},
            networks=[{"container": "ignored", "network": name, "ip_address": "10.91.7.42"}],
        )
        assert code == 1000, frames
        assert "10.91.7.42" in "".join(frames)
        assert reason == {"data": reason["data"], "message": "image created", "msg_type": "closing"}
        net = json.loads(base.klee("network", "inspect", name).stdout)
        assert net["network_endpoints"] == []

        frames, code, reason = ws_build(
            base, ctx, container_config={"network_driver": "ipnet"}, networks=[{"network": "nonet"}]
        )
        image_id = json.loads(frames[0])["data"]
        assert code == 1011 and "error: network not found" in frames
        assert reason == {"data": "", "message": "image build failed", "msg_type": "error"}
        assert api(base, "GET", f"/images/{image_id}/inspect").status_code == 404
        assert_no_build_leftovers(base, image_id)
    finally:
        base.klee("rmi", "netbuild")
        base.klee("network", "rm", name)


def test_failed_dockerfile_over_websocket(base, tmp_path):
    ctx = context(tmp_path, "FROM base\nADD x /\n")
    frames, code, reason = ws_build(base, ctx)
    assert json.loads(frames[0]) == {"data": "", "message": "", "msg_type": "starting"}
    assert frames[1:] == ["error in 'ADD x /': invalid instruction"]
    assert (code, reason["message"]) == (1011, "failed to process Dockerfile")


def test_build_container_config_is_honoured(base, tmp_path):
    """klee's container options configure the build container (§9.4.3 FROM step 3)."""
    host_dir = tmp_path / "hostdir"
    host_dir.mkdir()
    (host_dir / "note").write_text("from the host\n")
    ctx = context(
        tmp_path,
        "FROM base\nRUN id -un; echo cc=$CC; hostname; cat /hostdir/note; echo v > /data/f\n",
    )
    volume = f"bv{secrets.token_hex(3)}"
    with base.client() as client:
        created = client.post("/volumes/create", json={"name": volume})
        assert created.status_code == 201, created.text
        mountpoint = client.get(f"/volumes/{volume}/inspect").json()["volume"]["mountpoint"]
    Path(mountpoint).chmod(0o777)  # the build runs as kleene
    r = build(
        base,
        ctx,
        "-t",
        "configured",
        "-u",
        "kleene",
        "-e",
        "CC=1",
        "-J",
        "host.hostname=buildhost",
        "-m",
        f"{volume}:/data",
        "-m",
        f"{host_dir}:/hostdir:ro",
    )
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert {"kleene", "cc=1", "buildhost", "from the host"} <= set(lines)
    img = image(base, "configured")
    # container_config.env and user are baked into the image (§9.4.5, §14.4.11)
    assert "CC=1" in img["env"] and img["user"] == "kleene"
    with base.client() as client:
        vol = client.get(f"/volumes/{volume}/inspect").json()
        assert vol["mountpoints"] == []  # the build container's mounts went with it
        assert Path(vol["volume"]["mountpoint"], "f").read_text() == "v\n"
        client.delete(f"/volumes/{volume}")
    assert not (host_dir / "f").exists()
    assert_no_build_leftovers(base, img["id"])


def test_build_interrupted_by_a_daemon_crash_is_removed_at_start(
    daemon_factory, archive_server, tmp_path
):
    import signal

    daemon = daemon_factory()
    r = daemon.klee("image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar"))
    assert "image created" in r.stdout, r.stdout
    ctx = context(tmp_path, "FROM base\nRUN echo started; sleep 60\n")
    config = {
        "context": str(ctx),
        "tag": "crashed",
        "cleanup": False,
        "container_config": {"network_driver": "host"},
    }
    with unix_connect(str(daemon.socket), "ws://localhost/images/build") as ws:
        ws.send(json.dumps(config))
        image_id = json.loads(ws.recv(timeout=10))["data"]
        while "started" not in ws.recv(timeout=20):
            pass
        daemon.stop(signal.SIGKILL)
    root = daemon.config_path.parent / "data"
    assert [p for p in root.rglob(f"*{image_id}*") if "container" in p.parts]  # left behind
    daemon.start()
    assert api(daemon, "GET", f"/images/{image_id}/inspect").status_code == 404
    assert_no_build_leftovers(daemon, image_id)


def test_from_variable_and_from_override(base, tmp_path):
    ctx = context(tmp_path, "ARG PARENT=nosuch\nFROM ${PARENT}\nWORKDIR /w/${PARENT}\nCMD pwd\n")
    r = build(base, ctx, "-t", "fromarg", "--build-arg", "PARENT=base")
    assert r.returncode == 0, r.stdout
    img = image(base, "fromarg")
    assert img["cmd"] == ["/bin/sh", "-c", "cd /w/base && pwd"]  # WORKDIR is substituted
    assert "/w/base" in run_out(base, "fromarg")
    r = build(base, ctx, "-t", "override", "--from", "fromarg")
    assert r.returncode == 0, r.stdout
    assert "Using user-supplied parent image: 'fromarg'" in r.stdout.splitlines()
    assert image(base, "override")["cmd"] == ["/bin/sh", "-c", "cd /w/nosuch && pwd"]
    r = build(base, ctx, "-t", "override2", "--from", "nosuchparent")
    assert "error: could not find image nosuchparent" in r.stdout
