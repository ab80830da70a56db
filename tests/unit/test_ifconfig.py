"""FreeBSD interface commands and jail network parameters (networking reference
§1.4-§2.4, §4, §7; core reference §8.3). pf, ifconfig and jail(8) do not run
here, so these assert the exact vectors the FreeBSD driver will run."""

from __future__ import annotations

import json

import pytest

from kleened.engine.netmodel import EndpointSpec, NetworkSpec, attachments
from kleened.host.freebsd import ifconfig as ifc

CID = "3f2a9c1d7e4b"


def bridge(**kw) -> NetworkSpec:
    base = dict(id="0a1b2c3d4e5f", name="net", type="bridge", interface="kleene0")
    return NetworkSpec(**{**base, **kw})


# ---------------------------------------------------------------- host interfaces (§1.4, §1.6)


def test_interface_lifecycle_vectors():
    assert ifc.create_loopback("kleene0") == ["/sbin/ifconfig", "lo", "create", "name", "kleene0"]
    assert ifc.create_bridge("kleene1") == [
        "/sbin/ifconfig",
        "bridge",
        "create",
        "name",
        "kleene1",
    ]
    assert ifc.destroy("kleene0") == ["/sbin/ifconfig", "kleene0", "destroy"]
    assert ifc.rename("bridge0", "kleene0") == ["/sbin/ifconfig", "bridge0", "name", "kleene0"]
    assert ifc.up("epair0a") == ["/sbin/ifconfig", "epair0a", "up"]
    assert ifc.show("kleene0") == ["/sbin/ifconfig", "kleene0"]
    assert ifc.create_epair() == ["/sbin/ifconfig", "epair", "create"]


def test_alias_vectors():
    assert ifc.add_alias("kleene0", "10.13.37.1", 24) == [
        "/sbin/ifconfig",
        "kleene0",
        "inet",
        "10.13.37.1/24",
        "alias",
    ]
    assert ifc.add_alias("kleene0", "fdef:1234:5678::1", 48) == [
        "/sbin/ifconfig",
        "kleene0",
        "inet6",
        "fdef:1234:5678::1/48",
        "alias",
    ]
    assert ifc.remove_alias("kleene0", "10.13.37.2") == [
        "/sbin/ifconfig",
        "kleene0",
        "inet",
        "10.13.37.2",
        "-alias",
    ]
    assert ifc.remove_alias("kleene0", "fdef:1::2") == [
        "/sbin/ifconfig",
        "kleene0",
        "inet6",
        "fdef:1::2",
        "-alias",
    ]


def test_bridge_membership_and_vnet_reclaim():
    assert ifc.bridge_addm("kleene0", "epair0a") == ["/sbin/ifconfig", "kleene0", "addm", "epair0a"]
    assert ifc.bridge_deletem("kleene0", "epair0a") == [
        "/sbin/ifconfig",
        "kleene0",
        "deletem",
        "epair0a",
    ]
    assert ifc.reclaim_from_jail("epair5", CID) == ["/sbin/ifconfig", "epair5b", "-vnet", CID]
    assert ifc.destroy(ifc.epair_host_end("epair5")) == ["/sbin/ifconfig", "epair5a", "destroy"]


def test_empty_names_are_refused_rather_than_run():
    # The original ran `ifconfig <bridge> deletem a` for a null epair (§9.19).
    with pytest.raises(ValueError):
        ifc.epair_host_end("")
    with pytest.raises(ValueError):
        ifc.bridge_deletem("kleene0", "")
    with pytest.raises(ValueError):
        ifc.destroy("")


def test_gateway_aliases_only_for_auto_gateways_on_bridges():
    net = bridge(
        subnet="10.13.37.0/24", subnet6="fdef:1234:5678::/48", gateway="<auto>", gateway6="<auto>"
    )
    assert ifc.bridge_gateway_aliases(net) == [
        ["/sbin/ifconfig", "kleene0", "inet", "10.13.37.1/24", "alias"],
        ["/sbin/ifconfig", "kleene0", "inet6", "fdef:1234:5678::1/48", "alias"],
    ]
    explicit = bridge(subnet="172.19.1.0/24", gateway="172.19.1.99", gateway6="<auto>")
    assert ifc.bridge_gateway_aliases(explicit) == []
    loopback = NetworkSpec(
        "0a1b2c3d4e5f", "n", "loopback", "kleene0", subnet="10.0.0.0/24", gateway="<auto>"
    )
    assert ifc.bridge_gateway_aliases(loopback) == []


