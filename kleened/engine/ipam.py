"""IP address management: subnet and gateway validation, endpoint addresses.

Pure functions. The caller supplies what is "in use" (addresses stored in the
network's endpoints are read from the NetworkSpec; addresses currently configured
on the network's host interface are passed in), so nothing here touches the host.

Messages marked [exact] are the original's (networking reference §1.3, §3); the
API returns them with 409 and clients may compare them. Messages for checks the
original lacked (reference §9.9: subnet membership, duplicates, reserved
addresses, a CIDR as gateway, a bare address as subnet) are new and share the
original's wording style.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from kleened.engine.netmodel import ADDRESS_TEXT, AUTO, INTERFACE_NAME, NetworkSpec

Family = Literal[4, 6]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_INET = {4: "inet", 6: "inet6"}
_LABEL = {4: "IPv4", 6: "IPv6"}
INTERFACE_PREFIX = "kleene"


class IpamError(ValueError):
    """A client-visible address problem; `message` is the response text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def quote(value: str) -> str:
    """A string printed the way the original did (Elixir's `inspect`)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for ch in value:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ---------------------------------------------------------------- subnets and gateways


def _address(value: str) -> IPAddress:
    """A plain address: `ipaddress` would also take IPv6 scope ids ("fe80::1%eth0"),
    which are meaningless here and would reach rulesets and command lines."""
    if not ADDRESS_TEXT.fullmatch(value):
        raise ValueError(value)
    return ipaddress.ip_address(value)


def parse_subnet(value: str, family: Family, field: str = "subnet") -> IPNetwork | None:
    """A strict CIDR block of the given family; None for "".

    Host bits must be zero (`10.0.0.5/24` is refused, as the original's parser
    does). Unlike the original, a bare address is not a subnet (reference §9.9).
    """
    if value == "":
        return None
    bad = IpamError(f"invalid {field}: could not parse cidr block: {quote(value)}")  # [exact]
    _, slash, prefix = value.partition("/")
    # A prefix length, not a netmask; no scope ids, no whitespace.
    if not slash or not prefix.isdigit() or not ADDRESS_TEXT.fullmatch(value):
        raise bad
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise bad from None
    if net.version != family:
        raise IpamError(f"invalid {field}: wrong IP protocol")  # [exact]
    return net


def parse_gateway(value: str, family: Family, field: str = "gateway") -> IPAddress | None:
    """An explicit gateway address; None for "" and "<auto>".

    The original accepted a CIDR as a gateway (reference §9.9); a gateway is a
    single address, so that is refused with the parse message.
    """
    if value in ("", AUTO):
        return None
    try:
        addr = _address(value)
    except ValueError:
        raise IpamError(
            f"invalid {field}: could not parse cidr block: {quote(value)}"  # [exact]
        ) from None
    if addr.version != family:
        raise IpamError(f"invalid {field}: wrong IP protocol")  # [exact]
    return addr


def validate_addressing(subnet: str, subnet6: str, gateway: str, gateway6: str) -> None:
    """Network-create checks, in the original's order; the first failure wins.

    Added (reference §9.9): an explicit gateway must be a usable address of its
    subnet when there is one. Without a subnet the gateway is never used
    (reference §2.2), so it is only syntax-checked.
    """
    net4 = parse_subnet(subnet, 4, "subnet")
    net6 = parse_subnet(subnet6, 6, "subnet6")
    for value, net, family, field in (
        (gateway, net4, 4, "gateway"),
        (gateway6, net6, 6, "gateway6"),
    ):
        addr = parse_gateway(value, family, field)  # type: ignore[arg-type]
        if addr is None or net is None:
            continue
        if addr not in net:
            raise IpamError(f"invalid {field}: {addr} is not in the subnet {net}")
        reason = _reserved_reason(addr, net, gateway=None)
        if reason:
            raise IpamError(f"invalid {field}: {addr} is the {reason} of {net}")


def auto_gateway(subnet: str) -> str:
    """`<auto>`'s address: the network address plus one (reference §1.4); "" when
    there is no subnet or the subnet has no such address (/32, /128)."""
    if subnet == "":
        return ""
    net = ipaddress.ip_network(subnet, strict=False)
    first = net.network_address + 1
    return str(first) if first in net else ""


def effective_gateway(subnet: str, gateway: str) -> str:
    """The gateway vnet containers route through: "" (none), the `<auto>` address,
    or the explicit one in canonical form. No subnet means no gateway (§2.2)."""
    if subnet == "" or gateway == "":
        return ""
    if gateway == AUTO:
        return auto_gateway(subnet)
    return str(ipaddress.ip_address(gateway))


# ---------------------------------------------------------------- endpoint addresses


def _usable_bounds(net: IPNetwork) -> tuple[int, int]:
    """First and last allocatable address as integers.

    The network address is never handed out, nor the IPv4 broadcast address
    (the original handed out the broadcast, reference §9.9). /31 and /32 (and
    IPv6 /127, /128) have neither (RFC 3021, RFC 6164): every address is usable.
    """
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.max_prefixlen - net.prefixlen <= 1:
        return first, last
    if net.version == 4:
        return first + 1, last - 1
    return first + 1, last


def _reserved_reason(addr: IPAddress, net: IPNetwork, gateway: IPAddress | None) -> str:
    low, high = _usable_bounds(net)
    if int(addr) < low:
        return "network address"
    if int(addr) > high:
        return "broadcast address"
    if gateway is not None and addr == gateway:
        return "gateway address"
    return ""


def _parse_taken(values: Iterable[str], family: Family) -> set[int]:
    """Addresses in use, compared as numbers (reference §9.10); anything that is
    not an address of this family (netstat's `<Link#3>`, "") is ignored."""
    taken = set()
    for value in values:
        text = value.split("%", 1)[0].split("/", 1)[0]  # fe80::1%kleene0, 10.0.0.1/24
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        if addr.version == family:
            taken.add(int(addr))
    return taken


def assign_address(
    requested: str,
    *,
    family: Family,
    subnet: str,
    gateway: str = "",
    taken: Iterable[str] = (),
) -> str:
    """Resolve one family of an endpoint request (reference §3, rules 1-5).

    `gateway` is the address to keep free (already resolved, "" for none);
    `taken` is every address already in use on the network. Returns the address
    in canonical form, or "" for no address.
    """
    if requested == "":
        return ""
    if subnet == "":
        if requested == AUTO:
            return ""
        raise IpamError(  # [exact]
            "cannot set ip address because there is no "
            f"{_LABEL[family]} subnet defined for this network"
        )
    net = ipaddress.ip_network(subnet, strict=False)
    gw = ipaddress.ip_address(gateway) if gateway else None
    used = _parse_taken(taken, family)
    if gw is not None:
        used.add(int(gw))
    if requested == AUTO:
        low, high = _usable_bounds(net)
        candidate = low
        # Terminates after at most len(used) + 1 steps, even in an IPv6 /48.
        while candidate <= high and candidate in used:
            candidate += 1
        if candidate > high:
            raise IpamError(f"no more {_INET[family]} IP's left in the network")  # [exact]
        return str(ipaddress.ip_address(candidate))
    try:
        addr = _address(requested)
        if addr.version != family:
            raise ValueError(requested)
    except ValueError:
        raise IpamError(  # [exact]
            f"could not parse {_INET[family]} address {requested}: einval"
        ) from None
    if addr not in net:
        raise IpamError(
            f"cannot set ip address {addr} because it is not in the subnet {net} of this network"
        )
    reason = _reserved_reason(addr, net, gw)
    if reason:
        raise IpamError(f"cannot set ip address {addr} because it is the {reason} of {net}")
    if int(addr) in used:
        raise IpamError(f"cannot set ip address {addr} because it is already in use")
    return str(addr)


def assign_endpoint(
    network: NetworkSpec,
    ip_address: str,
    ip_address6: str,
    interface_addresses: Iterable[str] = (),
) -> tuple[str, str]:
    """Both addresses of a new endpoint on `network`, IPv4 first (reference §3).

    In use: the addresses of the network's endpoints plus `interface_addresses`
    (what the host currently has on the network's interface). The gateway is
    reserved on bridge networks only: loopback and custom networks ignore their
    gateway entirely, and their first container gets the first host address
    (reference §1.4 and the allocation table of §3).
    """
    interface_addresses = list(interface_addresses)
    results = []
    for family, requested, subnet, gateway in (
        (4, ip_address, network.subnet, network.gateway),
        (6, ip_address6, network.subnet6, network.gateway6),
    ):
        stored = [ep.ip_address if family == 4 else ep.ip_address6 for ep in network.endpoints]
        keep_free = effective_gateway(subnet, gateway) if network.type == "bridge" else ""
        results.append(
            assign_address(
                requested,
                family=family,  # type: ignore[arg-type]
                subnet=subnet,
                gateway=keep_free,
                taken=[*stored, *interface_addresses],
            )
        )
    return results[0], results[1]


# ---------------------------------------------------------------- interface names


def validate_interface_name(name: str) -> None:
    """Refuse names that are unusable as a host interface or unsafe in rulesets."""
    if not INTERFACE_NAME.fullmatch(name):
        raise IpamError(
            f"invalid interface name {quote(name)}: use 1 to 15 letters, digits, "
            "'_', '.' or '-', starting with a letter"
        )


def next_interface_name(used: Iterable[str], prefix: str = INTERFACE_PREFIX) -> str:
    """`kleene<N>` with the smallest N not in `used` (reference §1.4).

    The caller passes the stored networks' interfaces and, unlike the original
    (reference §9.13), the host's existing interface names too.
    """
    taken = set(used)
    n = 0
    while f"{prefix}{n}" in taken:
        n += 1
    return f"{prefix}{n}"
