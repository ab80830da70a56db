"""The FreeBSD network driver, by the exact commands it runs (networking
reference §1.4-§2.4, §4, §5.8) through a scripted runner: jail(8), ifconfig
and pf do not exist on the machines that run the suite."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kleened.engine.netmodel import EndpointSpec, FirewallState, NetworkSpec
from kleened.host.freebsd.network import FreeBSDNetwork
from kleened.host.netdriver import FirewallError, NetworkHostError

SHIPPED_TEMPLATE = Path(__file__).parents[2] / "etc" / "pf.conf.kleene"
Reply = tuple[int, str]


def netstat(*addresses: str) -> str:
    entries = [{"address": "<Link#3>"}] + [{"address": a} for a in addresses]
    return json.dumps({"statistics": {"interface": entries}})


NO_INTERFACE = json.dumps({"statistics": {"interface": []}})


class Script:
    """Records every argv; answers from the first matching rule (prefix match)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.rules: list[tuple[Sequence[str], Reply | Callable[[list[str]], Reply]]] = []

    def on(self, prefix: Sequence[str], reply: Reply | Callable[[list[str]], Reply]) -> None:
        self.rules.insert(0, (list(prefix), reply))

    async def __call__(self, argv: Sequence[str], *, timeout: float) -> Reply:
        argv = list(argv)
        self.calls.append(argv)
        for prefix, reply in self.rules:
            if argv[: len(prefix)] == prefix:
                return reply(argv) if callable(reply) else reply
        return 0, ""


@pytest.fixture
def script() -> Script:
    s = Script()
    s.on(["/usr/bin/netstat", "--libxo", "json", "-I"], (0, NO_INTERFACE))
    return s


@pytest.fixture
def driver(script: Script, tmp_path: Path) -> FreeBSDNetwork:
    (tmp_path / "pf.conf.kleene").write_text(SHIPPED_TEMPLATE.read_text())
    return FreeBSDNetwork(tmp_path / "pf.conf.kleene", tmp_path / "pf.conf", run=script)


BRIDGE = NetworkSpec(
    id="3f9a1c2b7d40",
    name="backend",
    type="bridge",
    interface="kleene0",
    subnet="10.13.37.0/24",
    subnet6="fdef:1234:5678::/48",
    gateway="<auto>",
    gateway6="<auto>",
)
LOOPBACK = NetworkSpec(
    id="8be04d11a9c2", name="vault", type="loopback", interface="kleene1", subnet="10.20.0.0/24"
)


async def test_create_bridge_with_auto_gateways(driver, script):
    await driver.create_interface(BRIDGE)
    assert script.calls == [
        ["/sbin/ifconfig", "bridge", "create", "name", "kleene0"],
        ["/usr/bin/netstat", "--libxo", "json", "-I", "kleene0", "-n"],
        ["/sbin/ifconfig", "kleene0", "inet", "10.13.37.1/24", "alias"],
        ["/sbin/ifconfig", "kleene0", "inet6", "fdef:1234:5678::1/48", "alias"],
        ["/sbin/ifconfig", "kleene0", "up"],
    ]


async def test_create_loopback_ignores_gateways_and_never_destroys_first(driver, script):
    await driver.create_interface(
        NetworkSpec(
            id="a" * 12,
            name="l",
            type="loopback",
            interface="kleene1",
            subnet="10.2.3.0/24",
            gateway="<auto>",
        )
    )
    assert script.calls[0] == ["/sbin/ifconfig", "lo", "create", "name", "kleene1"]
    assert not any("alias" in c for c in script.calls)
    assert not any("destroy" in c for c in script.calls)


async def test_failed_set_up_removes_what_it_created(driver, script):
    script.on(["/sbin/ifconfig", "kleene0", "inet6"], (1, "ifconfig: ioctl: File exists"))
    with pytest.raises(NetworkHostError, match="File exists"):
        await driver.create_interface(BRIDGE)
    assert script.calls[-1] == ["/sbin/ifconfig", "kleene0", "destroy"]


async def test_custom_networks_are_never_touched(driver, script):
    custom = NetworkSpec(id="b" * 12, name="c", type="custom", interface="em0")
    await driver.create_interface(custom)
    await driver.restore_interface(custom)
    await driver.destroy_interface(custom)
    assert script.calls == []


async def test_restore_keeps_an_existing_interface(driver, script):
    script.on(
        ["/usr/bin/netstat", "--libxo", "json", "-I", "kleene0"],
        (0, netstat("10.13.37.1", "10.13.37.5")),
    )
    await driver.restore_interface(BRIDGE)
    assert not any("destroy" in c or "create" in c for c in script.calls)
    assert ["/sbin/ifconfig", "kleene0", "inet", "10.13.37.1/24", "alias"] not in script.calls
    assert ["/sbin/ifconfig", "kleene0", "inet6", "fdef:1234:5678::1/48", "alias"] in script.calls


