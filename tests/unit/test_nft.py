"""nftables rendering (networking reference §10; the pf semantics of §5).

Every scenario of golden/scenarios/*.json is rendered into golden/nft/<scenario>.nft
(`KLEENED_UPDATE_GOLDEN=1` regenerates them after a deliberate change) and
checked by the kernel with `nft -c -f`, which validates without committing.
The checks and the apply test run inside a private network namespace created
for the purpose, so they neither depend on nor touch the host's own rulesets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kleened.engine.netmodel import (
    ContainerSpec,
    EndpointSpec,
    FirewallState,
    NetworkSpec,
    PublishedPortSpec,
)
from kleened.host.linux import iproute as ipr
from kleened.host.linux import nft

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = sorted((GOLDEN / "scenarios").glob("*.json"))
REJECT = "reject with icmpx admin-prohibited"


def load(path: Path) -> FirewallState:
    return FirewallState.from_dict(json.loads(path.read_text()))


def assert_golden(path: Path, text: str) -> None:
    if os.environ.get("KLEENED_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with KLEENED_UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_matches_golden_file(path):
    assert_golden(GOLDEN / "nft" / f"{path.stem}.nft", nft.render_ruleset(load(path)))


# ---------------------------------------------------------------- a private namespace to run nft in


@pytest.fixture(scope="module")
def netns_pid() -> Iterator[int]:
    """The pid of a process sitting in a fresh, empty network namespace."""
    if not (shutil.which("nft") and shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("nft, unshare or nsenter is not installed")
    proc = subprocess.Popen(
        ["unshare", "--net", "--", "sleep", "300"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while True:
            if proc.poll() is not None:
                pytest.skip(f"cannot create a network namespace: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/net") != own:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("the network namespace did not appear")
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=5)


def run_nft(pid: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_is_valid_nftables(path, tmp_path, netns_pid):
    script = tmp_path / "ruleset.nft"
    script.write_text(nft.render_ruleset(load(path)))
    result = run_nft(netns_pid, nft.nft_check_argv(str(script)))
    assert result.returncode == 0, result.stderr


def test_apply_is_idempotent_and_replaces_the_whole_table(tmp_path, netns_pid):
    worked = tmp_path / "worked.nft"
    worked.write_text(nft.render_ruleset(load(GOLDEN / "scenarios" / "worked-example.json")))
    empty = tmp_path / "empty.nft"
    empty.write_text(nft.render_ruleset(FirewallState()))
    teardown = tmp_path / "teardown.nft"
    teardown.write_text(nft.teardown_script())

    def listing() -> str:
        result = run_nft(netns_pid, ["nft", "list", "ruleset"])
        assert result.returncode == 0, result.stderr
        return result.stdout

    # Works when the table does not exist yet, and again when it does.
    for _ in range(2):
        result = run_nft(netns_pid, nft.nft_apply_argv(str(worked)))
        assert result.returncode == 0, result.stderr
    first = listing()
    assert first.count("table inet kleened") == 1
    assert "dnat ip to 10.13.37.2:80" in first
    # A smaller ruleset replaces, not extends, the previous one.
    assert run_nft(netns_pid, nft.nft_apply_argv(str(empty))).returncode == 0
    assert "dnat" not in listing()
    # A broken script changes nothing (one transaction).
    broken = tmp_path / "broken.nft"
    broken.write_text(worked.read_text().replace("masquerade", "masquerade bogus", 1))
    assert run_nft(netns_pid, nft.nft_check_argv(str(broken))).returncode != 0
    assert run_nft(netns_pid, nft.nft_apply_argv(str(worked))).returncode == 0
    assert run_nft(netns_pid, nft.nft_apply_argv(str(broken))).returncode != 0
    assert listing() == first
    # Teardown removes the table, and is itself idempotent.
    for _ in range(2):
        assert run_nft(netns_pid, nft.nft_apply_argv(str(teardown))).returncode == 0
    assert "kleened" not in listing()


# ---------------------------------------------------------------- behaviour of the rules


def _net(**kw) -> NetworkSpec:
    base = dict(
        id="0a1b2c3d4e5f",
        name="net",
        type="bridge",
        interface="kleene0",
        subnet="10.13.37.0/24",
        subnet6="fdef:1::/64",
        nat="eth0",
    )
    return NetworkSpec(**{**base, **kw})


def chain(script: str, name: str) -> list[str]:
    lines = script.splitlines()
    start = lines.index(f"\tchain {name} {{")
    end = lines.index("\t}", start)
    return [line.strip() for line in lines[start + 2 : end] if not line.strip().startswith("#")]


def test_script_replaces_the_table_atomically():
    script = nft.render_ruleset(FirewallState())
    assert script.splitlines()[1:5] == [
        "table inet kleened {",
        "}",
        "delete table inet kleened",
        "table inet kleened {",
    ]
    assert nft.teardown_script() == "table inet kleened {\n}\ndelete table inet kleened\n"
    assert nft.nft_check_argv("/run/k.nft") == ["nft", "-c", "-f", "/run/k.nft"]
    assert nft.nft_apply_argv("/run/k.nft") == ["nft", "-f", "/run/k.nft"]


def test_nat_networks_masquerade_on_the_nat_interface_both_families():
    script = nft.render_ruleset(FirewallState((_net(),)))
    assert chain(script, "postrouting") == [
        'oifname "eth0" ip saddr 10.13.37.0/24 masquerade',
        'oifname "eth0" ip6 saddr fdef:1::/64 masquerade',
        "ip saddr 127.0.0.0/8 ip daddr 10.13.37.0/24 masquerade",
    ]


def test_no_masquerade_without_nat_or_for_internal_networks():
    for net in (_net(nat=""), _net(internal=True), _net(nat="<host-gateway>")):
        script = nft.render_ruleset(FirewallState((net,)))
        assert chain(script, "postrouting") == [
            "ip saddr 127.0.0.0/8 ip daddr 10.13.37.0/24 masquerade"
        ]
    resolved = nft.render_ruleset(FirewallState((_net(nat="<host-gateway>"),), (), "wlan0"))
    assert 'oifname "wlan0" ip saddr 10.13.37.0/24 masquerade' in chain(resolved, "postrouting")


def test_icc_on_rejects_only_other_sources_towards_the_network():
    forward = chain(nft.render_ruleset(FirewallState((_net(),))), "forward")
    log = 'log prefix "kleened 0a1b2c3d4e5f in " group 1'
    assert forward == [
        "ct state established,related accept",
        f"ip saddr != 10.13.37.0/24 ip daddr 10.13.37.0/24 {log} {REJECT}",
        f"ip6 saddr != fdef:1::/64 ip6 daddr fdef:1::/64 {log} {REJECT}",
        "ip saddr 10.13.37.0/24 accept",
        "ip6 saddr fdef:1::/64 accept",
    ]


def test_icc_off_also_rejects_routed_traffic_within_the_network():
    forward = chain(nft.render_ruleset(FirewallState((_net(icc=False, subnet6=""),))), "forward")
    assert forward[1:] == [
        f'ip daddr 10.13.37.0/24 log prefix "kleened 0a1b2c3d4e5f in " group 1 {REJECT}',
        "ip saddr 10.13.37.0/24 accept",
    ]
    inbound = chain(nft.render_ruleset(FirewallState((_net(icc=False, subnet6=""),))), "input")
    assert inbound[1:] == [
        f'iifname != "lo" ip daddr 10.13.37.0/24 log prefix "kleened 0a1b2c3d4e5f in " group 1 '
        f"{REJECT}"
    ]


def test_internal_network_reaches_nothing_outside_its_subnet():
    state = FirewallState(
        (_net(internal=True, subnet6=""),),
        (ContainerSpec("c1", "t", (PublishedPortSpec(("eth0",), "8080", "80", "tcp"),)),),
    )
    script = nft.render_ruleset(state)
    egress = (
        f'ip saddr 10.13.37.0/24 ip daddr != 10.13.37.0/24 log prefix "kleened 0a1b2c3d4e5f '
        f'egress " group 1 {REJECT}'
    )
    forward = chain(script, "forward")
    # Before anything that accepts: no exception for published ports elsewhere.
    assert forward[1] == egress
    assert f'iifname != "lo" {egress}' in chain(script, "input")
    # Within the subnet traffic is allowed (icc), and nothing is let out.
    assert "ip saddr 10.13.37.0/24 ip daddr 10.13.37.0/24 accept" in forward
    assert "ip saddr 10.13.37.0/24 accept" not in forward


def test_published_ports_dnat_from_interfaces_and_from_the_host():
    ep = EndpointSpec("e1", "c1", "10.13.37.2", "fdef:1::2")
    state = FirewallState(
        (_net(endpoints=(ep,)),),
        (ContainerSpec("c1", "t", (PublishedPortSpec(("eth0", "eth1"), "8080", "80", "tcp"),)),),
    )
    script = nft.render_ruleset(state)
    assert chain(script, "prerouting") == [
        'iifname { "eth0", "eth1" } meta nfproto ipv4 fib daddr type local tcp dport 8080 '
        "dnat ip to 10.13.37.2:80",
        'iifname { "eth0", "eth1" } meta nfproto ipv6 fib daddr type local tcp dport 8080 '
        "dnat ip6 to [fdef:1::2]:80",
    ]
    # The host's own connections, 127.0.0.1 included.
    assert chain(script, "output") == [
        "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.13.37.2:80",
        "meta nfproto ipv6 fib daddr type local tcp dport 8080 dnat ip6 to [fdef:1::2]:80",
    ]
    forward = chain(script, "forward")
    accepts = [
        'iifname { "eth0", "eth1" } ip daddr 10.13.37.2 tcp dport 80 accept',
        "ip saddr { 10.13.37.0/24 } ip daddr 10.13.37.2 tcp dport 80 accept",
        'iifname { "eth0", "eth1" } ip6 daddr fdef:1::2 tcp dport 80 accept',
        "ip6 saddr { fdef:1::/64 } ip6 daddr fdef:1::2 tcp dport 80 accept",
    ]
    # Accepted before the network's reject, which would otherwise catch them.
    assert forward[1:5] == accepts


def test_port_ranges_keep_their_offset_udp_included():
    ep = EndpointSpec("e1", "c1", "10.13.37.3")
    state = FirewallState(
        (_net(endpoints=(ep,), subnet6=""),),
        (ContainerSpec("c1", "t", (PublishedPortSpec((), "5000:5002", "4000:*", "udp"),)),),
    )
    script = nft.render_ruleset(state)
    assert chain(script, "prerouting") == []  # no interfaces: nothing from outside
    assert chain(script, "output") == [
        "meta nfproto ipv4 fib daddr type local udp dport 5000-5002 "
        "dnat ip to 10.13.37.3 : udp dport map { 5000 : 4000, 5001 : 4001, 5002 : 4002 }"
    ]
    assert "ip saddr { 10.13.37.0/24 } ip daddr 10.13.37.3 udp dport 4000-4002 accept" in (
        chain(script, "forward")
    )


def test_many_to_one_port_mapping_needs_no_map():
    ep = EndpointSpec("e1", "c1", "10.13.37.3")
    state = FirewallState(
        (_net(endpoints=(ep,), subnet6=""),),
        (ContainerSpec("c1", "t", (PublishedPortSpec(("eth0",), "8080:8090", "80", "tcp"),)),),
    )
    assert chain(nft.render_ruleset(state), "output") == [
        "meta nfproto ipv4 fib daddr type local tcp dport 8080-8090 dnat ip to 10.13.37.3:80"
    ]


def test_networks_without_subnets_get_no_rules():
    script = nft.render_ruleset(FirewallState((_net(subnet="", subnet6=""),)))
    assert "0a1b2c3d4e5f" not in script
    assert chain(script, "postrouting") == []


def test_ipv6_networks_let_neighbour_discovery_reach_the_host():
    with_v6 = chain(nft.render_ruleset(FirewallState((_net(internal=True),))), "input")
    assert with_v6[:2] == [
        "ct state established,related accept",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
    ]
    without = chain(nft.render_ruleset(FirewallState((_net(subnet6=""),))), "input")
    assert "icmpv6" not in " ".join(without)


def test_unsafe_names_are_refused():
    with pytest.raises(ValueError):
        nft.render_ruleset(FirewallState((_net(nat='eth0" accept'),)))


# ---------------------------------------------------------------- the rules with real traffic

SERVER = """
import socket, sys, threading
name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def serve(sock):
    while True:
        conn, peer = sock.accept()
        conn.sendall(f"{name} {peer[0]}\\n".encode())
        conn.close()
