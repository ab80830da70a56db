"""Address management (networking reference §1.3, §1.4, §3; fixes of §9.9-§9.11)."""

from __future__ import annotations

import pytest

from kleened.engine.ipam import (
    IpamError,
    assign_address,
    assign_endpoint,
    auto_gateway,
    effective_gateway,
    next_interface_name,
    parse_subnet,
    validate_addressing,
    validate_interface_name,
)
from kleened.engine.netmodel import EndpointSpec, NetworkSpec


def message(call, *args, **kwargs) -> str:
    with pytest.raises(IpamError) as info:
        call(*args, **kwargs)
    assert str(info.value) == info.value.message
    return info.value.message


def network(type_="bridge", subnet="", subnet6="", gateway="", gateway6="", endpoints=()):
    return NetworkSpec(
        id="0a1b2c3d4e5f",
        name="net",
        type=type_,
        interface="kleene0",
        subnet=subnet,
        subnet6=subnet6,
        gateway=gateway,
        gateway6=gateway6,
        endpoints=tuple(endpoints),
    )


# ---------------------------------------------------------------- network create


def test_valid_addressing_passes():
    validate_addressing("10.13.37.0/24", "fdef:1234:5678::/48", "<auto>", "<auto>")
    validate_addressing("", "", "", "")
    validate_addressing(
        "172.19.1.0/24", "fdef:1234:5678::/48", "172.19.1.99", "fdef:1234:5678:9999::"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # [exact] the original's messages, value quoted Elixir-style
        (
            ("172.18.0.0-16", "", "", ""),
            'invalid subnet: could not parse cidr block: "172.18.0.0-16"',
        ),
        (("10.0.0.5/24", "", "", ""), 'invalid subnet: could not parse cidr block: "10.0.0.5/24"'),
        (("fd00::/64", "", "", ""), "invalid subnet: wrong IP protocol"),
        (("", "10.0.0.0/24", "", ""), "invalid subnet6: wrong IP protocol"),
        (("", "fd00::1/64", "", ""), 'invalid subnet6: could not parse cidr block: "fd00::1/64"'),
        (("", "", "nope", ""), 'invalid gateway: could not parse cidr block: "nope"'),
        (("", "", "fd00::1", ""), "invalid gateway: wrong IP protocol"),
        (("", "", "", "10.0.0.1"), "invalid gateway6: wrong IP protocol"),
        (("", "", "", 'a"b'), 'invalid gateway6: could not parse cidr block: "a\\"b"'),
        # Stricter than the original (§9.9): a bare address is not a subnet, a
        # netmask is not a prefix length, a CIDR is not a gateway.
        (("10.0.0.0", "", "", ""), 'invalid subnet: could not parse cidr block: "10.0.0.0"'),
        (
            ("10.0.0.0/255.255.255.0", "", "", ""),
            'invalid subnet: could not parse cidr block: "10.0.0.0/255.255.255.0"',
        ),
        (("10.1.2/24", "", "", ""), 'invalid subnet: could not parse cidr block: "10.1.2/24"'),
        (
            ("10.0.0.0/24", "", "10.0.0.1/24", ""),
            'invalid gateway: could not parse cidr block: "10.0.0.1/24"',
        ),
        # New (§9.9): an explicit gateway must be a usable address of its subnet.
        (
            ("10.0.0.0/24", "", "10.0.1.1", ""),
            "invalid gateway: 10.0.1.1 is not in the subnet 10.0.0.0/24",
        ),
        (
            ("10.0.0.0/24", "", "10.0.0.0", ""),
            "invalid gateway: 10.0.0.0 is the network address of 10.0.0.0/24",
        ),
        (
            ("10.0.0.0/24", "", "10.0.0.255", ""),
            "invalid gateway: 10.0.0.255 is the broadcast address of 10.0.0.0/24",
        ),
        (
            ("", "fd00::/64", "", "fd01::1"),
            "invalid gateway6: fd01::1 is not in the subnet fd00::/64",
        ),
    ],
)
def test_create_validation_messages(args, expected):
    assert message(validate_addressing, *args) == expected