async def test_destroy_bridge_removes_members_first(driver, script):
    script.on(["/usr/bin/netstat", "--libxo", "json", "-I", "kleene0"], (0, netstat("10.13.37.1")))
    script.on(
        ["/sbin/ifconfig", "kleene0"],
        (0, "kleene0: flags=8843\n\tmember: epair3a flags=143\n\tmember: epair4a flags=143\n"),
    )
    await driver.destroy_interface(BRIDGE)
    assert script.calls[-3:] == [
        ["/sbin/ifconfig", "kleene0", "deletem", "epair3a"],
        ["/sbin/ifconfig", "kleene0", "deletem", "epair4a"],
        ["/sbin/ifconfig", "kleene0", "destroy"],
    ]


async def test_ipnet_start_parameters(driver, script):
    ep = EndpointSpec(id="e" * 12, container_id="c" * 12, ip_address="10.20.0.2", ip_address6="")
    plan = await driver.prepare_start("c" * 12, "ipnet", [(LOOPBACK, ep)])
    assert plan.jail_params == [
        "exec.prestart=ifconfig kleene1 inet 10.20.0.2/32 alias",
        "ip4.addr=10.20.0.2",
    ]
    assert script.calls == []  # the aliases are jail parameters only (§9.23)


@pytest.mark.parametrize(
    ("driver_name", "params"),
    [("host", ["ip4=inherit", "ip6=inherit"]), ("disabled", ["ip4=disable", "ip6=disable"])],
)
async def test_host_and_disabled_parameters(driver, driver_name, params):
    assert (await driver.prepare_start("c" * 12, driver_name, [])).jail_params == params


async def test_vnet_start_creates_epairs_and_configures_as_root(driver, script):
    script.on(["/sbin/ifconfig", "epair", "create"], (0, "epair5a\n"))
    ep = EndpointSpec(
        id="e" * 12, container_id="c" * 12, ip_address="10.13.37.2", ip_address6="fdef:1234:5678::2"
    )
    plan = await driver.prepare_start("c" * 12, "vnet", [(BRIDGE, ep)])
    assert plan.epairs == {"e" * 12: "epair5"}
    cid = "c" * 12
    assert plan.jail_params == [
        "vnet",
        f"exec.created=jexec {cid} ifconfig lo0 inet 127.0.0.1/8 up",
        "exec.prestart=ifconfig kleene0 addm epair5a",
        "exec.prestart=ifconfig epair5a up",
        f"exec.created=ifconfig epair5b vnet {cid}",
        f"exec.created=jexec {cid} ifconfig epair5b inet 10.13.37.2/24",
        f"exec.created=jexec {cid} ifconfig epair5b inet6 fdef:1234:5678::2/48",
        f"exec.created=jexec {cid} route add -inet default 10.13.37.1",
        f"exec.created=jexec {cid} route add -inet6 default fdef:1234:5678::1",
    ]


async def test_failed_epair_creation_fails_the_start_and_cleans_up(driver, script):
    replies = iter([(0, "epair5a\n"), (1, "ifconfig: SIOCIFCREATE2: Device not configured")])
    script.on(["/sbin/ifconfig", "epair", "create"], lambda argv: next(replies))
    eps = [
        EndpointSpec(id=f"{i}" * 12, container_id="c" * 12, ip_address=f"10.13.37.{i + 2}")
        for i in (1, 2)
    ]
    with pytest.raises(NetworkHostError, match="could not create new epair"):
        await driver.prepare_start("c" * 12, "vnet", [(BRIDGE, eps[0]), (BRIDGE, eps[1])])
    assert script.calls[-1] == ["/sbin/ifconfig", "epair5a", "destroy"]


async def test_vnet_stop_releases_epairs(driver, script):
    ep = EndpointSpec(id="e" * 12, container_id="c" * 12, ip_address="10.13.37.2", epair="epair5")
    await driver.container_stopped("c" * 12, "vnet", [(BRIDGE, ep)])
    assert script.calls == [
        ["/sbin/ifconfig", "kleene0", "deletem", "epair5a"],
        ["/sbin/ifconfig", "epair5a", "destroy"],
    ]


async def test_ipnet_stop_removes_present_aliases_compared_parsed(driver, script):
    script.on(
        ["/usr/bin/netstat", "--libxo", "json", "-I", "kleene1"],
        (0, netstat("10.20.0.2", "fdef::2")),
    )
    ep = EndpointSpec(
        id="e" * 12, container_id="c" * 12, ip_address="10.20.0.2", ip_address6="fdef:0::2"
    )
    await driver.container_stopped("c" * 12, "ipnet", [(LOOPBACK, ep)])
    assert script.calls[1:] == [
        ["/sbin/ifconfig", "kleene1", "inet", "10.20.0.2", "-alias"],
        ["/sbin/ifconfig", "kleene1", "inet6", "fdef:0::2", "-alias"],
    ]


