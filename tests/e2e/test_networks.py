"""Networks end to end on Linux: a real daemon, the real klee, real bridges,
veth pairs, namespaces and nftables. All traffic stays between the host and
namespaces these tests create, on 10.77.x/10.78.x and fd00:77::/64-style ranges.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

pytestmark = pytest.mark.e2e
ID = r"[0-9a-f]{12}"


@pytest.fixture(scope="module")
def kd(shared_daemon, archive_server):
    r = shared_daemon.klee(
        "image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")
    )
    assert r.returncode == 0, r.stderr
    return shared_daemon


@pytest.fixture
def clean(kd):
    """Each test leaves no containers or networks behind it."""
    yield kd
    kd.stop_containers()


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def create_network(kd, name: str, *args: str) -> str:
    out = ok(kd.klee("network", "create", *args, name)).strip()
    assert re.fullmatch(ID, out.splitlines()[-1]), out
    return out.splitlines()[-1]


def run_detached(kd, *args: str) -> str:
    out = ok(kd.klee("run", "-d", *args))
    return re.findall(ID, out)[0]


def inspect_container(kd, ident: str) -> dict:
    with kd.client() as client:
        r = client.get(f"/containers/{ident}/inspect")
    assert r.status_code == 200, r.text
    return r.json()


def inspect_network(kd, ident: str) -> dict:
    return json.loads(ok(kd.klee("network", "inspect", ident)))


def address_of(kd, cid: str, family: int = 4) -> str:
    key = "ip_address" if family == 4 else "ip_address6"
    return inspect_container(kd, cid)["container_endpoints"][0][key]


def exec_in(kd, cid: str, *cmd: str) -> subprocess.CompletedProcess:
    return kd.klee("exec", cid, *cmd)


def exit_code(result: subprocess.CompletedProcess) -> int:
    match = re.search(r"exit-code (\d+)", result.stdout)
    assert match, (result.stdout, result.stderr)
    return int(match.group(1))


def ping(kd, cid: str, address: str) -> int:
    flag = "-6" if ":" in address else "-4"
    return exit_code(exec_in(kd, cid, "ping", flag, "-c", "1", "-W", "2", address))


def interfaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def nft_ruleset() -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", "kleened"], capture_output=True, text=True
    ).stdout


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


# ---------------------------------------------------------------- tests


def test_create_list_inspect_remove(clean):
    kd = clean
    nid = create_network(kd, "n1", "-t", "bridge", "--subnet", "10.77.0.0/24")
    lsn = ok(kd.klee("lsn"))
    assert "n1" in lsn and "10.77.0.0/24" in lsn and nid in lsn
    net = inspect_network(kd, "n1")
    assert net["network"]["id"] == nid
    assert net["network"]["interface"] in interfaces()
    assert net["network"]["gateway"] == "<auto>"
    assert net["network_endpoints"] == []
    bridge = net["network"]["interface"]
    addrs = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", bridge], capture_output=True, text=True
    )
    assert "10.77.0.1" in addrs.stdout
    assert "10.77.0.0/24" in nft_ruleset()
    # Name taken, refused with the original's message.
    r = kd.klee("network", "create", "-t", "bridge", "--subnet", "10.77.1.0/24", "n1")
    assert "network name is already taken" in r.stdout + r.stderr
    assert nid in ok(kd.klee("network", "rm", "n1"))
    assert bridge not in interfaces()
    assert "n1" not in ok(kd.klee("lsn"))
    r = kd.klee("network", "rm", "n1")
    assert "network not found." in r.stdout + r.stderr


def test_vnet_containers_reach_each_other_with_ipv4_and_ipv6(clean):
    kd = clean
    create_network(
        kd, "n1", "-t", "bridge", "--subnet", "10.77.0.0/24", "--subnet6", "fd00:77::/64"
    )
    a = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "60")
    b = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "60")
    ip_a, ip_b = address_of(kd, a), address_of(kd, b)
    assert {ip_a, ip_b} == {"10.77.0.2", "10.77.0.3"}  # .1 is the <auto> gateway
    ip6_a, ip6_b = address_of(kd, a, 6), address_of(kd, b, 6)
    assert {ip6_a, ip6_b} == {"fd00:77::2", "fd00:77::3"}
    endpoints = inspect_network(kd, "n1")["network_endpoints"]
    assert {e["ip_address6"] for e in endpoints} == {"fd00:77::2", "fd00:77::3"}
    assert all(e["epair"] for e in endpoints)  # running vnet containers have one
    assert ping(kd, a, ip_b) == 0
    assert ping(kd, b, ip_a) == 0
    assert ping(kd, a, "10.77.0.1") == 0  # the gateway on the bridge
    assert ping(kd, a, ip6_b) == 0
    out = exec_in(kd, a, "ip", "route").stdout
    assert "default via 10.77.0.1" in out
    # Stopped: the veth pairs are gone and the endpoint shows no epair.
    ok(kd.klee("container", "stop", a))
    assert wait_for(
        lambda: not any(e["epair"] for e in inspect_container(kd, a)["container_endpoints"])
    )
    host_end = f"kv{inspect_container(kd, a)['container_endpoints'][0]['id']}a"
    assert host_end not in interfaces()


def test_icc_false_isolates_containers_of_one_network(clean):
    kd = clean
    create_network(kd, "n1", "-t", "bridge", "--subnet", "10.77.2.0/24", "--icc", "false")
    a = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "60")
    b = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "60")
    assert ping(kd, a, address_of(kd, b)) != 0
    assert ping(kd, b, address_of(kd, a)) != 0


def test_internal_network_cannot_leave_its_subnet(clean):
    kd = clean
    create_network(kd, "inner", "-t", "bridge", "--subnet", "10.77.3.0/24", "--internal")
    create_network(kd, "outer", "-t", "bridge", "--subnet", "10.78.3.0/24")
    a = run_detached(kd, "-l", "vnet", "-n", "inner", "base", "sleep", "60")
    b = run_detached(kd, "-l", "vnet", "-n", "inner", "base", "sleep", "60")
    c = run_detached(kd, "-l", "vnet", "-n", "outer", "base", "sleep", "60")
    assert ping(kd, a, address_of(kd, b)) == 0  # inside the subnet: allowed
    assert ping(kd, a, "10.77.3.1") == 0  # its gateway is in the subnet
    assert ping(kd, a, address_of(kd, c)) != 0  # another network: refused
    assert ping(kd, a, "10.78.3.1") != 0  # a host address outside the subnet
    # The refusal is a reject, not a silent drop: ping fails at once.
    started = time.monotonic()
    r = exec_in(kd, a, "nc", "-w", "5", "10.78.3.1", "80")
    assert time.monotonic() - started < 4, r.stdout
    # And the other network cannot reach in either.
    assert ping(kd, c, address_of(kd, a)) != 0


def test_published_port_answers_on_localhost_until_stopped(clean, tmp_path):
    kd = clean
    create_network(kd, "web", "-t", "bridge", "--subnet", "10.77.4.0/24")
    cid = run_detached(
        kd,
        "-l",
        "vnet",
        "-n",
        "web",
        "-p",
        "18080:8000",
        "base",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-kleene > /www/index.html && httpd -f -p 8000 -h /www",
    )
    port = inspect_container(kd, cid)["container"]["public_ports"][0]
    assert port["ip_address"] == "10.77.4.2"
    assert wait_for(lambda: http_get("http://127.0.0.1:18080/")) == "hello-kleene\n"
    assert http_get("http://10.77.4.1:18080/") == "hello-kleene\n"  # the bridge address
    assert "18080" in nft_ruleset()
    ok(kd.klee("container", "stop", cid))
    assert wait_for(lambda: "18080" not in nft_ruleset())
    assert http_get("http://127.0.0.1:18080/") is None


def test_a_host_port_is_published_by_one_running_container_at_a_time(clean):
    kd = clean
    create_network(kd, "web", "-t", "bridge", "--subnet", "10.77.9.0/24")
    args = ("-l", "vnet", "-n", "web", "-p", "18085:8000", "base", "sleep", "60")
    first = run_detached(kd, *args)
    mounts_before = Path("/proc/self/mountinfo").read_text()
    rules_before = wait_for(lambda: "18085" in nft_ruleset() and nft_ruleset())
    r = kd.klee("run", "-d", *args)
    assert "error starting container" in r.stdout
    second = re.findall(ID, r.stdout)[0]
    # the reason, as the close message of the start says it
    with kd.client() as client:
        exec_id = client.post("/exec/create", json={"container_id": second}).json()["id"]
    with unix_connect(str(kd.socket), "ws://localhost/exec/start") as ws:
        ws.send(json.dumps({"exec_id": exec_id, "attach": True, "start_container": True}))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=30)
    assert ws.close_code == 1011
    assert json.loads(ws.close_reason)["message"] == (
        f"host port 18085/tcp is already published by running container {first}"
    )
    # the refused start left nothing mounted and the container stopped
    assert Path("/proc/self/mountinfo").read_text().count(second) == 0
    assert mounts_before.count(first) == Path("/proc/self/mountinfo").read_text().count(first)
    assert inspect_container(kd, second)["container"]["running"] is False
    assert nft_ruleset() == rules_before
    ok(kd.klee("container", "stop", first))
    ok(kd.klee("container", "start", "-d", second))
    assert inspect_container(kd, second)["container"]["running"] is True


def test_published_port_range_and_udp(clean):
    """klee's -p has no range syntax; ranges come through the API."""
    kd = clean
    create_network(kd, "web", "-t", "bridge", "--subnet", "10.77.5.0/24")
    config = {
        "name": "ranged",
        "image": "base",
        "cmd": ["sleep", "60"],
        "network_driver": "vnet",
        "public_ports": [
            {
                "interfaces": [],
                "host_port": "18100:18102",
                "container_port": "8100:*",
                "protocol": "udp",
            }
        ],
    }
    with kd.client() as client:
        r = client.post("/containers/create", json=config)
        assert r.status_code == 201, r.text
    ok(kd.klee("network", "connect", "web", "ranged"))
    ok(kd.klee("container", "start", "-d", "ranged"))
    rules = wait_for(lambda: "udp dport 18100-18102" in nft_ruleset() and nft_ruleset())
    assert "18101 : 8101" in rules  # the offset is kept
    ok(kd.klee("container", "stop", "ranged"))
    assert wait_for(lambda: "18100" not in nft_ruleset())