def test_validation_order_first_failure_wins():
    # subnet, subnet6, gateway, gateway6 (reference §1.3)
    assert message(validate_addressing, "x", "y", "z", "w").startswith("invalid subnet:")
    assert message(validate_addressing, "", "y", "z", "w").startswith("invalid subnet6:")
    assert message(validate_addressing, "", "", "z", "w").startswith("invalid gateway:")
    assert message(validate_addressing, "", "", "", "w").startswith("invalid gateway6:")


def test_gateway_without_subnet_is_only_syntax_checked():
    validate_addressing("", "", "10.9.9.9", "fd09::9")


def test_parse_subnet():
    assert str(parse_subnet("10.13.37.0/24", 4)) == "10.13.37.0/24"
    assert parse_subnet("", 6) is None
    assert str(parse_subnet("FDEF:1::/64", 6)) == "fdef:1::/64"


@pytest.mark.parametrize(
    ("subnet", "gateway", "expected"),
    [
        ("10.13.37.0/24", "<auto>", "10.13.37.1"),
        ("fdef:1234:5678::/48", "<auto>", "fdef:1234:5678::1"),
        ("10.13.37.0/24", "10.13.37.254", "10.13.37.254"),
        ("fdef:1::/64", "FDEF:1:0::FE", "fdef:1::fe"),
        ("10.13.37.0/24", "", ""),
        ("", "<auto>", ""),
        ("10.0.0.7/32", "<auto>", ""),
        ("10.0.0.6/31", "<auto>", "10.0.0.7"),
    ],
)
def test_effective_gateway(subnet, gateway, expected):
    assert effective_gateway(subnet, gateway) == expected


def test_auto_gateway_is_network_plus_one():
    assert auto_gateway("172.19.1.0/24") == "172.19.1.1"
    assert auto_gateway("") == ""


# ---------------------------------------------------------------- endpoint addresses


def test_empty_request_means_no_address_whatever_the_subnet():
    assert assign_address("", family=4, subnet="10.0.0.0/24") == ""
    assert assign_address("", family=6, subnet="fd00::/64") == ""


def test_auto_without_subnet_is_silently_no_address():
    assert assign_address("<auto>", family=4, subnet="") == ""
    assert assign_address("<auto>", family=6, subnet="") == ""


def test_explicit_address_without_subnet_is_refused():
    # [exact]
    assert (
        message(assign_address, "10.0.0.1", family=4, subnet="")
        == "cannot set ip address because there is no IPv4 subnet defined for this network"
    )
    assert (
        message(assign_address, "fd00::1", family=6, subnet="")
        == "cannot set ip address because there is no IPv6 subnet defined for this network"
    )


@pytest.mark.parametrize(
    ("value", "family", "expected"),
    [
        ("10.1.2", 4, "could not parse inet address 10.1.2: einval"),  # the original accepted it
        ("fd00::1", 4, "could not parse inet address fd00::1: einval"),
        ("bogus", 6, "could not parse inet6 address bogus: einval"),
        ("10.0.0.1", 6, "could not parse inet6 address 10.0.0.1: einval"),
    ],
)
def test_unparsable_explicit_address(value, family, expected):
    subnet = "10.0.0.0/24" if family == 4 else "fd00::/64"
    assert message(assign_address, value, family=family, subnet=subnet) == expected  # [exact]


def test_auto_picks_lowest_free_skipping_network_and_gateway():
    assert assign_address("<auto>", family=4, subnet="172.19.2.0/24") == "172.19.2.1"
    assert (
        assign_address("<auto>", family=4, subnet="172.19.1.0/24", gateway="172.19.1.1")
        == "172.19.1.2"
    )
    taken = ["172.19.1.2", "172.19.1.4"]
    got = assign_address(
        "<auto>", family=4, subnet="172.19.1.0/24", gateway="172.19.1.1", taken=taken
    )
    assert got == "172.19.1.3"


