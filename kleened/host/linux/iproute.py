"""Linux network commands as argument vectors (iproute2, nsenter) and the
/proc/sys paths the Linux network driver writes. Pure: the driver runs them.

The model follows networking reference §10: a network's interface is a bridge
(also for loopback networks: this kernel has no `dummy`, and a bridge without
members behaves as a loopback-type interface); a container's end of a network
is one end of a veth pair inside the jail's network namespace, which is
addressed by the host pid of the jail's pid 1 (`/proc/<pid>/ns/net`), since the
Linux jails are not named `ip netns` namespaces.

Commands are bare names: the driver runs them with
PATH=/usr/sbin:/usr/bin:/sbin:/bin, like the rest of kleened.host.linux.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

IP = "ip"
NSENTER = "nsenter"
PROC_SYS = Path("/proc/sys")
IFNAMSIZ = 15  # usable characters; the kernel's IFNAMSIZ (16) includes the NUL
VETH_PREFIX = "kv"


def _family_flag(address: str) -> str:
    return "-4" if ipaddress.ip_address(address.split("/", 1)[0]).version == 4 else "-6"


# ---------------------------------------------------------------- links


def bridge_create(name: str) -> list[str]:
    return [IP, "link", "add", "name", name, "type", "bridge"]


def link_up(name: str) -> list[str]:
    return [IP, "link", "set", "dev", name, "up"]


def link_down(name: str) -> list[str]:
    return [IP, "link", "set", "dev", name, "down"]


def link_delete(name: str) -> list[str]:
    """Deleting either end of a veth pair deletes both."""
    return [IP, "link", "del", "dev", name]


def link_rename(name: str, new_name: str) -> list[str]:
    """The link must be down."""
    return [IP, "link", "set", "dev", name, "name", new_name]


def link_show(name: str) -> list[str]:
    """Exit status 0 iff the interface exists."""
    return [IP, "-j", "link", "show", "dev", name]


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """Host and container ends of an endpoint's veth pair: `kv<id>a`, `kv<id>b`.

    Derived from the 12-hex endpoint id, so the names are unique, stable across
    daemon restarts (the reconciler can find them) and exactly 15 characters.
    """
    host, peer = f"{VETH_PREFIX}{endpoint_id}a", f"{VETH_PREFIX}{endpoint_id}b"
    if len(host) > IFNAMSIZ or not endpoint_id.isalnum():
        raise ValueError(f"endpoint id {endpoint_id!r} does not give a valid interface name")
    return host, peer


def veth_create(host_end: str, peer_end: str) -> list[str]:
    return [IP, "link", "add", "name", host_end, "type", "veth", "peer", "name", peer_end]


def bridge_attach(port: str, bridge: str) -> list[str]:
    return [IP, "link", "set", "dev", port, "master", bridge]


def bridge_detach(port: str) -> list[str]:
    return [IP, "link", "set", "dev", port, "nomaster"]


def port_isolated(port: str, isolated: bool = True) -> list[str]:
    """Mark a bridge port isolated: it cannot exchange frames with any other
    isolated port, only with non-isolated ones (the bridge itself, i.e. the host).

    This is how `icc: false` is enforced between containers on one bridge:
    their traffic is bridged, never routed, so the inet-family firewall does not
    see it (pf sees it on FreeBSD only with pfil_bridge=1). Every container port
    of an icc=false network is isolated; run after `bridge_attach` (`ip` refuses
    `master` and `type bridge_slave` in one command).
    """
    state = "on" if isolated else "off"
    return [IP, "link", "set", "dev", port, "type", "bridge_slave", "isolated", state]


def move_to_netns(name: str, pid: int) -> list[str]:
    """Move an interface into the network namespace of process `pid`."""
    return [IP, "link", "set", "dev", name, "netns", str(pid)]


# ---------------------------------------------------------------- addresses and routes


def addr_add(name: str, address: str, prefixlen: int) -> list[str]:
    return [IP, _family_flag(address), "addr", "add", f"{address}/{prefixlen}", "dev", name]


def addr_del(name: str, address: str, prefixlen: int) -> list[str]:
    return [IP, _family_flag(address), "addr", "del", f"{address}/{prefixlen}", "dev", name]


def addr_show(name: str) -> list[str]:
    return [IP, "-j", "addr", "show", "dev", name]


def route_add(
    destination: str, dev: str, *, via: str | None = None, onlink: bool = False, family: int = 4
) -> list[str]:
    """`ip -4 route add 10.13.37.2/32 dev kv…a` (an ipnet container's host route),
    or `ip -4 route add default via 10.13.37.1 dev kv…b` (`onlink` when the
    gateway is outside the interface's prefixes). The family comes from `via` or
    the destination; `family` only matters for `default` without `via`."""
    reference = via or (None if destination == "default" else destination)
    flag = _family_flag(reference) if reference else f"-{family}"
    argv = [IP, flag, "route", "add", destination]
    if via:
        argv += ["via", via]
    argv += ["dev", dev]
    if onlink:
        argv.append("onlink")
    return argv


def route_del(destination: str, dev: str, *, family: int = 4) -> list[str]:
    return [IP, f"-{family}", "route", "del", destination, "dev", dev]


def default_route() -> list[str]:
    """Host gateway detection (reference §10): `dev` of the first default route."""
    return [IP, "-j", "-4", "route", "show", "default"]


def parse_default_interface(output: str) -> str | None:
    routes = json.loads(output or "[]")
    for route in routes:
        if route.get("dev"):
            return str(route["dev"])
    return None


def parse_addresses(output: str) -> list[str]:
    """Addresses from `ip -j addr show dev <if>` (link-local ones included)."""
    found = []
    for link in json.loads(output or "[]"):
        for info in link.get("addr_info", []):
            if "local" in info:
                found.append(str(ipaddress.ip_address(info["local"])))
    return found


# ---------------------------------------------------------------- inside a jail's namespace


def in_netns(pid: int, argv: list[str]) -> list[str]:
    """Run `argv` in the network namespace (only) of process `pid`.

    Only the network namespace is entered: the host's `ip` binary runs, so
    images need no iproute2, and root on the host does the configuration
    whatever the container's user is.
    """
    return [NSENTER, f"--net=/proc/{pid}/ns/net", "--", *argv]


def ns_link_up(pid: int, name: str) -> list[str]:
    return in_netns(pid, link_up(name))


def ns_addr_add(pid: int, name: str, address: str, prefixlen: int) -> list[str]:
    return in_netns(pid, addr_add(name, address, prefixlen))


def ns_addr_del(pid: int, name: str, address: str, prefixlen: int) -> list[str]:
    return in_netns(pid, addr_del(name, address, prefixlen))


def ns_route_add(
    pid: int, destination: str, dev: str, *, via: str | None = None, onlink: bool = False
) -> list[str]:
    return in_netns(pid, route_add(destination, dev, via=via, onlink=onlink))


def ns_default_route(pid: int, gateway: str, dev: str, *, onlink: bool = False) -> list[str]:
    return ns_route_add(pid, "default", dev, via=gateway, onlink=onlink)


def ns_loopback_up(pid: int) -> list[str]:
    return in_netns(pid, link_up("lo"))


# ---------------------------------------------------------------- sysctls (paths to write "1" to)


def _conf(family: str, name: str, key: str) -> Path:
    # A VLAN's dot stays a dot in /proc/sys paths (only the sysctl(8) dotted
    # notation would need it replaced by a slash).
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"invalid interface name {name!r}")
    return PROC_SYS / "net" / family / "conf" / name / key


def ipv4_forwarding_path(name: str) -> Path:
    """Per-interface IPv4 forwarding (`net.ipv4.conf.<if>.forwarding`).

    The kernel decides by the *incoming* interface: enable it on each network's
    bridge (and ipnet veth host ends) and on the interfaces replies and
    published-port traffic arrive on (the nat interface, the ports' interfaces).
    Never the global `net.ipv4.ip_forward`, which resets every interface.
    """
    return _conf("ipv4", name, "forwarding")


def route_localnet_path(name: str) -> Path:
    """`net.ipv4.conf.<if>.route_localnet`: lets a published port reached via
    127.0.0.1 be routed out of `<if>` (with nft's 127.0.0.0/8 masquerade). Set on
    every interface a container is reached through: bridges and veth host ends."""
    return _conf("ipv4", name, "route_localnet")


def ipv6_forwarding_path(name: str) -> Path:
    """`net.ipv6.conf.<if>.forwarding`: router behaviour on `<if>` (no RA/SLAAC)."""
    return _conf("ipv6", name, "forwarding")


def ipv6_force_forwarding_path(name: str) -> Path:
    """`net.ipv6.conf.<if>.force_forwarding` (Linux 6.17+): forward IPv6 arriving on
    `<if>` without `net.ipv6.conf.all.forwarding=1`, which older kernels need."""
    return _conf("ipv6", name, "force_forwarding")
