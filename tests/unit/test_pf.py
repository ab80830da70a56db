"""pf ruleset rendering (networking reference §5) and the template.

Golden files: every scenario in golden/scenarios/*.json is rendered with the
bare marker template into golden/pf/<scenario>.conf. After a deliberate change,
regenerate with `KLEENED_UPDATE_GOLDEN=1 pytest tests/unit/test_pf.py` and
review the diff. The reference's own texts (the §5.7 worked example, the
firewall documentation's example, the §5.5 table) are asserted literally below,
independent of the golden files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kleened.engine.netmodel import (
    ContainerSpec,
    EndpointSpec,
    FirewallState,
    NetworkSpec,
    PublishedPortSpec,
)
from kleened.host.freebsd import pf

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = sorted((GOLDEN / "scenarios").glob("*.json"))
SHIPPED_TEMPLATE = Path(__file__).parents[2] / "etc" / "pf.conf.kleene"

# The shipped template without its preamble comment (reference §5.1).
MARKER_TEMPLATE = """\
### KLEENED MACROS START ###
<%= kleene_macros %>
### KLEENED MACROS END #####

### KLEENED TRANSLATION RULES START ###
<%= kleene_translation %>
### KLEENED TRANSLATION RULES END #####

### KLEENED FILTERING RULES START #####
<%= kleene_filtering %>
### KLEENED FILTERING RULES END #######
"""

# Networking reference §5.7, verbatim.
WORKED_EXAMPLE = """\
### KLEENED MACROS START ###
kleenet_host_gw_if="em0"
kleenet_network_interfaces="{lo0, kleene0,kleene1}"
kleenet_3f9a1c2b7d40_interface="kleene0"
kleenet_3f9a1c2b7d40_subnet="10.13.37.0/24"
kleenet_3f9a1c2b7d40_subnet6="fdef:1::/64"
kleenet_3f9a1c2b7d40_nat_if="em0"
kleenet_3f9a1c2b7d40_all_interfaces="{kleene0, lo0, epair3a}"
kleenet_8be04d11a9c2_interface="kleene1"
kleenet_8be04d11a9c2_subnet="10.20.0.0/24"
kleenet_8be04d11a9c2_nat_if="em0"
kleenet_8be04d11a9c2_all_interfaces="{kleene1, lo0}"
### KLEENED MACROS END #####

### KLEENED TRANSLATION RULES START ###
nat on $kleenet_3f9a1c2b7d40_nat_if from ($kleenet_3f9a1c2b7d40_interface:network) to any -> ($kleenet_3f9a1c2b7d40_nat_if)
rdr on em0 inet proto tcp from any to (em0) port 8080 -> 10.13.37.2 port 80
rdr on em0 inet6 proto tcp from any to (em0) port 8080 -> fdef:1::2 port 80
rdr on em0 inet proto udp from any to (em0) port 5000:5010 -> 10.13.37.3 port 4000:*
### KLEENED TRANSLATION RULES END #####