def test_auto_v4_never_hands_out_the_broadcast_address():
    # The original's /30 test handed out .1, .2 and .3 (the broadcast address);
    # with the broadcast reserved (§9.9) the third container gets nothing.
    taken: list[str] = []
    for expected in ("10.0.0.1", "10.0.0.2"):
        got = assign_address("<auto>", family=4, subnet="10.0.0.0/30", taken=taken)
        assert got == expected
        taken.append(got)
    assert (
        message(assign_address, "<auto>", family=4, subnet="10.0.0.0/30", taken=taken)
        == "no more inet IP's left in the network"  # [exact]
    )


def test_point_to_point_and_host_subnets_use_every_address():
    assert assign_address("<auto>", family=4, subnet="10.0.0.6/31") == "10.0.0.6"
    assert assign_address("<auto>", family=4, subnet="10.0.0.7/32") == "10.0.0.7"
    assert assign_address("<auto>", family=6, subnet="fd00::7/128") == "fd00::7"


def test_auto_v6_is_exact_integer_arithmetic_and_canonical():
    subnet = "fdef:1234:5678::/48"
    assert assign_address("<auto>", family=6, subnet=subnet) == "fdef:1234:5678::1"
    got = assign_address(
        "<auto>",
        family=6,
        subnet=subnet,
        gateway="fdef:1234:5678::1",
        # Non-canonical and scoped forms still count as taken (§9.10).
        taken=["FDEF:1234:5678:0::2", "fe80::1%kleene0", "<Link#3>", "fdef:1234:5678::3/48"],
    )
    assert got == "fdef:1234:5678::4"
    # Near the top of a large subnet: no float rounding (§9.11).
    top = "fd00::ffff:ffff:ffff:fffe"
    assert (
        assign_address(
            "<auto>", family=6, subnet="fd00::/64", taken=[f"fd00::{i:x}" for i in range(1, 5)]
        )
        == "fd00::5"
    )
    assert assign_address(top, family=6, subnet="fd00::/64") == top


def test_v6_exhaustion_message():
    assert (
        message(
            assign_address, "<auto>", family=6, subnet="fd00::/127", taken=["fd00::", "fd00::1"]
        )
        == "no more inet6 IP's left in the network"  # [exact]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "10.0.1.5",
            "cannot set ip address 10.0.1.5 because it is not in the subnet 10.0.0.0/24 "
            "of this network",
        ),
        (
            "10.0.0.0",
            "cannot set ip address 10.0.0.0 because it is the network address of 10.0.0.0/24",
        ),
        (
            "10.0.0.255",
            "cannot set ip address 10.0.0.255 because it is the broadcast address of 10.0.0.0/24",
        ),
        (
            "10.0.0.1",
            "cannot set ip address 10.0.0.1 because it is the gateway address of 10.0.0.0/24",
        ),
        ("10.0.0.7", "cannot set ip address 10.0.0.7 because it is already in use"),
    ],
)
def test_explicit_address_checks(value, expected):
    # None of these were checked by the original (§9.9); the CLI docs promise the duplicate check.
    got = message(
        assign_address,
        value,
        family=4,
        subnet="10.0.0.0/24",
        gateway="10.0.0.1",
        taken=["10.0.0.7"],
    )
    assert got == expected


def test_explicit_address_is_stored_canonical():
    assert assign_address("FD00:0::0A", family=6, subnet="fd00::/64") == "fd00::a"
    assert assign_address("10.0.0.9", family=4, subnet="10.0.0.0/24") == "10.0.0.9"


# ---------------------------------------------------------------- per network type (§3 table)


def test_loopback_network_ignores_its_gateway():
    net = network("loopback", subnet="172.19.1.0/24", gateway="<auto>", gateway6="<auto>")
    assert assign_endpoint(net, "<auto>", "<auto>") == ("172.19.1.1", "")


