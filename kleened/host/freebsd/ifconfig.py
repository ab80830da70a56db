"""FreeBSD network commands as argument vectors, jail(8) network parameters,
and parsers for the commands' output. Pure: the driver runs them.

Vectors are the original's (networking reference §1.4-§2.4, §4, §7; core
reference §8.3), with the program's absolute path because the daemon runs them
with a minimal environment. Text inside jail(8) parameters keeps the original's
bare command names: jail(8) runs those through /bin/sh with the daemon's PATH.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from kleened.engine.ipam import auto_gateway, effective_gateway
from kleened.engine.netmodel import AUTO, EndpointSpec, NetworkSpec

IFCONFIG = "/sbin/ifconfig"
NETSTAT = "/usr/bin/netstat"
SYSCTL = "/sbin/sysctl"
JAIL = "/usr/sbin/jail"
JLS = "/usr/sbin/jls"


def _prefixlen(subnet: str) -> int:
    return ipaddress.ip_network(subnet, strict=False).prefixlen


def _af(address: str) -> str:
    return "inet" if ipaddress.ip_address(address.split("/", 1)[0]).version == 4 else "inet6"


def _need(value: str | None, what: str) -> str:
    # An empty name would turn `ifconfig <bridge> deletem <x>a` into `deletem a`
    # (reference §9.19); refuse it here rather than run it.
    if not value:
        raise ValueError(f"{what} is empty")
    return value


# ---------------------------------------------------------------- interfaces


def create_loopback(name: str) -> list[str]:
    return [IFCONFIG, "lo", "create", "name", name]


def create_bridge(name: str) -> list[str]:
    return [IFCONFIG, "bridge", "create", "name", name]


def create_epair() -> list[str]:
    """Prints the `a` end's name, e.g. `epair5a`; see `parse_epair`."""
    return [IFCONFIG, "epair", "create"]


def destroy(name: str) -> list[str]:
    return [IFCONFIG, _need(name, "interface"), "destroy"]


def rename(name: str, new_name: str) -> list[str]:
    return [IFCONFIG, name, "name", new_name]


def up(name: str) -> list[str]:
    return [IFCONFIG, name, "up"]


def show(name: str) -> list[str]:
    """`ifconfig <if>`: its output lists bridge members (see `parse_bridge_members`)."""
    return [IFCONFIG, name]


def add_alias(name: str, address: str, prefixlen: int) -> list[str]:
    """`ifconfig kleene0 inet 10.13.37.1/24 alias` (or `inet6 …/48 alias`)."""
    return [IFCONFIG, name, _af(address), f"{address}/{prefixlen}", "alias"]


def remove_alias(name: str, address: str) -> list[str]:
    """`ifconfig kleene0 inet 10.13.37.2 -alias`."""
    return [IFCONFIG, name, _af(address), address, "-alias"]


def bridge_addm(bridge: str, member: str) -> list[str]:
    return [IFCONFIG, bridge, "addm", _need(member, "bridge member")]


def bridge_deletem(bridge: str, member: str) -> list[str]:
    return [IFCONFIG, bridge, "deletem", _need(member, "bridge member")]


def epair_host_end(epair: str) -> str:
    return f"{_need(epair, 'epair')}a"


def epair_jail_end(epair: str) -> str:
    return f"{_need(epair, 'epair')}b"


def reclaim_from_jail(epair: str, jail: str) -> list[str]:
    """Take a running vnet jail's end of the epair back to the host (§2.4)."""
    return [IFCONFIG, epair_jail_end(epair), "-vnet", jail]


def bridge_gateway_aliases(network: NetworkSpec) -> list[list[str]]:
    """The `<auto>` gateway aliases a bridge network gets at create (§1.4).

    An explicit gateway is never put on the bridge, and loopback and custom
    networks ignore their gateways.
    """
    if network.type != "bridge":
        return []
    argvs = []
    for subnet, gateway in ((network.subnet, network.gateway), (network.subnet6, network.gateway6)):
        if gateway == AUTO and subnet and auto_gateway(subnet):
            argvs.append(add_alias(network.interface, auto_gateway(subnet), _prefixlen(subnet)))
    return argvs


def endpoint_aliases(network: NetworkSpec, endpoint: EndpointSpec) -> list[list[str]]:
    """An ipnet endpoint's host aliases: `/32` and `/128` on the network's interface."""
    argvs = []
    if endpoint.ip_address:
        argvs.append(add_alias(network.interface, endpoint.ip_address, 32))
    if endpoint.ip_address6:
        argvs.append(add_alias(network.interface, endpoint.ip_address6, 128))
    return argvs


