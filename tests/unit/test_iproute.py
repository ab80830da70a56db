"""Linux network command vectors and sysctl paths (networking reference §10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kleened.host.linux import iproute as ipr

PID = 4242


def test_bridge_vectors():
    assert ipr.bridge_create("kleene0") == [
        "ip",
        "link",
        "add",
        "name",
        "kleene0",
        "type",
        "bridge",
    ]
    assert ipr.link_up("kleene0") == ["ip", "link", "set", "dev", "kleene0", "up"]
    assert ipr.link_down("kleene0") == ["ip", "link", "set", "dev", "kleene0", "down"]
    assert ipr.link_delete("kleene0") == ["ip", "link", "del", "dev", "kleene0"]
    assert ipr.link_rename("kleene9", "kleene0") == [
        "ip",
        "link",
        "set",
        "dev",
        "kleene9",
        "name",
        "kleene0",
    ]
    assert ipr.link_show("kleene0") == ["ip", "-j", "link", "show", "dev", "kleene0"]


def test_address_vectors_carry_the_family():
    assert ipr.addr_add("kleene0", "10.13.37.1", 24) == [
        "ip",
        "-4",
        "addr",
        "add",
        "10.13.37.1/24",
        "dev",
        "kleene0",
    ]
    assert ipr.addr_add("kleene0", "fdef:1::1", 64) == [
        "ip",
        "-6",
        "addr",
        "add",
        "fdef:1::1/64",
        "dev",
        "kleene0",
    ]
    assert ipr.addr_del("kleene0", "10.13.37.1", 24)[:4] == ["ip", "-4", "addr", "del"]
    assert ipr.addr_show("kleene0") == ["ip", "-j", "addr", "show", "dev", "kleene0"]


def test_veth_names_are_derived_from_the_endpoint_id_and_fit_ifnamsiz():
    host, peer = ipr.veth_names("89ef2673d9e5")
    assert (host, peer) == ("kv89ef2673d9e5a", "kv89ef2673d9e5b")
    assert len(host) == len(peer) == 15
    for bad in ("89ef2673d9e5f", "../x", ""):
        with pytest.raises(ValueError):
            ipr.veth_names(bad)


def test_veth_and_bridge_port_vectors():
    host, peer = ipr.veth_names("89ef2673d9e5")
    assert ipr.veth_create(host, peer) == [
        "ip",
        "link",
        "add",
        "name",
        "kv89ef2673d9e5a",
        "type",
        "veth",
        "peer",
        "name",
        "kv89ef2673d9e5b",
    ]
    assert ipr.bridge_attach(host, "kleene0") == [
        "ip",
        "link",
        "set",
        "dev",
        "kv89ef2673d9e5a",
        "master",
        "kleene0",
    ]
    assert ipr.bridge_detach(host) == ["ip", "link", "set", "dev", "kv89ef2673d9e5a", "nomaster"]
    # icc=false: container ports of one bridge cannot reach each other.
    assert ipr.port_isolated(host) == [
        "ip",
        "link",
        "set",
        "dev",
        "kv89ef2673d9e5a",
        "type",
        "bridge_slave",
        "isolated",
        "on",
    ]
    assert ipr.port_isolated(host, False)[-1] == "off"
    assert ipr.move_to_netns(peer, PID) == [
        "ip",
        "link",
        "set",
        "dev",
        "kv89ef2673d9e5b",
        "netns",
        "4242",
    ]


def test_host_routes():
    # ipnet on Linux: the container's /32 is routed to its veth.
    assert ipr.route_add("10.13.37.2/32", "kv89ef2673d9e5a") == [
        "ip",
        "-4",
        "route",
        "add",
        "10.13.37.2/32",
        "dev",
        "kv89ef2673d9e5a",
    ]
    assert ipr.route_add("fdef:1::2/128", "kv89ef2673d9e5a")[1] == "-6"
    assert ipr.route_del("10.13.37.2/32", "kv89ef2673d9e5a") == [
        "ip",
        "-4",
        "route",
        "del",
        "10.13.37.2/32",
        "dev",
        "kv89ef2673d9e5a",
    ]
    assert ipr.route_del("fdef:1::2/128", "kv1", family=6)[1] == "-6"


def test_commands_inside_a_jails_network_namespace():
    ns = ["nsenter", "--net=/proc/4242/ns/net", "--"]
    assert ipr.in_netns(PID, ["ip", "-j", "addr"]) == [*ns, "ip", "-j", "addr"]
    assert ipr.ns_link_up(PID, "kv89ef2673d9e5b") == [
        *ns,
        "ip",
        "link",
        "set",
        "dev",
        "kv89ef2673d9e5b",
        "up",
    ]
    assert ipr.ns_loopback_up(PID) == [*ns, "ip", "link", "set", "dev", "lo", "up"]
    assert ipr.ns_addr_add(PID, "kv89ef2673d9e5b", "10.13.37.2", 24) == [
        *ns,
        "ip",
        "-4",
        "addr",
        "add",
        "10.13.37.2/24",
        "dev",
        "kv89ef2673d9e5b",
    ]
    assert ipr.ns_addr_del(PID, "kv89ef2673d9e5b", "fdef:1::2", 64)[3:7] == [
        "ip",
        "-6",
        "addr",
        "del",
    ]
    assert ipr.ns_default_route(PID, "10.13.37.1", "kv89ef2673d9e5b") == [
        *ns,
        "ip",
        "-4",
        "route",
        "add",
        "default",
        "via",
        "10.13.37.1",
        "dev",
        "kv89ef2673d9e5b",
    ]
    assert ipr.ns_default_route(PID, "fdef:1::1", "kv89ef2673d9e5b", onlink=True) == [
        *ns,
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fdef:1::1",
        "dev",
        "kv89ef2673d9e5b",
        "onlink",
    ]
    assert ipr.ns_route_add(PID, "10.13.37.1/32", "kv89ef2673d9e5b") == [
        *ns,
        "ip",
        "-4",
        "route",
        "add",
        "10.13.37.1/32",
        "dev",
        "kv89ef2673d9e5b",
    ]


def test_sysctl_paths_are_per_interface():
    assert ipr.ipv4_forwarding_path("kleene0") == Path("/proc/sys/net/ipv4/conf/kleene0/forwarding")
    assert ipr.route_localnet_path("kleene0") == Path(
        "/proc/sys/net/ipv4/conf/kleene0/route_localnet"
    )
    assert ipr.ipv6_forwarding_path("kleene0") == Path("/proc/sys/net/ipv6/conf/kleene0/forwarding")
    assert ipr.ipv6_force_forwarding_path("kleene0") == Path(
        "/proc/sys/net/ipv6/conf/kleene0/force_forwarding"
    )
    # A VLAN interface keeps its dot in the path.
    assert ipr.ipv4_forwarding_path("eth0.100") == Path(
        "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
    )
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            ipr.route_localnet_path(bad)


def test_sysctl_paths_exist_for_the_loopback_interface_here():
    # The keys are real on this kernel (lo always exists); skip where /proc/sys lacks them.
    for path in (ipr.ipv4_forwarding_path("lo"), ipr.route_localnet_path("lo")):
        if not Path("/proc/sys/net/ipv4/conf/lo").exists():
            pytest.skip("no /proc/sys/net/ipv4")
        assert path.exists()


def test_default_route_detection():
    assert ipr.default_route() == ["ip", "-j", "-4", "route", "show", "default"]
    output = json.dumps(
        [{"dst": "default", "gateway": "10.0.2.2", "dev": "eth0", "protocol": "dhcp", "flags": []}]
    )
    assert ipr.parse_default_interface(output) == "eth0"
    # A fresh namespace has no default route: no host gateway.
    assert ipr.parse_default_interface("[]") is None
    assert ipr.parse_default_interface("") is None


def test_parse_addresses():
    output = json.dumps(
        [
            {
                "ifname": "kleene0",
                "addr_info": [
                    {"family": "inet", "local": "10.13.37.1", "prefixlen": 24},
                    {"family": "inet6", "local": "fdef:1::1", "prefixlen": 64},
                    {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
                ],
            }
        ]
    )
    assert ipr.parse_addresses(output) == ["10.13.37.1", "fdef:1::1", "fe80::1"]
