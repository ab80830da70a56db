"""Containers and exec instances end to end: a real daemon driven by the real klee."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.e2e
ID = r"[0-9a-f]{12}"


@pytest.fixture(scope="module")
def base(shared_daemon, archive_server):
    """`base:latest`, created through /images/create (fetch) by klee."""
    r = shared_daemon.klee(
        "image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")
    )
    assert r.returncode == 0, r.stderr
    assert "image created" in r.stdout, r.stdout
    return shared_daemon


def run_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def inspect(daemon, ident: str) -> dict:
    with daemon.client() as client:
        r = client.get(f"/containers/{ident}/inspect")
    assert r.status_code == 200, r.text
    return r.json()


def test_run_echo_prints_the_original_lines(base):
    lines = run_lines(base.klee("run", "base", "echo", "Hello"))
    assert re.fullmatch(ID, lines[0])
    m = re.fullmatch(rf"created execution instance ({ID})", lines[1])
    assert m
    exec_id = m.group(1)
    assert "Hello" in lines[2:]
    assert lines[-1] == f"executable {exec_id} and its container exited with exit-code 0"
    assert not inspect(base, lines[0])["container"]["running"]


def test_real_exit_codes(base):
    lines = run_lines(base.klee("run", "base", "sh", "-c", "exit 3"))
    assert lines[-1].endswith("and its container exited with exit-code 3")
    lines = run_lines(base.klee("run", "base", "sh", "-c", "kill -9 $$"))
    assert lines[-1].endswith("exited with exit-code 137")


def test_env_user_and_jail_params(base):
    lines = run_lines(
        base.klee(
            "run",
            "-e",
            "FOO=bar",
            "-u",
            "nobody",
            "base",
            "sh",
            "-c",
            "echo $FOO; id -un; hostname",
        )
    )
    assert "bar" in lines and "nobody" in lines
    cid = lines[0]
    assert cid in lines  # hostname defaults to the container id
    lines = run_lines(base.klee("run", "-J", "host.hostname=jailhost", "base", "hostname"))
    assert "jailhost" in lines


def test_detached_exec_stop_start_restart_rm(base):
    lines = run_lines(base.klee("run", "-d", "--name", "sleeper", "base", "sleep", "300"))
    assert len(lines) == 2 and re.fullmatch(ID, lines[0])
    cid = lines[0]
    assert inspect(base, "sleeper")["container"]["running"]

    out = run_lines(base.klee("exec", "sleeper", "sh", "-c", "echo inside; exit 4"))
    assert "inside" in out
    assert re.fullmatch(rf"{ID} has exited with exit-code 4", out[-1])

    ls = run_lines(base.klee("lsc"))
    row = next((line for line in ls if line.strip().startswith(cid)), ls)
    assert "sleeper" in row and "running" in row and "base:latest" in row

    r = base.klee("rmc", "sleeper")
    assert "you cannot remove a running container" in r.stdout

    assert run_lines(base.klee("stop", "sleeper")) == [cid]
    assert not inspect(base, cid)["container"]["running"]
    assert run_lines(base.klee("stop", "sleeper")) == ["container not running"]

    lines = run_lines(base.klee("start", "-d", "sleeper"))
    assert re.fullmatch(rf"created execution instance {ID}", lines[0])
    assert inspect(base, cid)["container"]["running"]

    lines = run_lines(base.klee("restart", "sleeper"))
    assert lines[0] == cid
    assert inspect(base, cid)["container"]["running"]

    lines = run_lines(base.klee("rmc", "-f", "sleeper"))
    assert lines == [cid]
    r = base.klee("isc", cid)
    assert r.stdout.strip() == "container not found"


def test_rename_update_persist_prune(base):
    cid = run_lines(base.klee("create", "--name", "c-upd", "-e", "A=1", "base", "echo", "x"))[0]
    assert run_lines(base.klee("container", "rename", "c-upd", "c-new")) == [cid]
    c = inspect(base, "c-new")["container"]
    # Absent fields stay unchanged (the original wiped them).
    assert c["env"] == ["A=1"] and c["cmd"] == ["echo", "x"]
    assert run_lines(
        base.klee("container", "update", "-P", "--restart", "on-startup", "c-new")
    ) == [cid]
    c = inspect(base, cid)["container"]
    assert (c["persist"], c["restart_policy"]) == (True, "on-startup")
    gone = run_lines(base.klee("create", "base", "echo", "y"))[0]
    # `lsc` shows running containers only, `lsc -a` the stopped ones too
    assert not any(row.strip().startswith(gone) for row in run_lines(base.klee("lsc")))
    assert any(row.strip().startswith(gone) for row in run_lines(base.klee("lsc", "-a")))

    pruned = run_lines(base.klee("container", "prune", "-f"))
    assert gone in pruned and cid not in pruned
    assert inspect(base, cid)["container"]["id"] == cid
    assert run_lines(base.klee("rmc", cid)) == [cid]


def test_volume_and_nullfs_mounts(base, tmp_path):
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "from-host").write_text("hi from host\n")
    lines = run_lines(
        base.klee(
            "run",
            "-m",
            "vol1:/data",
            "-m",
            f"{host_dir}:/host:ro",
            "base",
            "sh",
            "-c",
            "cat /host/from-host; echo persisted > /data/f; touch /host/x || echo read-only",
        )
    )
    assert "hi from host" in lines and "read-only" in lines
    cid = lines[0]
    mounts = inspect(base, cid)["container_mountpoints"]
    assert {(m["type"], m["destination"], m["read_only"]) for m in mounts} == {
        ("volume", "/data", False),
        ("nullfs", "/host", True),
    }
    # the volume outlives the container's run; the mounts were undone at its end
    with base.client() as client:
        vol = client.get("/volumes/vol1/inspect").json()
    assert Path(vol["volume"]["mountpoint"], "f").read_text() == "persisted\n"
    assert not (host_dir / "x").exists()
    # the container ended by itself: its mounts were taken down without anyone asking
    deadline = time.monotonic() + 5
    mountinfo = Path("/proc/self/mountinfo")
    while cid in mountinfo.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cid not in mountinfo.read_text()
    run_lines(base.klee("rmc", cid))


def test_invalid_requests(base):
    r = base.klee("run", "--name", "x", "base", "true")
    assert "could not create container: x does not match /?[a-zA-Z0-9][a-zA-Z0-9_.-]+$" in r.stdout
    r = base.klee("run", "nosuchimage", "true")
    assert "could not create container: no such image 'nosuchimage'" in r.stdout
    r = base.klee("run", "-m", "relative:data", "base", "true")
    assert "must be an absolute path" in r.stdout
    with base.client() as client:
        r = client.post("/containers/create", json={"image": "base", "env": ["NOEQUALS"]})
        assert r.status_code == 404 and "NOEQUALS" in r.json()["message"]
        r = client.post("/containers/create", json={"image": "base", "network_driver": "bogus"})
        assert r.status_code == 404 and "enum" in r.json()["message"]
        r = client.post("/exec/create", json={"container_id": "nope"})
        assert (r.status_code, r.json()) == (404, {"message": "container not found"})
        r = client.delete("/containers/nope")
        assert (r.status_code, r.json()) == (404, {"message": "no such container"})


def test_concurrent_runs(base):
    def one(n: int) -> list[str]:
        return run_lines(base.klee("run", "base", "echo", f"N{n}", timeout=120))

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(30)))
    for n, lines in enumerate(results):
        assert f"N{n}" in lines
        assert lines[-1].endswith("and its container exited with exit-code 0")
    with base.client() as client:
        client.post("/containers/prune")


def test_interactive_tty(base):
    """`klee run -it base /bin/sh` under a real pseudo-terminal (driven by pexpect)."""
    env = {"KLEE_HOST": f"http://{base.socket}", "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    from tests.fixtures.daemon import BIN

    child = pexpect.spawn(
        str(BIN / "klee"), ["run", "-it", "base", "/bin/sh"], env=env, timeout=30, encoding="utf-8"
    )

    def type_keys(text: str) -> None:
        # klee reads stdin with a buffered read(1) per readiness event, so bytes
        # that arrive together wait in its buffer: type one key at a time.
        for key in text:
            child.send(key)
            time.sleep(0.05)

    try:
        child.expect("# ")
        type_keys("tty\r")
        child.expect(r"/dev/pts/\d+")
        child.expect("# ")
        type_keys("exit 5\r")
        # klee colours the code under a terminal: ESC[0m ESC[1;36m 5
        child.expect(r"exited with exit-code (\x1b\[[0-9;]*m)*5\b")
    finally:
        child.close(force=True)


def test_daemon_restart_keeps_running_containers(daemon_factory, archive_server):
    daemon = daemon_factory()
    assert (
        daemon.klee(
            "image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")
        ).returncode
        == 0
    )
    cid = run_lines(daemon.klee("run", "-d", "base", "sleep", "300"))[0]
    auto = run_lines(daemon.klee("create", "--restart", "on-startup", "base", "sleep", "300"))[0]
    daemon.stop(signal.SIGKILL)
    daemon.start()
    assert inspect(daemon, cid)["container"]["running"]
    out = run_lines(daemon.klee("exec", cid, "echo", "still-here"))
    assert "still-here" in out
    deadline = time.monotonic() + 10
    while not inspect(daemon, auto)["container"]["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inspect(daemon, auto)["container"]["running"]
    assert run_lines(daemon.klee("stop", cid)) == [cid]
    assert not inspect(daemon, cid)["container"]["running"]
    listing = json.loads(daemon.client().get("/containers/list", params={"all": "true"}).text)
    assert {c["id"] for c in listing} == {cid, auto}