def endpoint_alias_removals(
    network: NetworkSpec, endpoint: EndpointSpec, present: Sequence[str]
) -> list[list[str]]:
    """`-alias` for each endpoint address the interface currently has.

    `present` is `parse_interface_addresses` of the interface; addresses are
    compared parsed, not as strings (reference §9.10).
    """
    have = {ipaddress.ip_address(a) for a in present}
    argvs = []
    for address in (endpoint.ip_address, endpoint.ip_address6):
        if address and ipaddress.ip_address(address) in have:
            argvs.append(remove_alias(network.interface, address))
    return argvs


# ---------------------------------------------------------------- queries and parsers


def interface_addresses(name: str) -> list[str]:
    return [NETSTAT, "--libxo", "json", "-I", name, "-n"]


def parse_interface_addresses(output: str) -> list[str]:
    """Addresses from `netstat --libxo json -I <if> -n` (scope ids and the
    `<Link#N>` entries dropped). An empty list also means "no such interface"."""
    entries = json.loads(output).get("statistics", {}).get("interface", [])
    found = []
    for entry in entries:
        text = str(entry.get("address", "")).split("%", 1)[0]
        try:
            found.append(str(ipaddress.ip_address(text)))
        except ValueError:
            continue
    return found


def interface_exists(output: str) -> bool:
    """The original's test: netstat lists at least one entry for the interface."""
    return bool(json.loads(output).get("statistics", {}).get("interface", []))


def routing_table() -> list[str]:
    return [NETSTAT, "--libxo", "json", "-rn"]


def parse_default_interface(output: str) -> str | None:
    """The IPv4 default route's interface from `netstat --libxo json -rn` (§7)."""
    tables = (
        json.loads(output)
        .get("statistics", {})
        .get("route-information", {})
        .get("route-table", {})
        .get("rt-family", [])
    )
    for table in tables:
        if table.get("address-family") != "Internet":
            continue
        for entry in table.get("rt-entry", []):
            if entry.get("destination") == "default":
                return entry.get("interface-name") or None
    return None


def parse_epair(output: str) -> str:
    """`epair5a\\n` -> `epair5` (the name without its end letter)."""
    name = output.strip()
    if not name.endswith("a") or len(name) < 2:
        raise ValueError(f"unexpected output of 'ifconfig epair create': {output!r}")
    return name[:-1]


def parse_bridge_members(output: str) -> list[str]:
    """Members from `ifconfig <bridge>`: the token after `member:` (§1.6)."""
    members = []
    for line in output.splitlines():
        tokens = line.split()
        if len(tokens) >= 2 and tokens[0] == "member:":
            members.append(tokens[1])
    return members


def ip_forwarding_query() -> list[str]:
    return [SYSCTL, "net.inet.ip.forwarding"]


def ip_forwarding_enable() -> list[str]:
    return [SYSCTL, "net.inet.ip.forwarding=1"]


def ip6_forwarding_enable() -> list[str]:
    """The original never enabled IPv6 forwarding (reference §9.21)."""
    return [SYSCTL, "net.inet6.ip6.forwarding=1"]


# ---------------------------------------------------------------- jails


def jail_addresses(name: str) -> list[str]:
    return [JLS, "--libxo", "json", "-v", "-j", name]


