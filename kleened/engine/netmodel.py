"""What the network renderers need to know, as plain frozen dataclasses.

The pf and nftables renderers, the jail-parameter builder and IPAM are pure
functions of these values. They are deliberately independent of the SQLAlchemy
models: the network engine copies rows into them (one query, one snapshot), so a
renderer can never trigger lazy loads, and the tests build them by hand.

Conventions kept from the original's data model (networking reference §1.2, §3, §6):
an unused address family is `""`, not None; `gateway` may be the literal
`"<auto>"`; `nat` may be the literal `"<host-gateway>"`, resolved against the
detected host gateway interface when rules are rendered (reference §9.20: a
frozen gateway goes stale when the host's default route changes).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

AUTO = "<auto>"
HOST_GATEWAY = "<host-gateway>"

NetworkType = Literal["loopback", "bridge", "custom"]
PortProtocol = Literal["tcp", "udp"]

# Interface names that are safe on both platforms and inside pf and nft text:
# IFNAMSIZ is 16 on FreeBSD and Linux (15 characters and a NUL); starting with a
# letter rules out Linux's "." and ".." and pf reading a number; no quotes,
# spaces, slashes, commas, braces or colons (pf lists, sysctl paths, aliases).
# Use with fullmatch: `$` would accept a trailing newline.
INTERFACE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")
# What an address or subnet may contain once written into a ruleset: `ipaddress`
# accepts IPv6 scope ids ("fe80::1%anything"), which must never get that far.
ADDRESS_TEXT = re.compile(r"[0-9A-Fa-f.:/]+")


@dataclass(frozen=True)
class EndpointSpec:
    """A container's attachment to one network (an `EndPoint` record)."""

    id: str
    container_id: str
    ip_address: str = ""
    ip_address6: str = ""
    # FreeBSD: the epair's base name ("epair3") while a vnet container runs, else None.
    epair: str | None = None


@dataclass(frozen=True)
class NetworkSpec:
    id: str
    name: str
    type: NetworkType
    interface: str
    subnet: str = ""
    subnet6: str = ""
    gateway: str = ""
    gateway6: str = ""
    nat: str = ""  # an interface, "" for none, or HOST_GATEWAY
    icc: bool = True
    internal: bool = False
    # In storage order; only the epair order in pf's `…_all_interfaces` depends on it.
    endpoints: tuple[EndpointSpec, ...] = ()


@dataclass(frozen=True)
class PublishedPortSpec:
    """A validated `PublishedPortConfig` (host_port "N" or "A:B"; container_port
    "N", "N:*" or "A:B")."""

    interfaces: tuple[str, ...]
    host_port: str
    container_port: str
    protocol: PortProtocol = "tcp"


@dataclass(frozen=True)
class ContainerSpec:
    id: str
    created: str = ""  # ISO-8601 UTC; rules are emitted oldest container first
    public_ports: tuple[PublishedPortSpec, ...] = ()


@dataclass(frozen=True)
class FirewallState:
    """Every input of a firewall regeneration (reference §5.2)."""

    networks: tuple[NetworkSpec, ...] = ()
    containers: tuple[ContainerSpec, ...] = ()
    host_gateway_if: str | None = None  # detected at start-up; None when no default route

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FirewallState:
        """The inverse of `dataclasses.asdict` (lists for tuples): lets a state be
        kept as JSON, e.g. the golden-test scenarios or a debugging dump."""
        networks = tuple(
            NetworkSpec(
                **{k: v for k, v in net.items() if k != "endpoints"},
                endpoints=tuple(EndpointSpec(**ep) for ep in net.get("endpoints", ())),
            )
            for net in data.get("networks", ())
        )
        containers = tuple(
            ContainerSpec(
                **{k: v for k, v in c.items() if k != "public_ports"},
                public_ports=tuple(
                    PublishedPortSpec(**{**p, "interfaces": tuple(p["interfaces"])})
                    for p in c.get("public_ports", ())
                ),
            )
            for c in data.get("containers", ())
        )
        return cls(networks, containers, data.get("host_gateway_if"))

    def sorted_networks(self) -> list[NetworkSpec]:
        return sorted(self.networks, key=lambda n: (n.name, n.id))

    def sorted_containers(self) -> list[ContainerSpec]:
        return sorted(self.containers, key=lambda c: (c.created, c.id))


@dataclass(frozen=True)
class PortTarget:
    """A published port with the addresses its traffic is redirected to."""

    container_id: str
    port: PublishedPortSpec
    ip_address: str = ""
    ip_address6: str = ""


def resolve_nat(network: NetworkSpec, host_gateway_if: str | None) -> str:
    """The interface to NAT on, or "" for none."""
    if network.nat == HOST_GATEWAY:
        return host_gateway_if or ""
    return network.nat


def attachments(
    container_id: str, networks: Iterable[NetworkSpec]
) -> list[tuple[NetworkSpec, EndpointSpec]]:
    """The container's endpoints with their networks, in network-name order.

    Name order (not storage order) because the original's storage order changes
    when an endpoint row is re-inserted at vnet start (reference §9.5).
    """
    found = [
        (net, ep) for net in networks for ep in net.endpoints if ep.container_id == container_id
    ]
    return sorted(found, key=lambda pair: (pair[0].name, pair[0].id))