### KLEENED FILTERING RULES START #####
block in log from any to $kleenet_3f9a1c2b7d40_subnet
block in log from any to $kleenet_3f9a1c2b7d40_subnet6
pass quick on $kleenet_3f9a1c2b7d40_all_interfaces from $kleenet_3f9a1c2b7d40_subnet to $kleenet_3f9a1c2b7d40_subnet
pass quick on $kleenet_3f9a1c2b7d40_all_interfaces from $kleenet_3f9a1c2b7d40_subnet6 to $kleenet_3f9a1c2b7d40_subnet6
block in log from any to $kleenet_8be04d11a9c2_subnet
block out quick log on $kleenet_network_interfaces from $kleenet_8be04d11a9c2_subnet
block out quick log on $kleenet_8be04d11a9c2_nat_if from $kleenet_8be04d11a9c2_subnet
pass quick on em0 inet proto tcp from any to 10.13.37.2 port 80
pass quick on $kleenet_network_interfaces inet proto tcp from any to 10.13.37.2 port 80
pass quick on em0 inet6 proto tcp from any to fdef:1::2 port 80
pass quick on $kleenet_network_interfaces inet6 proto tcp from any to fdef:1::2 port 80
pass quick on em0 inet proto udp from any to 10.13.37.3 port 4000:4010
pass quick on $kleenet_network_interfaces inet proto tcp from any to 10.13.37.3 port 4000:4010
### KLEENED FILTERING RULES END #######
"""  # noqa: E501


def load(path: Path) -> FirewallState:
    return FirewallState.from_dict(json.loads(path.read_text()))


def scenario(name: str) -> FirewallState:
    return load(GOLDEN / "scenarios" / f"{name}.json")


def assert_golden(path: Path, text: str) -> None:
    if os.environ.get("KLEENED_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with KLEENED_UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_matches_golden_file(path):
    rendered = pf.render_pf_conf(MARKER_TEMPLATE, load(path))
    assert_golden(GOLDEN / "pf" / f"{path.stem}.conf", rendered)


def test_worked_example_byte_for_byte():
    rendered = pf.render_pf_conf(MARKER_TEMPLATE, scenario("worked-example"))
    # The one deviation, reference §9.3: the cross-network pass rule of a
    # published port carries the port's own protocol; the original always wrote
    # `proto tcp`, so container B's UDP port was unreachable from other networks.
    expected = WORKED_EXAMPLE.replace(
        "pass quick on $kleenet_network_interfaces inet proto tcp from any to 10.13.37.3",
        "pass quick on $kleenet_network_interfaces inet proto udp from any to 10.13.37.3",
    )
    assert expected != WORKED_EXAMPLE
    assert rendered == expected


def test_worked_example_through_the_shipped_template():
    template = SHIPPED_TEMPLATE.read_text()
    rendered = pf.render_pf_conf(template, scenario("worked-example"))
    preamble = template[: template.index("### KLEENED MACROS START ###")]
    assert all(line == "" or line.startswith("#") for line in preamble.splitlines())
    assert rendered == preamble + pf.render_pf_conf(MARKER_TEMPLATE, scenario("worked-example"))


def test_documentation_firewall_example():
    # run/network/firewall.md shows these lines for one default loopback network.
    rendered = pf.render_rules(scenario("docs-firewall-example"))
    assert rendered.macros == (
        'kleenet_host_gw_if="em0"',
        'kleenet_network_interfaces="{lo0, kleene0}"',
        'kleenet_3069bfded2bb_interface="kleene0"',
        'kleenet_3069bfded2bb_subnet="10.23.45.0/24"',
        'kleenet_3069bfded2bb_nat_if="em0"',
        'kleenet_3069bfded2bb_all_interfaces="{kleene0, lo0}"',
    )
    assert rendered.translation == (
        "nat on $kleenet_3069bfded2bb_nat_if from ($kleenet_3069bfded2bb_interface:network) "
        "to any -> ($kleenet_3069bfded2bb_nat_if)",
    )
    assert rendered.filtering == (
        "block in log from any to $kleenet_3069bfded2bb_subnet",
        "pass quick on $kleenet_3069bfded2bb_all_interfaces from $kleenet_3069bfded2bb_subnet "
        "to $kleenet_3069bfded2bb_subnet",
    )


def test_nothing_to_render_leaves_one_macro_and_empty_lines():
    rendered = pf.render_pf_conf(MARKER_TEMPLATE, FirewallState())
    assert rendered == MARKER_TEMPLATE.replace(
        "<%= kleene_macros %>", 'kleenet_network_interfaces="{lo0}"'
    ).replace("<%= kleene_translation %>", "").replace("<%= kleene_filtering %>", "")


# ---------------------------------------------------------------- the §5.5 table

P = "$kleenet_0a1b2c3d4e5f"
IN4, IN6 = f"block in log from any to {P}_subnet", f"block in log from any to {P}_subnet6"
ICC4 = f"pass quick on {P}_all_interfaces from {P}_subnet to {P}_subnet"
ICC6 = f"pass quick on {P}_all_interfaces from {P}_subnet6 to {P}_subnet6"
OUT4 = f"block out quick log on $kleenet_network_interfaces from {P}_subnet"
OUT6 = f"block out quick log on $kleenet_network_interfaces from {P}_subnet6"
NATBLK4 = f"block out quick log on {P}_nat_if from {P}_subnet"
NATBLK6 = f"block out quick log on {P}_nat_if from {P}_subnet6"
HGW4 = f"block out quick log on $kleenet_host_gw_if from {P}_subnet"
HGW6 = f"block out quick log on $kleenet_host_gw_if from {P}_subnet6"


def _network(internal: bool, icc: bool, nat: str) -> NetworkSpec:
    return NetworkSpec(
        id="0a1b2c3d4e5f",
        name="net",
        type="bridge",
        interface="kleene0",
        subnet="10.13.37.0/24",
        subnet6="fdef:1::/64",
        nat=nat,
        icc=icc,
        internal=internal,
    )


# (internal, icc, nat, host gateway) -> filtering rules. With the host gateway
# being the nat interface (the default), IPv4 is the original's table except
# where marked; IPv6 differs because the original never emitted HGW6 (§9.1).
TABLE = [
    (False, True, "", "em0", [IN4, IN6, ICC4, ICC6]),
    (False, True, "em0", "em0", [IN4, IN6, ICC4, ICC6]),
    (False, False, "", "em0", [IN4, IN6]),
    (False, False, "em0", "em0", [IN4, IN6]),
    # Original IPv6: ICC6, OUT6 (HGW6 was dead code). §9.1: now from the gateway.
    (True, True, "", "em0", [IN4, IN6, ICC4, OUT4, HGW4, ICC6, OUT6, HGW6]),
    # Original IPv6: ICC6, OUT6. The nat interface is blocked for IPv6 too (pf's
    # `nat` has no family); HGW is not repeated for the same interface.
    (True, True, "em0", "em0", [IN4, IN6, ICC4, OUT4, NATBLK4, ICC6, OUT6, NATBLK6]),
    # Original: OUT4 | OUT6 only, no upstream block at all (§9.7 fix).
    (True, False, "", "em0", [IN4, IN6, OUT4, HGW4, OUT6, HGW6]),
    # Original IPv6: OUT6 only.
    (True, False, "em0", "em0", [IN4, IN6, OUT4, NATBLK4, OUT6, NATBLK6]),
    # A nat interface that is not the default route: both are blocked (§9.7).
    (True, True, "em1", "em0", [IN4, IN6, ICC4, OUT4, NATBLK4, HGW4, ICC6, OUT6, NATBLK6, HGW6]),
    # No gateway detected: the original still wrote HGW4 with an undefined macro,
    # and pf refused the whole file (§9.1).
    (True, True, "", None, [IN4, IN6, ICC4, OUT4, ICC6, OUT6]),
    (True, False, "em1", None, [IN4, IN6, OUT4, NATBLK4, OUT6, NATBLK6]),
]


@pytest.mark.parametrize(("internal", "icc", "nat", "gateway", "expected"), TABLE)
def test_filtering_table(internal, icc, nat, gateway, expected):
    state = FirewallState(networks=(_network(internal, icc, nat),), host_gateway_if=gateway)
    assert list(pf.render_filtering(state)) == expected
    # Every macro a rule refers to is defined (pf refuses the file otherwise).
    macros = "\n".join(pf.render_macros(state))
    for rule in expected:
        for word in rule.split():
            if word.startswith("$"):
                assert f"{word[1:]}=" in macros


def test_ipv4_only_and_ipv6_only_networks_get_rules_of_their_family():
    v4 = NetworkSpec("0a1b2c3d4e5f", "net", "bridge", "kleene0", subnet="10.0.0.0/24")
    v6 = NetworkSpec("0a1b2c3d4e5f", "net", "bridge", "kleene0", subnet6="fd00::/64")
    bare = NetworkSpec("0a1b2c3d4e5f", "net", "bridge", "kleene0", nat="em0")
    assert pf.render_filtering(FirewallState((v4,))) == [IN4, ICC4]
    assert pf.render_filtering(FirewallState((v6,))) == [IN6, ICC6]
    assert pf.render_filtering(FirewallState((bare,))) == []
    # The nat rule depends on neither subnet.
    assert pf.render_translation(FirewallState((bare,))) == [
        f"nat on {P}_nat_if from ({P}_interface:network) to any -> ({P}_nat_if)"
    ]


def test_internal_networks_get_no_nat_rule_but_keep_the_macro():
    state = FirewallState((_network(True, True, "em0"),), host_gateway_if="em0")
    assert pf.render_translation(state) == []
    assert 'kleenet_0a1b2c3d4e5f_nat_if="em0"' in pf.render_macros(state)


def test_host_gateway_literal_is_resolved_at_render_time():
    net = NetworkSpec("0a1b2c3d4e5f", "net", "bridge", "kleene0", nat="<host-gateway>")
    with_gw = pf.render_macros(FirewallState((net,), host_gateway_if="vtnet0"))
    assert 'kleenet_0a1b2c3d4e5f_nat_if="vtnet0"' in with_gw
    assert not any("_nat_if" in m for m in pf.render_macros(FirewallState((net,))))
    assert pf.render_translation(FirewallState((net,))) == []


def test_all_interfaces_lists_running_vnet_epairs_only():
    net = NetworkSpec(
        "0a1b2c3d4e5f",
        "net",
        "bridge",
        "kleene0",
        endpoints=(
            EndpointSpec("e1", "c1", epair="epair2"),
            EndpointSpec("e2", "c2"),
            EndpointSpec("e3", "c3", epair="epair0"),
        ),
    )
    assert pf.render_macros(FirewallState((net,)))[-1] == (
        'kleenet_0a1b2c3d4e5f_all_interfaces="{kleene0, lo0, epair2a, epair0a}"'
    )


# ---------------------------------------------------------------- published ports


def _with_port(port: PublishedPortSpec, ip: str = "10.0.0.2", ip6: str = "") -> FirewallState:
    net = NetworkSpec(
        "0a1b2c3d4e5f",
        "net",
        "loopback",
        "kleene0",
        subnet="10.0.0.0/24",
        subnet6="fd00::/64",
        endpoints=(EndpointSpec("e1", "c1", ip, ip6),),
    )
    return FirewallState((net,), (ContainerSpec("c1", "t", (port,)),), "em0")


@pytest.mark.parametrize(
    ("host", "container", "cport"),
    [
        ("80", "80", "80"),
        ("8080", "80:*", "80"),
        ("8080:8090", "80:*", "80:90"),
        ("5000:6000", "4000:*", "4000:5000"),
        ("8080:8090", "80:90", "80:90"),
        ("8080:8090", "80", "80"),
    ],
)
def test_filter_port_resolves_the_star_form(host, container, cport):
    assert pf.filter_port(host, container) == cport


def test_port_rules_per_interface_then_network_interfaces_per_family():
    state = _with_port(PublishedPortSpec(("em0", "em1"), "53", "53", "udp"), ip6="fd00::2")
    assert pf.render_translation(state) == [
        "rdr on em0 inet proto udp from any to (em0) port 53 -> 10.0.0.2 port 53",
        "rdr on em1 inet proto udp from any to (em1) port 53 -> 10.0.0.2 port 53",
        "rdr on em0 inet6 proto udp from any to (em0) port 53 -> fd00::2 port 53",
        "rdr on em1 inet6 proto udp from any to (em1) port 53 -> fd00::2 port 53",
    ]
    assert pf.render_filtering(state)[-6:] == [
        "pass quick on em0 inet proto udp from any to 10.0.0.2 port 53",
        "pass quick on em1 inet proto udp from any to 10.0.0.2 port 53",
        # §9.3: `udp`, where the original wrote `tcp`.
        "pass quick on $kleenet_network_interfaces inet proto udp from any to 10.0.0.2 port 53",
        "pass quick on em0 inet6 proto udp from any to fd00::2 port 53",
        "pass quick on em1 inet6 proto udp from any to fd00::2 port 53",
        "pass quick on $kleenet_network_interfaces inet6 proto udp from any to fd00::2 port 53",
    ]


def test_ports_are_copied_verbatim_into_rdr():
    state = _with_port(PublishedPortSpec(("em0",), "5000:6000", "4000:*", "tcp"))
    assert pf.render_translation(state) == [
        "rdr on em0 inet proto tcp from any to (em0) port 5000:6000 -> 10.0.0.2 port 4000:*"
    ]


def test_port_without_interfaces_has_no_rdr_but_keeps_the_cross_network_pass():
    state = _with_port(PublishedPortSpec((), "8080", "80", "tcp"))
    assert pf.render_translation(state) == []
    assert pf.render_filtering(state)[-1] == (
        "pass quick on $kleenet_network_interfaces inet proto tcp from any to 10.0.0.2 port 80"
    )


def test_container_without_addresses_gets_no_port_rules():
    state = _with_port(PublishedPortSpec(("em0",), "8080", "80", "tcp"), ip="")
    assert pf.render_translation(state) == []
    assert not any("8080" in r or "port 80" in r for r in pf.render_filtering(state))


# ---------------------------------------------------------------- template


def test_placeholders_are_substituted_literally_not_evaluated():
    template = (
        "a <%= 1 + 1 %> b\n<%= kleene_macros %>\n<%= kleene_translation %>\n"
        "<%= kleene_filtering %>\n"
    )
    rules = pf.PfRules(("m1", "m2"), (), ("f",))
    assert pf.fill_template(template, rules) == "a <%= 1 + 1 %> b\nm1\nm2\n\nf\n"


def test_rendered_text_is_not_rescanned_for_placeholders():
    rules = pf.PfRules(("<%= kleene_filtering %>",), (), ("f",))
    filled = pf.fill_template(MARKER_TEMPLATE, rules)
    assert "<%= kleene_filtering %>" in filled
    assert filled.count("\nf\n") == 1


@pytest.mark.parametrize(
    "template",
    [
        "<%= kleene_macros %>\n<%= kleene_translation %>\n",
        "<%= kleene_macros %>\n<%= kleene_filtering %>\n<%= kleene_translation %>\n",
        "<%= kleene_macros %>\n<%= kleene_macros %>\n<%= kleene_translation %>\n"
        "<%= kleene_filtering %>\n",
    ],
    ids=["missing", "out-of-order", "twice"],
)
def test_bad_templates_are_refused(template):
    with pytest.raises(pf.PfTemplateError):
        pf.fill_template(template, pf.PfRules((), (), ()))


def test_shipped_template_has_the_markers_in_order():
    template = SHIPPED_TEMPLATE.read_text()
    pf.check_template(template)
    assert MARKER_TEMPLATE in template


@pytest.mark.parametrize(
    "state",
    [
        FirewallState(host_gateway_if='em0"\npass all'),
        FirewallState((NetworkSpec("0a1b2c3d4e5f", "n", "bridge", "kleene 0"),)),
        FirewallState((NetworkSpec("0a1b2c3d4e5f", "n", "bridge", "k0", nat="em0}"),)),
        FirewallState((NetworkSpec("0a1b2c3d4e5f", "n", "bridge", "k0", subnet="fd00::/64"),)),
        _with_port(PublishedPortSpec(("em0;",), "80", "80", "tcp")),
        _with_port(PublishedPortSpec(("em0",), "80:*", "80", "tcp")),
        _with_port(PublishedPortSpec(("em0",), "8\u0663", "80", "tcp")),
        _with_port(PublishedPortSpec(("em0\n",), "80", "80", "tcp")),
        _with_port(PublishedPortSpec(("em0",), "80", "80", "tcp"), ip6="fd00::2%x y"),
    ],
    ids=[
        "gateway",
        "interface",
        "nat",
        "family",
        "port-interface",
        "port",
        "unicode-digit",
        "newline",
        "scope-id",
    ],
)
def test_unsafe_inputs_are_refused(state):
    with pytest.raises(ValueError):
        pf.render_rules(state)


# ---------------------------------------------------------------- loading


def test_check_then_load_argv():
    live = Path("/etc/pf.conf")
    staged = pf.staging_path(live)
    assert staged == Path("/etc/pf.conf.kleened-new")
    assert pf.pfctl_check_argv(staged) == ["/sbin/pfctl", "-n", "-f", "/etc/pf.conf.kleened-new"]
    assert pf.pfctl_load_argv(live) == ["/sbin/pfctl", "-f", "/etc/pf.conf"]
    assert pf.pfctl_enable_argv() == ["/sbin/pfctl", "-e"]