def test_connect_and_disconnect_running_and_stopped(clean):
    kd = clean
    create_network(kd, "n1", "-t", "bridge", "--subnet", "10.77.6.0/24")
    create_network(kd, "n2", "-t", "bridge", "--subnet", "10.78.6.0/24")
    # ipnet, running: connect and disconnect live.
    a = run_detached(kd, "-l", "ipnet", "-n", "n1", "base", "sleep", "60")
    b = run_detached(kd, "-l", "ipnet", "-n", "n1", "base", "sleep", "60")
    assert ping(kd, a, address_of(kd, b)) == 0
    ok(kd.klee("network", "connect", "--ip", "10.78.6.7", "n2", a))
    assert "10.78.6.7" in exec_in(kd, a, "ip", "addr").stdout
    assert ping(kd, a, "10.78.6.1") == 0
    ok(kd.klee("network", "disconnect", "n2", a))
    assert "10.78.6.7" not in exec_in(kd, a, "ip", "addr").stdout
    assert ping(kd, a, address_of(kd, b)) == 0  # still on n1
    # Not connected (any more): not found, never a 409 that would crash klee.
    r = kd.klee("network", "disconnect", "n2", a)
    assert "endpoint configuration not found" in r.stdout + r.stderr
    # vnet: refused while running, allowed while stopped.
    v = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "60")
    r = kd.klee("network", "connect", "n2", v)
    assert "cannot connect a running vnet container to a network" in r.stdout + r.stderr
    ok(kd.klee("network", "disconnect", "n1", v))  # running vnet: allowed
    assert inspect_container(kd, v)["container_endpoints"] == []
    ok(kd.klee("container", "stop", v))
    ok(kd.klee("network", "connect", "n2", v))
    ok(kd.klee("network", "connect", "--ip", "10.77.6.50", "n1", v))
    eps = inspect_container(kd, v)["container_endpoints"]
    assert sorted(e["ip_address"] for e in eps) == ["10.77.6.50", "10.78.6.2"]
    ok(kd.klee("network", "disconnect", "n2", v))
    assert len(inspect_container(kd, v)["container_endpoints"]) == 1