def test_ipnet_host_aliases_and_their_removal():
    net = bridge()
    ep = EndpointSpec("e1", CID, "10.13.37.2", "fdef:1::2")
    assert ifc.endpoint_aliases(net, ep) == [
        ["/sbin/ifconfig", "kleene0", "inet", "10.13.37.2/32", "alias"],
        ["/sbin/ifconfig", "kleene0", "inet6", "fdef:1::2/128", "alias"],
    ]
    # Only addresses the interface has are removed, compared parsed (§9.10).
    assert ifc.endpoint_alias_removals(net, ep, ["10.13.37.1", "FDEF:1:0::2"]) == [
        ["/sbin/ifconfig", "kleene0", "inet6", "fdef:1::2", "-alias"]
    ]


# ---------------------------------------------------------------- queries (§1.4, §7)


def test_query_vectors():
    assert ifc.interface_addresses("kleene0") == [
        "/usr/bin/netstat",
        "--libxo",
        "json",
        "-I",
        "kleene0",
        "-n",
    ]
    assert ifc.routing_table() == ["/usr/bin/netstat", "--libxo", "json", "-rn"]
    assert ifc.jail_addresses(CID) == ["/usr/sbin/jls", "--libxo", "json", "-v", "-j", CID]
    assert ifc.ip_forwarding_query() == ["/sbin/sysctl", "net.inet.ip.forwarding"]
    assert ifc.ip_forwarding_enable() == ["/sbin/sysctl", "net.inet.ip.forwarding=1"]
    assert ifc.ip6_forwarding_enable() == ["/sbin/sysctl", "net.inet6.ip6.forwarding=1"]


def test_parse_netstat_interface_addresses():
    output = json.dumps(
        {
            "statistics": {
                "interface": [
                    {"name": "kleene0", "network": "<Link#5>", "address": "58:9c:fc:10:30:3d"},
                    {"name": "kleene0", "network": "10.13.37.0/24", "address": "10.13.37.1"},
                    {
                        "name": "kleene0",
                        "network": "fe80::%kleene0/64",
                        "address": "fe80::1%kleene0",
                    },
                    {"name": "kleene0", "network": "fdef:1::/64", "address": "fdef:1::1"},
                ]
            }
        }
    )
    assert ifc.parse_interface_addresses(output) == ["10.13.37.1", "fe80::1", "fdef:1::1"]
    assert ifc.interface_exists(output)
    assert not ifc.interface_exists('{"statistics": {"interface": []}}')


def test_parse_default_route_interface():
    output = json.dumps(
        {
            "statistics": {
                "route-information": {
                    "route-table": {
                        "rt-family": [
                            {
                                "address-family": "Internet6",
                                "rt-entry": [{"destination": "default", "interface-name": "em1"}],
                            },
                            {
                                "address-family": "Internet",
                                "rt-entry": [
                                    {"destination": "10.0.2.0/24", "interface-name": "em1"},
                                    {"destination": "default", "interface-name": "em0"},
                                ],
                            },
                        ]
                    }
                }
            }
        }
    )
    assert ifc.parse_default_interface(output) == "em0"
    assert ifc.parse_default_interface('{"statistics": {}}') is None


def test_parse_epair_and_bridge_members():
    assert ifc.parse_epair("epair5a\n") == "epair5"
    with pytest.raises(ValueError):
        ifc.parse_epair("ifconfig: SIOCIFCREATE2: File exists\n")
    output = (
        "kleene0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500\n"
        "\tmember: epair0a flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>\n"
        "\t        ifmaxaddr 0 port 6 priority 128 path cost 2000\n"
        "\tmember: epair3a flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>\n"
    )
    assert ifc.parse_bridge_members(output) == ["epair0a", "epair3a"]


def test_parse_jail_addresses():
    output = json.dumps(
        {"jail-information": {"jail": [{"ipv4_addrs": ["10.0.0.2", "10.1.0.2"], "ipv6_addrs": []}]}}
    )
    assert ifc.parse_jail_addresses(output) == (["10.0.0.2", "10.1.0.2"], [])