def parse_jail_addresses(output: str) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 addresses of a running jail from `jls --libxo json -v -j`."""
    jails = json.loads(output).get("jail-information", {}).get("jail", [])
    if not jails:
        return [], []
    return list(jails[0].get("ipv4_addrs", [])), list(jails[0].get("ipv6_addrs", []))


def jail_set_addresses(
    name: str, ip4: Sequence[str] | None = None, ip6: Sequence[str] | None = None
) -> list[str]:
    """`jail -m` a running ipnet jail's address lists (live connect/disconnect).

    A family given as None is left alone. Unlike the original (reference §9.12),
    IPv6 goes through `ip6.addr`, not `ip4.addr`.
    """
    argv = [JAIL, "-m", f"name={name}"]
    if ip4 is not None:
        argv.append(f"ip4.addr={','.join(ip4)}")
    if ip6 is not None:
        argv.append(f"ip6.addr={','.join(ip6)}")
    return argv


def jail_network_params(
    driver: str,
    container_id: str,
    attached: Sequence[tuple[NetworkSpec, EndpointSpec]],
) -> list[str]:
    """jail(8) parameters for a container's network driver (§2.2, core §8.3).

    `attached` is `netmodel.attachments(container_id, networks)`. Each parameter
    is one argv element; they go before the user's `jail_param` entries.
    """
    if driver == "disabled":
        return ["ip4=disable", "ip6=disable"]
    if driver == "host":
        return ["ip4=inherit", "ip6=inherit"]
    if driver == "ipnet":
        return _ipnet_params(attached)
    if driver == "vnet":
        return _vnet_params(container_id, attached)
    raise ValueError(f"unknown network driver {driver!r}")


def _ipnet_params(attached: Sequence[tuple[NetworkSpec, EndpointSpec]]) -> list[str]:
    """ipnet: the host aliases as exec.prestart, then one address list per family.

    The original repeated `ip4.addr=`/`ip6.addr=` once per network, interleaved
    with the aliases; one comma-separated list per family is what reference
    §2.2 and §9.24 recommend. For a container on one network with one address
    the result is the original's vector. The aliases are added here, as
    exec.prestart, so they are part of the jail's creation; the driver need not
    add them again beforehand (the original did both, reference §9.23).
    """
    params = []
    ip4: list[str] = []
    ip6: list[str] = []
    for net, ep in attached:
        if ep.ip_address:
            params.append(f"exec.prestart=ifconfig {net.interface} inet {ep.ip_address}/32 alias")
            ip4.append(ep.ip_address)
        if ep.ip_address6:
            params.append(
                f"exec.prestart=ifconfig {net.interface} inet6 {ep.ip_address6}/128 alias"
            )
            ip6.append(ep.ip_address6)
    if ip4:
        params.append(f"ip4.addr={','.join(ip4)}")
    if ip6:
        params.append(f"ip6.addr={','.join(ip6)}")
    return params


def _vnet_params(
    container_id: str, attached: Sequence[tuple[NetworkSpec, EndpointSpec]]
) -> list[str]:
    """vnet: host ends joined to the bridges, jail ends configured as root.

    The original configured the jail's end with `exec.start=ifconfig …` and
    `exec.start=route add …`. jail(8) runs every exec.start command (and
    `command=`) as `exec.jail_user`, which the daemon sets to the container's
    user, so for a non-root container user the configuration failed (reference
    §9.18). Instead this uses `exec.created`, which jail(8) runs in the *host*
    environment as `exec.system_user` (the daemon, root) right after creating
    the jail and before exec.start and `command=`:

    * `ifconfig <epair>b vnet <id>` moves the jail's end in. `vnet.interface=`
      cannot be used: jail(8) moves that interface only *after* exec.created
      (usr.sbin/jail/jail.c: IP_EXEC_CREATED, then IP_VNET_INTERFACE);
    * `jexec <id> …` then runs ifconfig and route inside the jail. jexec runs as
      the invoking user (root) unless given -u/-U, and exec.jail_user does not
      apply to it (core reference §8.4).

    Their output still reaches the client as container output, e.g.
    `add net default: gateway 10.13.38.1`, as in the original.

    Other changes (reference §9.17): one default route per family, from the
    first network (name order) that has a gateway and where the container has
    an address of that family (a second `route add default` failed with "File
    exists", and a route without an address could not be added); and the
    jail's own lo0 gets 127.0.0.1 (the original left it down).
    """
    params = ["vnet", f"exec.created=jexec {container_id} ifconfig lo0 inet 127.0.0.1/8 up"]
    routes: dict[str, str] = {}
    for net, ep in attached:
        if net.type != "bridge":
            raise ValueError(f"vnet containers cannot use {net.type} network {net.name}")
        host_end, jail_end = epair_host_end(ep.epair or ""), epair_jail_end(ep.epair or "")
        params += [
            f"exec.prestart=ifconfig {net.interface} addm {host_end}",
            f"exec.prestart=ifconfig {host_end} up",
            f"exec.created=ifconfig {jail_end} vnet {container_id}",
        ]
        for af, subnet, ip, gateway in (
            ("inet", net.subnet, ep.ip_address, net.gateway),
            ("inet6", net.subnet6, ep.ip_address6, net.gateway6),
        ):
            if not (subnet and ip):
                continue
            params.append(
                f"exec.created=jexec {container_id} ifconfig {jail_end} {af} "
                f"{ip}/{_prefixlen(subnet)}"
            )
            gw = effective_gateway(subnet, gateway)
            if gw and af not in routes:
                routes[af] = f"exec.created=jexec {container_id} route add -{af} default {gw}"
    # After every address: a route needs its address first (§2.2).
    params += [routes[af] for af in ("inet", "inet6") if af in routes]
    return params
