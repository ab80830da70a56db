"""A real `kleened serve` process driven by curl and the real klee CLI."""

from __future__ import annotations

import json
import signal
import stat
import subprocess

import pytest

from tests.fixtures.daemon import BIN

pytestmark = pytest.mark.e2e
KLEENED = str(BIN / "kleened")


def curl(daemon, path: str) -> str:
    return subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket), f"http://localhost{path}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout


def test_socket_is_root_only_and_list_starts_empty(daemon):
    mode = daemon.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    assert daemon.socket.stat().st_uid == 0
    assert curl(daemon, "/volumes/list") == "[]"


def test_klee_volume_commands(daemon):
    r = daemon.klee("volume", "create", "v1")
    assert (r.returncode, r.stdout.strip()) == (0, "v1"), r.stderr

    r = daemon.klee("volume", "ls")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "VOLUME NAME" in lines[0] and "CREATED" in lines[0]
    assert any(line.split()[0] == "v1" and "ago" in line for line in lines[1:] if line.split())

    r = daemon.klee("volume", "inspect", "v1")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["volume"]["name"] == "v1"
    assert doc["volume"]["dataset"] == "kleene/volumes/v1"
    assert doc["mountpoints"] == []

    r = daemon.klee("volume", "inspect", "nope")
    assert r.stdout.strip() == "No such volume"

    r = daemon.klee("volume", "rm", "v1")
    assert (r.returncode, r.stdout.strip()) == (0, "v1"), r.stderr

    daemon.klee("volume", "create", "v2")
    daemon.klee("volume", "create", "v3")
    r = daemon.klee("volume", "prune", "-f")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["v2", "v3"]
    assert curl(daemon, "/volumes/list") == "[]"


def test_sigkill_and_restart_keeps_volumes(daemon):
    assert daemon.klee("volume", "create", "keepme").returncode == 0
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert daemon.socket.exists()  # a stale socket: the next start must replace it
    daemon.start()
    assert [v["name"] for v in json.loads(curl(daemon, "/volumes/list"))] == ["keepme"]
    # and a migration run on the existing database is a no-op
    r = subprocess.run(
        [KLEENED, "migrate", "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert [v["name"] for v in json.loads(curl(daemon, "/volumes/list"))] == ["keepme"]


def test_sigterm_removes_the_socket(daemon):
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()


def test_second_daemon_on_a_live_socket_is_refused(daemon, daemon_factory):
    with pytest.raises(RuntimeError, match="already listening"):
        daemon_factory()
    assert curl(daemon, "/volumes/list") == "[]"  # the first one is untouched


def test_bad_config_exits_before_touching_anything(tmp_path):
    cfg = tmp_path / "bad.yaml"
    data_root = tmp_path / "data"
    cfg.write_text(
        f"data_root: {data_root}\napi_listening_sockets:\n  - address: 'ftp://127.0.0.1:1'\n"
    )
    r = subprocess.run(
        [KLEENED, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0
    assert "api_listening_sockets[0].address" in r.stderr
    assert not data_root.exists()

    cfg.write_text(
        f"data_root: {data_root}\napi_listening_sockets:\n"
        f"  - address: 'https://127.0.0.1:1'\n    tlscert: {tmp_path}/nope.pem\n"
        f"    tlskey: {tmp_path}/nope.pem\n"
    )
    r = subprocess.run(
        [KLEENED, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0 and "tlscert" in r.stderr and "does not exist" in r.stderr
    assert not data_root.exists()