for port in ports:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(16)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = """
import errno, socket, sys, time
start = time.monotonic()
try:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print("ok", conn.recv(100).decode().strip())
except TimeoutError:
    print("timeout")
except OSError as err:
    print("err", errno.errorcode.get(err.errno, err.errno), round(time.monotonic() - start, 2))
"""


class Sandbox:
    """Network namespaces held by `sleep` processes that this test starts and kills."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def netns(self) -> int:
        proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "120"])
        self.procs.append(proc)
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/ns/net") == own:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("cannot create network namespaces here")
            time.sleep(0.01)
        return proc.pid

    def run(self, argv: list[str], stdin: str | None = None) -> str:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
        return result.stdout

    def write(self, pid: int, path: Path, value: str) -> None:
        self.run(ipr.in_netns(pid, ["tee", str(path)]), stdin=value)

    def server(self, pid: int, name: str, *ports: int) -> None:
        argv = [sys.executable, "-I", "-S", "-c", SERVER, name, *map(str, ports)]
        proc = subprocess.Popen(ipr.in_netns(pid, argv), stdout=subprocess.PIPE)
        self.procs.append(proc)  # type: ignore[arg-type]
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"

    def connect(self, pid: int, host: str, port: int) -> str:
        argv = [sys.executable, "-I", "-S", "-c", CLIENT, host, str(port)]
        return self.run(ipr.in_netns(pid, argv)).strip()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


def _refused_fast(answer: str) -> bool:
    """Rejected, not dropped: an error well before the client's 3 s timeout."""
    parts = answer.split()
    return parts[0] == "err" and float(parts[-1]) < 1.0