JLS = json.dumps(
    {"jail-information": {"jail": [{"ipv4_addrs": ["10.20.0.2"], "ipv6_addrs": ["fdef::9"]}]}}
)


async def test_live_ipnet_connect_sets_both_families(driver, script):
    script.on(["/usr/sbin/jls"], (0, JLS))
    ep = EndpointSpec(
        id="e" * 12, container_id="c" * 12, ip_address="10.13.37.3", ip_address6="fdef:1234:5678::3"
    )
    await driver.connect_running("c" * 12, "ipnet", BRIDGE, ep)
    assert script.calls == [
        ["/sbin/ifconfig", "kleene0", "inet", "10.13.37.3/32", "alias"],
        ["/sbin/ifconfig", "kleene0", "inet6", "fdef:1234:5678::3/128", "alias"],
        ["/usr/sbin/jls", "--libxo", "json", "-v", "-j", "c" * 12],
        [
            "/usr/sbin/jail",
            "-m",
            f"name={'c' * 12}",
            "ip4.addr=10.13.37.3,10.20.0.2",
            "ip6.addr=fdef:1234:5678::3,fdef::9",
        ],
    ]


async def test_live_ipnet_disconnect_removes_both_families(driver, script):
    script.on(
        ["/usr/sbin/jls"],
        (
            0,
            json.dumps(
                {
                    "jail-information": {
                        "jail": [
                            {
                                "ipv4_addrs": ["10.13.37.3", "10.20.0.2"],
                                "ipv6_addrs": ["fdef:1234:5678::3"],
                            }
                        ]
                    }
                }
            ),
        ),
    )
    ep = EndpointSpec(
        id="e" * 12, container_id="c" * 12, ip_address="10.13.37.3", ip_address6="fdef:1234:5678::3"
    )
    await driver.disconnect_running("c" * 12, "ipnet", BRIDGE, ep)
    assert script.calls[-1] == [
        "/usr/sbin/jail",
        "-m",
        f"name={'c' * 12}",
        "ip4.addr=10.20.0.2",
        "ip6.addr=",
    ]


async def test_live_vnet_disconnect_reclaims_the_epair(driver, script):
    ep = EndpointSpec(id="e" * 12, container_id="c" * 12, ip_address="10.13.37.2", epair="epair5")
    await driver.disconnect_running("c" * 12, "vnet", BRIDGE, ep)
    assert script.calls == [
        ["/sbin/ifconfig", "epair5b", "-vnet", "c" * 12],
        ["/sbin/ifconfig", "kleene0", "deletem", "epair5a"],
        ["/sbin/ifconfig", "epair5a", "destroy"],
    ]


async def test_pf_is_checked_before_it_replaces_the_live_file(driver, script, tmp_path):
    live = tmp_path / "pf.conf"
    live.write_text("# the live ruleset\n")
    script.on(["/sbin/pfctl", "-n", "-f"], (1, "pf.conf:12: syntax error"))
    with pytest.raises(FirewallError, match="syntax error"):
        await driver.apply_firewall(FirewallState(networks=(BRIDGE,), host_gateway_if="em0"))
    assert live.read_text() == "# the live ruleset\n"
    assert not (tmp_path / "pf.conf.kleened-new").exists()
    assert script.calls == [["/sbin/pfctl", "-n", "-f", str(tmp_path / "pf.conf.kleened-new")]]


async def test_pf_accepted_is_swapped_in_and_loaded(driver, script, tmp_path):
    await driver.apply_firewall(FirewallState(networks=(BRIDGE,), host_gateway_if="em0"))
    text = (tmp_path / "pf.conf").read_text()
    assert 'kleenet_3f9a1c2b7d40_interface="kleene0"' in text
    assert script.calls == [
        ["/sbin/pfctl", "-n", "-f", str(tmp_path / "pf.conf.kleened-new")],
        ["/sbin/pfctl", "-f", str(tmp_path / "pf.conf")],
    ]


async def test_pf_load_failure_is_reported(driver, script):
    script.on(["/sbin/pfctl", "-f"], (1, "pfctl: DIOCXCOMMIT: Device busy"))
    with pytest.raises(FirewallError, match="Failed to load PF configuration file"):
        await driver.apply_firewall(FirewallState())


async def test_startup_enables_forwarding_and_pf(driver, script):
    script.on(["/sbin/sysctl", "net.inet.ip.forwarding"], (0, "net.inet.ip.forwarding: 0\n"))
    assert await driver.startup() == []
    assert script.calls == [
        ["/sbin/sysctl", "net.inet.ip.forwarding"],
        ["/sbin/sysctl", "net.inet.ip.forwarding=1"],
        ["/sbin/sysctl", "net.inet6.ip6.forwarding=1"],
        ["/sbin/pfctl", "-e"],
    ]