def test_rm_with_containers_and_prune(clean):
    kd = clean
    used = create_network(kd, "used", "-t", "bridge", "--subnet", "10.77.7.0/24")
    idle = create_network(kd, "idle", "-t", "loopback", "--subnet", "10.77.8.0/24")
    create_network(kd, "idle2", "-t", "bridge", "--subnet", "10.77.9.0/24")
    cid = ok(kd.klee("container", "create", "-l", "vnet", "-n", "used", "base", "sleep", "60"))
    cid = re.findall(ID, cid)[0]
    out = ok(kd.klee("network", "prune", "-f"))
    assert idle in out and used not in out
    assert "used" in ok(kd.klee("lsn"))
    # Removing a network with a connected container disconnects it.
    bridge = inspect_network(kd, "used")["network"]["interface"]
    ok(kd.klee("network", "rm", "used"))
    assert inspect_container(kd, cid)["container_endpoints"] == []
    assert bridge not in interfaces()


def test_existing_host_interface_is_refused_and_untouched(clean):
    kd = clean
    name = "kltest0"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.78.9.9/24", "dev", name], check=True)
        r = kd.klee(
            "network", "create", "-t", "bridge", "-i", name, "--subnet", "10.78.9.0/24", "x"
        )
        assert "already exists and was not created by kleened" in r.stdout + r.stderr
        assert "x" not in ok(kd.klee("lsn")).split()
        show = subprocess.run(
            ["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True
        )
        assert show.returncode == 0 and "10.78.9.9" in show.stdout
        # A custom network uses it as it is, and leaves it when removed.
        create_network(kd, "cust", "-t", "custom", "-i", name, "--subnet", "10.78.9.0/24")
        ok(kd.klee("network", "rm", "cust"))
        assert name in interfaces()
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_daemon_restart_keeps_and_restores_networks(daemon_factory, archive_server):
    """Start-up reconciles instead of recreating (reference §9.13): running
    containers keep their connectivity; what is missing is put back."""
    kd = daemon_factory()
    ok(kd.klee("image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")))
    create_network(kd, "n1", "-t", "bridge", "--subnet", "10.77.30.0/24")
    bridge = inspect_network(kd, "n1")["network"]["interface"]
    a = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "120")
    b = run_detached(kd, "-l", "vnet", "-n", "n1", "base", "sleep", "120")
    kd.stop()
    # Networks and containers outlive the daemon.
    assert bridge in interfaces() and "10.77.30.0/24" in nft_ruleset()
    kd.start()
    assert ping(kd, a, address_of(kd, b)) == 0
    # What disappeared while the daemon was down is recreated at start.
    ok(kd.klee("container", "stop", a))
    ok(kd.klee("container", "stop", b))
    kd.stop()
    subprocess.run(["ip", "link", "del", bridge], check=True)
    subprocess.run(["nft", "delete", "table", "inet", "kleened"], check=True)
    kd.start()
    assert bridge in interfaces()
    assert "10.77.30.0/24" in nft_ruleset()
    ok(kd.klee("container", "start", "-d", a))
    assert ping(kd, a, "10.77.30.1") == 0