def test_live_jail_address_updates_use_the_right_parameter():
    # New address first, as the original (§4); IPv6 through ip6.addr (§9.12).
    assert ifc.jail_set_addresses(CID, ip4=["10.1.0.2", "10.0.0.2"]) == [
        "/usr/sbin/jail",
        "-m",
        f"name={CID}",
        "ip4.addr=10.1.0.2,10.0.0.2",
    ]
    assert ifc.jail_set_addresses(CID, ip6=["fd00::2"]) == [
        "/usr/sbin/jail",
        "-m",
        f"name={CID}",
        "ip6.addr=fd00::2",
    ]
    assert ifc.jail_set_addresses(CID, ip4=[], ip6=[]) == [
        "/usr/sbin/jail",
        "-m",
        f"name={CID}",
        "ip4.addr=",
        "ip6.addr=",
    ]


# ---------------------------------------------------------------- jail parameters (§2.2, core §8.3)


def test_disabled_and_host_drivers():
    assert ifc.jail_network_params("disabled", CID, []) == ["ip4=disable", "ip6=disable"]
    assert ifc.jail_network_params("host", CID, []) == ["ip4=inherit", "ip6=inherit"]
    with pytest.raises(ValueError):
        ifc.jail_network_params("bridge", CID, [])


def test_ipnet_single_network_is_the_originals_vector():
    net = NetworkSpec("0a1b2c3d4e5f", "testnet", "loopback", "kleene0", subnet="10.2.3.0/24")
    ep = EndpointSpec("e1", CID, "10.2.3.2")
    assert ifc.jail_network_params("ipnet", CID, [(net, ep)]) == [
        "exec.prestart=ifconfig kleene0 inet 10.2.3.2/32 alias",
        "ip4.addr=10.2.3.2",
    ]


def test_ipnet_without_networks_gets_no_ip_parameters():
    assert ifc.jail_network_params("ipnet", CID, []) == []


def test_ipnet_several_networks_and_families():
    # Deviation (§2.2 allows it, §9.24 recommends it): one comma-separated
    # ip4.addr/ip6.addr per family instead of one argument per network, so the
    # aliases come first. Networks in name order (netmodel.attachments).
    a = NetworkSpec(
        "1a1a1a1a1a1a",
        "a",
        "loopback",
        "kleene0",
        subnet="10.0.0.0/24",
        subnet6="fd00::/64",
        endpoints=(EndpointSpec("e1", CID, "10.0.0.2", "fd00::2"),),
    )
    b = NetworkSpec(
        "2b2b2b2b2b2b",
        "b",
        "custom",
        "em1",
        subnet="192.168.1.0/24",
        endpoints=(EndpointSpec("e2", CID, "192.168.1.9", ""),),
    )
    assert ifc.jail_network_params("ipnet", CID, attachments(CID, [b, a])) == [
        "exec.prestart=ifconfig kleene0 inet 10.0.0.2/32 alias",
        "exec.prestart=ifconfig kleene0 inet6 fd00::2/128 alias",
        "exec.prestart=ifconfig em1 inet 192.168.1.9/32 alias",
        "ip4.addr=10.0.0.2,192.168.1.9",
        "ip6.addr=fd00::2",
    ]


def test_vnet_reference_example():
    # Reference §2.2's example was:
    #   vnet vnet.interface=epair0b "exec.prestart=ifconfig kleene0 addm epair0a"
    #   "exec.prestart=ifconfig epair0a up" "exec.start=ifconfig epair0b inet 10.13.38.2/24"
    #   "exec.start=route add -inet default 10.13.38.1"
    # Deviation (§9.18): exec.start runs as exec.jail_user (the container's user),
    # so the jail's end is moved and configured from exec.created, which runs on
    # the host as root: `ifconfig … vnet` instead of vnet.interface= (jail(8)
    # moves vnet.interface only after exec.created) and `jexec <id>` for the
    # commands inside. Also new (§9.17): lo0 is brought up.
    net = bridge(subnet="10.13.38.0/24", gateway="<auto>")
    ep = EndpointSpec("e1", CID, "10.13.38.2", epair="epair0")
    assert ifc.jail_network_params("vnet", CID, [(net, ep)]) == [
        "vnet",
        f"exec.created=jexec {CID} ifconfig lo0 inet 127.0.0.1/8 up",
        "exec.prestart=ifconfig kleene0 addm epair0a",
        "exec.prestart=ifconfig epair0a up",
        f"exec.created=ifconfig epair0b vnet {CID}",
        f"exec.created=jexec {CID} ifconfig epair0b inet 10.13.38.2/24",
        f"exec.created=jexec {CID} route add -inet default 10.13.38.1",
    ]


