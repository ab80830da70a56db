"""nftables: the Linux counterpart of Kleene's pf ruleset, rendered (pure) into
one `nft -f` script that replaces the daemon's own table atomically.

**One table, replaced whole.** The script declares `table inet kleened` (a
no-op if it exists, and what makes the following delete valid if it does not),
deletes it and defines it completely. `nft -f` runs a file as one kernel
transaction, so the old ruleset stays in force until the new one is complete,
and a script with any error changes nothing. Applying the same script twice
gives the same result. Check it first with `nft_check_argv` (the analogue of
`pfctl -n -f`); `teardown_script` removes the table. Nothing outside the table
is touched, and every base chain has policy accept: the table only decides
about kleened's own subnets and coexists with the host's other rulesets.

**Mapping from pf** (networking reference §5, §10; `S` is a network's subnet):

* `nat on $nat_if from (if:network)`: postrouting
  `oifname "<nat>" ip saddr S masquerade`, also for IPv6, as pf's `nat` rule
  has no address family.
* `rdr on <if> … to (<if>) port P -> ip port Q`: prerouting
  `iifname "<if>" fib daddr type local … dnat`; "A:B" to "N:*" becomes a port
  map that keeps the offset. The same DNAT, without `iifname`, in the output
  chain serves the host's own connections, so a published port answers on
  127.0.0.1 (pf only redirects traffic arriving on <if>). That needs
  `route_localnet=1` on the container's interface
  (`iproute.route_localnet_path`) and the 127.0.0.0/8 masquerade in postrouting.
* IN `block in from any to S`: forward (and input, for the gateway address,
  which is in S): reject towards S, except from S itself when icc is on.
* ICC `pass quick on $all_interfaces from S to S`: with icc on, S to S is not
  rejected; with icc off it is, for routed traffic (bridged: see below).
* OUT/NATBLK/HGW of `internal` networks: forward and input reject anything
  from S not addressed to S: no other network, no upstream, no host address
  outside S, no other container's published port.
* The published-port `pass quick` rules: forward accepts placed before the
  networks' rejects, from the listed interfaces and from every kleened subnet
  (cross-network and icc=off peers).
* `block … log`: `log prefix "kleened <id> …" group 1` (NFLOG, the counterpart
  of pflog0) and **reject**, not drop: a silently dropped DNS query stalls
  programs for seconds (linux-host-facts, "Networking").

**icc on a bridge.** Containers on one Linux bridge reach each other bridged,
not routed: the inet family's forward hook never sees that traffic (pf sees it
only with `pfil_bridge=1`). `icc: false` is therefore enforced at the link
layer by marking every container port of the bridge isolated
(`iproute.port_isolated`), which stops frames between ports while leaving the
bridge's own (host) side reachable. The forward rules here reject the routed
paths (veth host ends, and traffic hair-pinned through the gateway). Cost, and
the one known difference from pf: a peer on the *same* icc=false bridge cannot
reach a container's published port at the container's own address (reference
§5.10 says pf lets it; peers on other networks can, as on pf). A `bridge`-family
table could lift that, at the price of stateless return rules for the replies
(bridge conntrack is a separate module) and a second table in the script.

**What `internal` allows.** Traffic within the subnet when icc is on (the
gateway address included, it is in S), and replies to connections that were
let in (for instance to its published ports). Nothing else: the daemon runs no
DNS service for containers (reference §7), so there is no exception for DNS
to the gateway. ICMPv6 neighbour discovery to the host is always accepted, as
IPv6 does not work without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from kleened.engine.netmodel import (
    FirewallState,
    NetworkSpec,
    PortTarget,
    check_state,
    collapse,
    container_port_range,
    port_map,
    port_range,
    port_targets,
    resolve_nat,
)

NFT = "nft"
FAMILY = "inet"
TABLE = "kleened"
LOG_GROUP = 1
REJECT = "reject with icmpx admin-prohibited"

_IP = {4: "ip", 6: "ip6"}
_NFPROTO = {4: "ipv4", 6: "ipv6"}


def _q(name: str) -> str:
    return f'"{name}"'


def _ifnames(names: Sequence[str]) -> str:
    if len(names) == 1:
        return _q(names[0])
    return "{ " + ", ".join(_q(n) for n in names) + " }"


def _ports(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _subnets(net: NetworkSpec) -> list[tuple[int, str]]:
    return [(f, s) for f, s in ((4, net.subnet), (6, net.subnet6)) if s]


def _log(net: NetworkSpec, what: str) -> str:
    return f'log prefix "kleened {net.id} {what} " group {LOG_GROUP}'


# ---------------------------------------------------------------- published ports


def _dnat_target(target: PortTarget, family: int, address: str) -> str:
    """`dnat ip to 10.0.0.2:80`, or a port map when a range keeps its offset."""
    port = target.port
    host = f"[{address}]" if family == 6 else address
    pairs = port_map(port.host_port, port.container_port)
    if pairs is None:
        cport = container_port_range(port.host_port, port.container_port)[0]
        return f"dnat {_IP[family]} to {host}:{cport}"
    entries = ", ".join(f"{h} : {c}" for h, c in pairs)
    return f"dnat {_IP[family]} to {host} : {port.protocol} dport map {{ {entries} }}"


def _addresses(target: PortTarget) -> list[tuple[int, str]]:
    return [(f, a) for f, a in ((4, target.ip_address), (6, target.ip_address6)) if a]


def _dnat_rules(state: FirewallState, *, from_host: bool) -> list[str]:
    lines = []
    for target in port_targets(state):
        port = target.port
        if not from_host and not port.interfaces:
            continue
        match = f"{port.protocol} dport {_ports(*port_range(port.host_port))}"
        for family, address in _addresses(target):
            prefix = "" if from_host else f"iifname {_ifnames(port.interfaces)} "
            lines.append(
                f"{prefix}meta nfproto {_NFPROTO[family]} fib daddr type local {match} "
                f"{_dnat_target(target, family, address)}"
            )
    return lines


def _port_accept_rules(state: FirewallState) -> list[str]:
    """After DNAT: the container port is open from the listed interfaces and
    from every kleened subnet (pf's two `pass quick` rules per port, §5.6)."""
    everyone = {
        family: collapse([s for n in state.networks for f, s in _subnets(n) if f == family])
        for family in (4, 6)
    }
    lines = []
    for target in port_targets(state):
        port = target.port
        cports = container_port_range(port.host_port, port.container_port)
        dport = f"{port.protocol} dport {_ports(*cports)}"
        for family, address in _addresses(target):
            to = f"{_IP[family]} daddr {address} {dport} accept"
            if port.interfaces:
                lines.append(f"iifname {_ifnames(port.interfaces)} {to}")
            if everyone[family]:
                lines.append(f"{_IP[family]} saddr {{ {', '.join(everyone[family])} }} {to}")
    return lines


# ---------------------------------------------------------------- chains


def _postrouting(state: FirewallState) -> list[str]:
    lines = []
    for net in state.sorted_networks():
        nat_if = resolve_nat(net, state.host_gateway_if)
        rules = []
        if nat_if and not net.internal:
            rules += [
                f"oifname {_q(nat_if)} {_IP[f]} saddr {s} masquerade" for f, s in _subnets(net)
            ]
        if net.subnet:
            # Published ports reached through 127.0.0.1: the source must not stay
            # a loopback address on the way into the container.
            rules.append(f"ip saddr 127.0.0.0/8 ip daddr {net.subnet} masquerade")
        if rules:
            lines += [f"# network {net.name} ({net.id})", *rules]
    return lines


def _input(state: FirewallState) -> list[str]:
    """Traffic addressed to the host itself (the gateway address is in S)."""
    lines = ["ct state established,related accept"]
    if any(net.subnet6 for net in state.networks):
        lines.append("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept")
    for net in state.sorted_networks():
        rules = []
        for family, s in _subnets(net):
            ip = _IP[family]
            if net.internal:
                rules.append(
                    f'iifname != "lo" {ip} saddr {s} {ip} daddr != {s} '
                    f"{_log(net, 'egress')} {REJECT}"
                )
            peers = f"{ip} saddr != {s} " if net.icc else ""
            rules.append(f'iifname != "lo" {peers}{ip} daddr {s} {_log(net, "in")} {REJECT}')
        if rules:
            lines += [f"# network {net.name} ({net.id})", *rules]
    return lines


def _forward(state: FirewallState) -> list[str]:
    lines = ["ct state established,related accept"]
    networks = state.sorted_networks()
    # Internal networks first, so nothing below (published ports included) lets
    # their traffic out: pf's OUT/NATBLK/HGW rules are `quick` for that reason.
    for net in networks:
        if not net.internal:
            continue
        rules = [
            f"{_IP[f]} saddr {s} {_IP[f]} daddr != {s} {_log(net, 'egress')} {REJECT}"
            for f, s in _subnets(net)
        ]
        if rules:
            lines += [f"# internal network {net.name} ({net.id})", *rules]
    ports = _port_accept_rules(state)
    if ports:
        lines += ["# published ports", *ports]
    # Every network's reject before any network's accept: nft stops at the first
    # verdict, so an earlier network's egress accept would otherwise let its
    # traffic into a later network (pf's IN blocks apply whatever the order).
    for net in networks:
        rules = []
        for family, s in _subnets(net):
            ip = _IP[family]
            peers = f"{ip} saddr != {s} " if net.icc else ""
            rules.append(f"{peers}{ip} daddr {s} {_log(net, 'in')} {REJECT}")
        if rules:
            lines += [f"# towards network {net.name} ({net.id})", *rules]
    for net in networks:
        rules = []
        for family, s in _subnets(net):
            ip = _IP[family]
            if not net.internal:
                rules.append(f"{ip} saddr {s} accept")
            elif net.icc:
                rules.append(f"{ip} saddr {s} {ip} daddr {s} accept")
        if rules:
            lines += [f"# from network {net.name} ({net.id})", *rules]
    return lines


def _chain(name: str, hook: str, body: list[str]) -> list[str]:
    return [
        f"\tchain {name} {{",
        f"\t\t{hook}",
        *[f"\t\t{line}" for line in body],
        "\t}",
    ]


def render_ruleset(state: FirewallState) -> str:
    """The complete script for `nft -f`."""
    check_state(state)
    table = f"{FAMILY} {TABLE}"
    out = [
        "# Generated by kleened; replaced whole on every network change. Do not edit.",
        f"table {table} {{",
        "}",
        f"delete table {table}",
        f"table {table} {{",
        *_chain(
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            _dnat_rules(state, from_host=False),
        ),
        *_chain(
            "output",
            "type nat hook output priority -100; policy accept;",
            _dnat_rules(state, from_host=True),
        ),
        *_chain(
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            _postrouting(state),
        ),
        *_chain("input", "type filter hook input priority filter; policy accept;", _input(state)),
        *_chain(
            "forward", "type filter hook forward priority filter; policy accept;", _forward(state)
        ),
        "}",
    ]
    return "\n".join(out) + "\n"


def teardown_script() -> str:
    """Remove the table (and so every rule of the daemon), whether it exists or not."""
    table = f"{FAMILY} {TABLE}"
    return f"table {table} {{\n}}\ndelete table {table}\n"


def nft_check_argv(path: str) -> list[str]:
    """Validate a script in the kernel without committing it (root, no changes)."""
    return [NFT, "-c", "-f", str(path)]


def nft_apply_argv(path: str) -> list[str]:
    return [NFT, "-f", str(path)]