def test_ruleset_behaviour_with_real_traffic(tmp_path):
    """Networks A (nat), B (internal) and C (icc off, no nat) on a host with an
    uplink to an "outside" namespace; container a1 publishes up0:8080 -> 80."""
    for tool in ("nft", "unshare", "nsenter", "ip", "tee"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    box = Sandbox()
    try:
        _behaviour(box, tmp_path)
    finally:
        box.close()


def _behaviour(box: Sandbox, tmp_path: Path) -> None:
    host, outside = box.netns(), box.netns()
    on_host = lambda argv: box.run(ipr.in_netns(host, argv))  # noqa: E731

    # Uplink: host up0 192.0.2.2 <-> outside 192.0.2.1; outside routes C's subnet
    # back to the host (C has no NAT) but knows nothing of A's or B's.
    on_host(ipr.veth_create("up0", "up0p"))
    on_host(ipr.move_to_netns("up0p", outside))
    on_host(ipr.addr_add("up0", "192.0.2.2", 24))
    on_host(ipr.link_up("up0"))
    on_host(ipr.link_up("lo"))
    box.run(ipr.ns_addr_add(outside, "up0p", "192.0.2.1", 24))
    box.run(ipr.ns_link_up(outside, "up0p"))
    box.run(ipr.ns_route_add(outside, "10.30.0.0/24", "up0p", via="192.0.2.2"))

    networks = {
        "a": NetworkSpec("aaaaaaaaaaaa", "a", "bridge", "kleene0", "10.13.37.0/24", nat="up0"),
        "b": NetworkSpec(
            "bbbbbbbbbbbb", "b", "bridge", "kleene1", "10.20.0.0/24", nat="up0", internal=True
        ),
        "c": NetworkSpec("cccccccccccc", "c", "bridge", "kleene2", "10.30.0.0/24", icc=False),
    }
    for net in networks.values():
        gateway = net.subnet.replace("0/24", "1")
        on_host(ipr.bridge_create(net.interface))
        on_host(ipr.addr_add(net.interface, gateway, 24))
        on_host(ipr.link_up(net.interface))
        box.write(host, ipr.ipv4_forwarding_path(net.interface), "1")
        box.write(host, ipr.route_localnet_path(net.interface), "1")
    box.write(host, ipr.ipv4_forwarding_path("up0"), "1")

    pids: dict[str, int] = {}
    endpoints: dict[str, list[EndpointSpec]] = {k: [] for k in networks}
    for name in ("a1", "a2", "b1", "b2", "c1", "c2"):
        net = networks[name[0]]
        pid = pids[name] = box.netns()
        ip = net.subnet.replace("0/24", str(1 + int(name[1])))
        endpoint_id = f"{name}0000000000"
        host_end, peer = ipr.veth_names(endpoint_id)
        on_host(ipr.veth_create(host_end, peer))
        on_host(ipr.bridge_attach(host_end, net.interface))
        if not net.icc:
            on_host(ipr.port_isolated(host_end))
        on_host(ipr.link_up(host_end))
        on_host(ipr.move_to_netns(peer, pid))
        box.run(ipr.ns_loopback_up(pid))
        box.run(ipr.ns_addr_add(pid, peer, ip, 24))
        box.run(ipr.ns_link_up(pid, peer))
        box.run(ipr.ns_default_route(pid, net.subnet.replace("0/24", "1"), peer))
        # Fail neighbour resolution in 0.1 s instead of 3 s (isolated ports).
        neigh = Path("/proc/sys/net/ipv4/neigh") / peer
        box.write(pid, neigh / "retrans_time_ms", "100")
        box.write(pid, neigh / "mcast_solicit", "1")
        endpoints[name[0]].append(EndpointSpec(endpoint_id, name, ip))
        box.server(pid, name, 80, 81)
    box.server(host, "host", 7000)
    box.server(outside, "outside", 9000)

    state = FirewallState(
        tuple(
            NetworkSpec(**{**net.__dict__, "endpoints": tuple(endpoints[key])})
            for key, net in networks.items()
        ),
        (ContainerSpec("a1", "t", (PublishedPortSpec(("up0",), "8080", "80", "tcp"),)),),
        host_gateway_if="up0",
    )
    script = tmp_path / "ruleset.nft"
    script.write_text(nft.render_ruleset(state))
    on_host(nft.nft_apply_argv(str(script)))

    conn = box.connect
    # icc on: same network; NAT towards the uplink shows the host's address.
    assert conn(pids["a1"], "10.13.37.3", 80) == "ok a2 10.13.37.2"
    assert conn(pids["a1"], "192.0.2.1", 9000) == "ok outside 192.0.2.2"
    # No NAT: the container's own address leaves the host.
    assert conn(pids["c1"], "192.0.2.1", 9000) == "ok outside 10.30.0.2"
    # A non-internal network may reach the host through its gateway.
    assert conn(pids["a1"], "10.13.37.1", 7000) == "ok host 10.13.37.2"
    # Different networks: rejected, quickly.
    assert _refused_fast(conn(pids["a1"], "10.30.0.2", 80))
    assert _refused_fast(conn(pids["c1"], "10.13.37.2", 81))
    # icc off: the peers are isolated at the bridge, the gateway is rejected.
    assert conn(pids["c1"], "10.30.0.3", 80).startswith("err")
    assert _refused_fast(conn(pids["c1"], "10.30.0.1", 7000))
    # The published port: from the uplink, from the host's 127.0.0.1, and at the
    # container's own address from another network (icc off included).
    assert conn(outside, "192.0.2.2", 8080) == "ok a1 192.0.2.1"
    assert conn(host, "127.0.0.1", 8080) == "ok a1 10.13.37.1"
    assert conn(pids["c1"], "10.13.37.2", 80) == "ok a1 10.30.0.2"
    # Internal: its own network and gateway only; every way out is rejected fast.
    assert conn(pids["b1"], "10.20.0.3", 80) == "ok b2 10.20.0.2"
    assert conn(pids["b1"], "10.20.0.1", 7000) == "ok host 10.20.0.2"
    assert _refused_fast(conn(pids["b1"], "192.0.2.1", 9000))
    assert _refused_fast(conn(pids["b1"], "192.0.2.2", 7000))
    assert _refused_fast(conn(pids["b1"], "10.13.37.2", 80))