def test_bridge_without_gateway_starts_at_one():
    net = network("bridge", subnet="172.19.2.0/24", gateway="")
    first = assign_endpoint(net, "<auto>", "<auto>")
    assert first == ("172.19.2.1", "")
    net2 = network(
        "bridge",
        subnet="172.19.2.0/24",
        endpoints=[EndpointSpec("e1", "c1", ip_address=first[0])],
    )
    assert assign_endpoint(net2, "<auto>", "<auto>") == ("172.19.2.2", "")


def test_bridge_with_auto_gateways_reserves_them():
    net = network(
        "bridge",
        subnet="172.19.1.0/24",
        subnet6="fdef:1234:5678::/48",
        gateway="<auto>",
        gateway6="<auto>",
    )
    # Even before the bridge carries the gateway addresses.
    ipnet = assign_endpoint(net, "<auto>", "<auto>")
    assert ipnet == ("172.19.1.2", "fdef:1234:5678::2")
    net = network(
        "bridge",
        subnet="172.19.1.0/24",
        subnet6="fdef:1234:5678::/48",
        gateway="<auto>",
        gateway6="<auto>",
        endpoints=[EndpointSpec("e1", "c1", *ipnet)],
    )
    assert assign_endpoint(net, "<auto>", "<auto>") == ("172.19.1.3", "fdef:1234:5678::3")


def test_bridge_with_explicit_gateways_reserves_them_but_starts_at_one():
    net = network(
        "bridge",
        subnet="172.19.1.0/24",
        subnet6="fdef:1234:5678::/48",
        gateway="172.19.1.99",
        gateway6="fdef:1234:5678:9999::",
    )
    assert assign_endpoint(net, "<auto>", "<auto>") == ("172.19.1.1", "fdef:1234:5678::1")
    assert "gateway address" in message(assign_endpoint, net, "172.19.1.99", "")


def test_interface_addresses_count_as_taken():
    net = network("custom", subnet="192.168.50.0/24")
    got = assign_endpoint(net, "<auto>", "", interface_addresses=["192.168.50.1", "192.168.50.2"])
    assert got == ("192.168.50.3", "")


def test_ipv4_is_resolved_before_ipv6():
    net = network("bridge", subnet="10.0.0.0/24")
    # Both families are wrong; the IPv4 error is the one reported.
    assert message(assign_endpoint, net, "bogus", "bogus") == (
        "could not parse inet address bogus: einval"
    )


# ---------------------------------------------------------------- interface names


def test_scope_ids_and_whitespace_are_not_addresses():
    # `ipaddress` accepts "fe80::1%<anything>"; such text must not reach a ruleset.
    assert message(assign_address, "fd00::1%eth0", family=6, subnet="fd00::/64") == (
        "could not parse inet6 address fd00::1%eth0: einval"
    )
    assert message(validate_addressing, "", "fd00::%x/64", "", "").startswith(
        "invalid subnet6: could not parse cidr block"
    )
    assert message(validate_addressing, "", "fd00::/64", "", "fd00::1%x\n").startswith(
        "invalid gateway6: could not parse cidr block"
    )


@pytest.mark.parametrize("name", ["kleene0", "em0", "vtnet0.100", "br-web", "a", "k" * 15])
def test_good_interface_names(name):
    validate_interface_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "k" * 16,
        "0kleene",
        "kleene 0",
        "a/b",
        "a:b",
        'a"',
        "a,b",
        "{a}",
        ".",
        "..",
        "é1",
        "kleene0\n",
    ],
)
def test_bad_interface_names(name):
    assert message(validate_interface_name, name).startswith("invalid interface name ")


def test_next_interface_name_fills_the_first_gap():
    assert next_interface_name([]) == "kleene0"
    assert next_interface_name(["kleene0", "kleene2"]) == "kleene1"
    assert next_interface_name(["kleene0", "kleene1", "em0"]) == "kleene2"
