"""The Linux network driver against the real kernel: bridges, veth pairs,
network namespaces and the nft table. Failure paths are provoked by a runner
that refuses one chosen command and runs every other one for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kleened.engine.netmodel import EndpointSpec, FirewallState, NetworkSpec
from kleened.host import cmd
from kleened.host.linux import iproute
from kleened.host.linux.network import LinuxNetwork
from kleened.host.netdriver import FirewallError, NetworkHostError

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="needs root on Linux"
)

BRIDGE = NetworkSpec(
    id="a1b2c3d4e5f6",
    name="hosttest",
    type="bridge",
    interface="kltest5",
    subnet="10.78.50.0/24",
    subnet6="fd00:78:50::/64",
    gateway="<auto>",
    gateway6="<auto>",
)


class Refusing:
    """Runs commands for real, except those starting with `prefix`."""

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = list(prefix)
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], **kwargs) -> cmd.CommandResult:  # type: ignore[no-untyped-def]
        argv = list(argv)
        self.calls.append(argv)
        if self.prefix and argv[: len(self.prefix)] == self.prefix:
            return cmd.CommandResult(tuple(argv), 2, b"", b"refused by the test")
        return await cmd.run(argv, **kwargs)


def link(name: str) -> dict | None:
    r = subprocess.run(
        ["ip", "-j", "-d", "addr", "show", "dev", name], capture_output=True, text=True
    )
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def addresses(name: str) -> set[str]:
    info = link(name) or {}
    return {a["local"] for a in info.get("addr_info", [])}


def table() -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", "kleened"], capture_output=True, text=True
    ).stdout


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


@pytest.fixture
def nft_table() -> Iterator[None]:
    if table():
        pytest.skip("a kleened nft table is already installed on this host")
    yield
    subprocess.run(["nft", "delete", "table", "inet", "kleened"], capture_output=True)


def driver(tmp_path: Path, runner=None) -> LinuxNetwork:  # type: ignore[no-untyped-def]
    return LinuxNetwork(tmp_path / "net", lambda name: None, runner=runner or cmd.run)


async def test_bridge_create_restore_destroy(tmp_path, cleanup):
    cleanup.append(BRIDGE.interface)
    net = driver(tmp_path)
    await net.create_interface(BRIDGE)
    assert {"10.78.50.1", "fd00:78:50::1"} <= addresses(BRIDGE.interface)
    assert link(BRIDGE.interface)["linkinfo"]["info_kind"] == "bridge"
    forwarding = Path(f"/proc/sys/net/ipv4/conf/{BRIDGE.interface}/forwarding").read_text()
    assert forwarding.strip() == "1"
    # Restore keeps the interface (same ifindex) and puts back a lost address.
    index = link(BRIDGE.interface)["ifindex"]
    subprocess.run(["ip", "addr", "del", "10.78.50.1/24", "dev", BRIDGE.interface], check=True)
    await net.restore_interface(BRIDGE)
    assert link(BRIDGE.interface)["ifindex"] == index
    assert "10.78.50.1" in addresses(BRIDGE.interface)
    await net.destroy_interface(BRIDGE)
    assert link(BRIDGE.interface) is None


async def test_failed_create_leaves_no_interface(tmp_path, cleanup):
    cleanup.append(BRIDGE.interface)
    net = driver(tmp_path, Refusing(["ip", "-6", "addr", "add"]))
    with pytest.raises(NetworkHostError, match="refused by the test"):
        await net.create_interface(BRIDGE)
    assert link(BRIDGE.interface) is None


async def test_custom_interfaces_are_not_touched(tmp_path, cleanup):
    cleanup.append("kltest6")
    subprocess.run(["ip", "link", "add", "kltest6", "type", "bridge"], check=True)
    runner = Refusing()
    net = driver(tmp_path, runner)
    custom = NetworkSpec(id="b" * 12, name="c", type="custom", interface="kltest6")
    await net.create_interface(custom)
    await net.restore_interface(custom)
    await net.destroy_interface(custom)
    assert runner.calls == [] and link("kltest6") is not None


async def test_vnet_endpoint_in_a_namespace(tmp_path, cleanup):
    """A veth pair into a process's namespace, as a jail's pid 1 gets it."""
    cleanup.append(BRIDGE.interface)
    net = driver(tmp_path)
    await net.create_interface(BRIDGE)
    sleeper = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        import time

        time.sleep(0.2)
        ep = EndpointSpec(
            id="c0ffee000001",
            container_id="x" * 12,
            ip_address="10.78.50.2",
            ip_address6="fd00:78:50::2",
        )
        plan = await net.prepare_start("x" * 12, "vnet", [(BRIDGE, ep)])
        assert plan.epairs == {ep.id: "kvc0ffee000001"}
        assert plan.before_command is not None
        await plan.before_command(sleeper.pid)
        inside = subprocess.run(
            ["nsenter", f"--net=/proc/{sleeper.pid}/ns/net", "ip", "-j", "route"],
            capture_output=True,
            text=True,
        ).stdout
        assert any(
            r["dst"] == "default" and r.get("gateway") == "10.78.50.1" for r in json.loads(inside)
        )
        ping = subprocess.run(
            [
                "nsenter",
                f"--net=/proc/{sleeper.pid}/ns/net",
                "busybox",
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "10.78.50.1",
            ],
            capture_output=True,
        )
        assert ping.returncode == 0
        assert link("kvc0ffee000001a")["master"] == BRIDGE.interface
        await net.container_stopped("x" * 12, "vnet", [(BRIDGE, ep)])
        assert link("kvc0ffee000001a") is None
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_firewall_check_failure_keeps_the_live_table(tmp_path, nft_table):
    net = driver(tmp_path)
    await net.apply_firewall(FirewallState(networks=(BRIDGE,)))
    live = table()
    assert "10.78.50.0/24" in live
    refusing = driver(tmp_path, Refusing(["nft", "-c"]))
    other = NetworkSpec(
        id="d" * 12, name="other", type="bridge", interface="kltest7", subnet="10.78.51.0/24"
    )
    with pytest.raises(FirewallError, match="refused by the test"):
        await refusing.apply_firewall(FirewallState(networks=(BRIDGE, other)))
    assert table() == live
    # Nothing to enforce any more: the table goes, as the daemon installed it.
    await net.apply_firewall(FirewallState())
    assert table() == ""


async def test_empty_state_leaves_a_foreign_table_alone(tmp_path, nft_table):
    subprocess.run(["nft", "add", "table", "inet", "kleened"], check=True)
    await driver(tmp_path).apply_firewall(FirewallState())
    assert table() != ""


async def test_startup_warns_when_the_uplink_cannot_forward(tmp_path):
    # A host whose default route leaves through "uplink0" (the answer of `ip route`
    # is scripted; everything else runs for real) and a /proc/sys of our own.
    async def runner(argv, **kw):  # type: ignore[no-untyped-def]
        if argv == iproute.default_route():
            out = b'[{"dst":"default","gateway":"192.0.2.1","dev":"uplink0"}]'
            return cmd.CommandResult(tuple(argv), 0, out, b"")
        return await cmd.run(argv, **kw)

    proc_sys = tmp_path / "sys"
    flag = proc_sys / "net/ipv4/conf/uplink0/forwarding"
    flag.parent.mkdir(parents=True)
    net = LinuxNetwork(tmp_path / "net", lambda name: None, runner=runner, proc_sys=proc_sys)
    flag.write_text("0\n")
    [warning] = await net.startup()
    assert "IPv4 forwarding is off on the uplink uplink0" in warning
    assert "net.ipv4.conf.uplink0.forwarding=1" in warning
    assert flag.read_text() == "0\n"  # the uplink is not ours: it is left alone
    flag.write_text("1\n")
    assert await net.startup() == []