def port_addresses(container_id: str, networks: Iterable[NetworkSpec]) -> tuple[str, str]:
    """The IPv4 and IPv6 address a container's published ports redirect to.

    The first non-empty address of each family among the container's endpoints,
    networks in name order (reference §5.2, made deterministic as §9.5 asks).
    A family with no address gives "" (the original kept a stale value, §9.4).
    Computed on the fly: nothing is written back to the container (§9.6).
    """
    ip4 = ip6 = ""
    for _net, ep in attachments(container_id, networks):
        ip4 = ip4 or ep.ip_address
        ip6 = ip6 or ep.ip_address6
    return ip4, ip6


def port_targets(state: FirewallState) -> list[PortTarget]:
    """Every published port, oldest container first, with its resolved addresses."""
    targets = []
    for container in state.sorted_containers():
        ip4, ip6 = port_addresses(container.id, state.networks)
        for port in container.public_ports:
            targets.append(PortTarget(container.id, port, ip4, ip6))
    return targets


# ---------------------------------------------------------------- port arithmetic


def port_range(value: str) -> tuple[int, int]:
    """ "80" -> (80, 80); "8080:8090" -> (8080, 8090). ValueError otherwise."""
    parts = value.split(":")
    if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"invalid port specification {value!r}")
    low, high = int(parts[0]), int(parts[-1])
    if not (0 <= low <= 65535 and 0 <= high <= 65535):
        raise ValueError(f"invalid port specification {value!r}")
    # The API does not require A <= B (reference §9.22); a range is a set of ports.
    return min(low, high), max(low, high)


def published_port_clash(
    ports: Iterable[PublishedPortSpec], others: Mapping[str, Iterable[PublishedPortSpec]]
) -> str | None:
    """Why `ports` cannot be published next to the running containers' `others`
    (container id -> ports), or None. Every published port is also redirected
    from the host itself, so any overlap of host ports of one protocol clashes,
    whatever the interfaces (the original published the same port twice, §9.22).
    """
    for port in ports:
        low, high = port_range(port.host_port)
        for owner, theirs in others.items():
            for other in theirs:
                their_low, their_high = port_range(other.host_port)
                if other.protocol == port.protocol and low <= their_high and their_low <= high:
                    return (
                        f"host port {port.host_port}/{port.protocol} is already published "
                        f"by running container {owner}"
                    )
    return None


def is_offset_port(container_port: str) -> bool:
    """ "N:*": keep the offset within the host range (pf's redirection syntax)."""
    return container_port.endswith(":*")


def container_port_range(host_port: str, container_port: str) -> tuple[int, int]:
    """The container-side ports a published port reaches (reference §5.6).

    "N:*" with host "A:B" is N..N+B-A; "N:*" with a single host port is N;
    anything else is the container port itself.
    """
    if is_offset_port(container_port):
        start = port_range(container_port[:-2])[0]
        low, high = port_range(host_port)
        return start, start + (high - low)
    return port_range(container_port)


def port_map(host_port: str, container_port: str) -> list[tuple[int, int]] | None:
    """Host port -> container port pairs when the mapping is not a single target.

    None means "every host port goes to one container port" (a single container
    port, or a single host port). Otherwise each host port maps to the container
    port at the same offset: "N:*" (pf keeps the offset), and an explicit range,
    which is clamped to its last port when it is shorter than the host range.
    """
    h_low, h_high = port_range(host_port)
    c_low, c_high = container_port_range(host_port, container_port)
    if h_low == h_high or c_low == c_high:
        return None
    return [(h_low + i, min(c_low + i, c_high)) for i in range(h_high - h_low + 1)]


# ---------------------------------------------------------------- sanity of inputs


def subnet_of(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Parse a stored subnet ("" means none). ValueError on garbage."""
    if value == "":
        return None
    return ipaddress.ip_network(value, strict=False)


def collapse(subnets: Sequence[str]) -> list[str]:
    """Merge duplicate and overlapping subnets (nft interval sets refuse overlaps)."""
    nets = [ipaddress.ip_network(s, strict=False) for s in subnets if s]
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    out = [str(n) for n in ipaddress.collapse_addresses(v4)]  # type: ignore[arg-type]
    out += [str(n) for n in ipaddress.collapse_addresses(v6)]  # type: ignore[arg-type]
    return out


def check_state(state: FirewallState) -> None:
    """Refuse inputs that would inject text into a ruleset or make it unloadable.

    The API validates all of this at create time; the renderers check again
    because their output is executed by pf or nft with root privileges.
    """
    names = [state.host_gateway_if] if state.host_gateway_if else []
    for net in state.networks:
        names.append(net.interface)
        if net.nat not in ("", HOST_GATEWAY):
            names.append(net.nat)
        for family, value in ((4, net.subnet), (6, net.subnet6)):
            parsed = subnet_of(value)
            if parsed is not None and (
                parsed.version != family or not ADDRESS_TEXT.fullmatch(value)
            ):
                raise ValueError(f"network {net.id}: {value!r} is not an IPv{family} subnet")
        for ep in net.endpoints:
            if ep.epair is not None:
                names.append(f"{ep.epair}a")
            for family, addr in ((4, ep.ip_address), (6, ep.ip_address6)):
                if addr and (
                    not ADDRESS_TEXT.fullmatch(addr) or ipaddress.ip_address(addr).version != family
                ):
                    raise ValueError(f"endpoint {ep.id}: {addr!r} is not an IPv{family} address")
    for container in state.containers:
        for port in container.public_ports:
            names.extend(port.interfaces)
            port_range(port.host_port)
            container_port_range(port.host_port, port.container_port)
            if port.protocol not in ("tcp", "udp"):
                raise ValueError(f"invalid protocol {port.protocol!r}")
    for name in names:
        if not INTERFACE_NAME.fullmatch(name):
            raise ValueError(f"unsafe interface name {name!r}")