def test_container_removal_releases_its_endpoints(clean):
    kd = clean
    create_network(kd, "n1", "-t", "bridge", "--subnet", "10.77.31.0/24")
    a = run_detached(kd, "-l", "ipnet", "-n", "n1", "base", "sleep", "60")
    ep = inspect_container(kd, a)["container_endpoints"][0]
    ok(kd.klee("container", "stop", a))
    ok(kd.klee("container", "rm", a))
    assert inspect_network(kd, "n1")["network_endpoints"] == []
    assert f"kv{ep['id']}a" not in interfaces()
    # Its address is free again.
    b = run_detached(kd, "-l", "ipnet", "-n", "n1", "base", "sleep", "60")
    assert address_of(kd, b) == ep["ip_address"]


def test_ipnet_ipv6_and_loopback_network(clean):
    kd = clean
    create_network(
        kd, "lb", "-t", "loopback", "--subnet", "10.77.32.0/24", "--subnet6", "fd00:77:32::/64"
    )
    a = run_detached(kd, "-n", "lb", "base", "sleep", "60")  # ipnet: klee's default with -n
    b = run_detached(kd, "-n", "lb", "base", "sleep", "60")
    assert inspect_container(kd, a)["container"]["network_driver"] == "ipnet"
    assert (address_of(kd, a), address_of(kd, a, 6)) == ("10.77.32.1", "fd00:77:32::1")
    assert ping(kd, a, address_of(kd, b)) == 0
    assert ping(kd, a, address_of(kd, b, 6)) == 0
    shown = exec_in(kd, a, "ip", "addr").stdout
    assert "10.77.32.1/32" in shown and "fd00:77:32::1/128" in shown


HTTPD = "mkdir -p /www && echo hello-kleene > /www/index.html && httpd -f -p 8000 -h /www"


def test_published_port_of_an_ipnet_container(clean):
    kd = clean
    create_network(kd, "web", "-t", "loopback", "--subnet", "10.77.42.0/24")
    run_detached(kd, "-n", "web", "-p", "18083:8000", "base", "sh", "-c", HTTPD)
    assert wait_for(lambda: http_get("http://127.0.0.1:18083/")) == "hello-kleene\n"