def test_vnet_dual_stack_explicit_gateways():
    net = bridge(
        subnet="172.19.1.0/24",
        subnet6="fdef:1234:5678::/48",
        gateway="172.19.1.99",
        gateway6="fdef:1234:5678:9999::",
    )
    ep = EndpointSpec("e1", CID, "172.19.1.2", "fdef:1234:5678::2", epair="epair4")
    params = ifc.jail_network_params("vnet", CID, [(net, ep)])
    # Address before route, IPv4 before IPv6 (§2.2).
    assert params[4:] == [
        f"exec.created=ifconfig epair4b vnet {CID}",
        f"exec.created=jexec {CID} ifconfig epair4b inet 172.19.1.2/24",
        f"exec.created=jexec {CID} ifconfig epair4b inet6 fdef:1234:5678::2/48",
        f"exec.created=jexec {CID} route add -inet default 172.19.1.99",
        f"exec.created=jexec {CID} route add -inet6 default fdef:1234:5678:9999::",
    ]


def test_vnet_no_gateway_no_route_and_no_address_no_route():
    no_gw = bridge(subnet="172.19.2.0/24", gateway="")
    params = ifc.jail_network_params(
        "vnet", CID, [(no_gw, EndpointSpec("e", CID, "172.19.2.2", epair="epair0"))]
    )
    assert not any("route add" in p for p in params)
    # The original added the route even without an address; it could only fail.
    gw = bridge(subnet="172.19.2.0/24", subnet6="fd00::/64", gateway="<auto>", gateway6="<auto>")
    params = ifc.jail_network_params(
        "vnet", CID, [(gw, EndpointSpec("e", CID, "", "fd00::5", epair="epair0"))]
    )
    assert [p for p in params if "route add" in p] == [
        f"exec.created=jexec {CID} route add -inet6 default fd00::1"
    ]


def test_vnet_two_networks_get_one_default_route_per_family():
    # The original emitted one `route add -inet default` per network; the second
    # failed with "File exists" and the jail start with it (§9.17).
    a = bridge(
        id="1a1a1a1a1a1a", name="a", interface="kleene0", subnet="10.0.0.0/24", gateway="<auto>"
    )
    b = bridge(
        id="2b2b2b2b2b2b", name="b", interface="kleene1", subnet="10.1.0.0/24", gateway="<auto>"
    )
    attached = [
        (a, EndpointSpec("e1", CID, "10.0.0.2", epair="epair0")),
        (b, EndpointSpec("e2", CID, "10.1.0.2", epair="epair1")),
    ]
    assert ifc.jail_network_params("vnet", CID, attached) == [
        "vnet",
        f"exec.created=jexec {CID} ifconfig lo0 inet 127.0.0.1/8 up",
        "exec.prestart=ifconfig kleene0 addm epair0a",
        "exec.prestart=ifconfig epair0a up",
        f"exec.created=ifconfig epair0b vnet {CID}",
        f"exec.created=jexec {CID} ifconfig epair0b inet 10.0.0.2/24",
        "exec.prestart=ifconfig kleene1 addm epair1a",
        "exec.prestart=ifconfig epair1a up",
        f"exec.created=ifconfig epair1b vnet {CID}",
        f"exec.created=jexec {CID} ifconfig epair1b inet 10.1.0.2/24",
        f"exec.created=jexec {CID} route add -inet default 10.0.0.1",
    ]


def test_vnet_needs_an_epair_and_a_bridge():
    with pytest.raises(ValueError):
        ifc.jail_network_params("vnet", CID, [(bridge(), EndpointSpec("e", CID, "10.0.0.2"))])
    loop = NetworkSpec("0a1b2c3d4e5f", "n", "loopback", "kleene0")
    with pytest.raises(ValueError):
        ifc.jail_network_params("vnet", CID, [(loop, EndpointSpec("e", CID, epair="epair0"))])


def test_vnet_without_networks():
    assert ifc.jail_network_params("vnet", CID, []) == [
        "vnet",
        f"exec.created=jexec {CID} ifconfig lo0 inet 127.0.0.1/8 up",
    ]


def test_every_parameter_is_one_argv_element():
    net = bridge(subnet="10.13.38.0/24", gateway="<auto>")
    params = ifc.jail_network_params(
        "vnet", CID, [(net, EndpointSpec("e1", CID, "10.13.38.2", epair="epair0"))]
    )
    assert all(isinstance(p, str) and "=" in p for p in params[1:])
    assert all(not p.startswith('"') for p in params)
