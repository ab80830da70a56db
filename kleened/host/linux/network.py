"""The Linux network driver: bridges, veth pairs into jail namespaces, one nft table.

Model (networking reference §10, with the choices made here):

* **Network interface**: a bridge the daemon creates, also for `loopback`
  networks (this kernel has no `dummy`; a bridge without members is a
  loopback-type interface). `custom` networks use an existing interface that
  is never touched. A bridge network's `<auto>` gateways are addresses on it.
* **vnet**: a veth pair `kv<endpoint id>a/b` per endpoint; `a` is a port of the
  bridge (isolated when icc is off), `b` moves into the jail's network
  namespace with the endpoint's address, the subnet's prefix length and a
  default route via the network's gateway (one per family, from the first
  network in name order that has one, reference §9.17).
* **ipnet**, and how it differs from FreeBSD: a FreeBSD ipnet jail shares the
  host's stack restricted to its addresses, which Linux cannot do. Here an
  ipnet container also gets a network namespace with one veth pair per
  endpoint, but the pair is *routed*, not bridged: the container holds its
  addresses as /32 and /128 on `b`, the host routes each address to `a`, and
  the container's default route points at fixed link-local addresses on `a`
  (169.254.0.1 and fe80::1, the same on every host end). The addresses are
  not put on the network's interface (no alias as on FreeBSD), so the
  container is reached through host routing and the firewall, as on FreeBSD,
  and a live connect or disconnect adds or removes a veth pair where FreeBSD
  runs `jail -m ip4.addr=…`.
* **host** shares the host's namespace; **disabled** has a namespace with only
  loopback (the jail driver does both); neither gets anything from here.
* **Firewall**: `nft.render_ruleset` applied as one transaction after
  `nft -c` accepted it; the table is removed when nothing needs it, so a host
  without kleened networks carries no kleened rules.
* **Forwarding** is enabled per interface (bridge and veth host ends), never
  globally. The uplink's own forwarding flag is the administrator's: it is
  needed for NAT and for published ports reached from outside the host, and
  the daemon does not reconfigure interfaces it does not own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from kleened.engine.ipam import auto_gateway, effective_gateway
from kleened.engine.netmodel import AUTO, EndpointSpec, FirewallState, NetworkSpec
from kleened.host import cmd
from kleened.host.linux import iproute, nft
from kleened.host.netdriver import Attached, FirewallError, NetworkHostError, StartPlan

log = logging.getLogger("kleened.network")

TIMEOUT = 15.0
# The container-side default gateway of every ipnet veth (on the host end).
IPNET_GW4 = "169.254.0.1"
IPNET_GW6 = "fe80::1"


def _prefixlen(subnet: str) -> int:
    return ipaddress.ip_network(subnet, strict=False).prefixlen


def _nodad(argv: list[str], address: str) -> list[str]:
    """IPv6 addresses without duplicate address detection: usable at once
    (a bridge without ports would otherwise keep its gateway tentative)."""
    return [*argv, "nodad"] if ":" in address else argv


class LinuxNetwork:
    def __init__(
        self,
        state_dir: Path,
        jail_pid: Callable[[str], int | None],
        *,
        runner: Callable[..., Awaitable[cmd.CommandResult]] = cmd.run,
        proc_sys: Path = iproute.PROC_SYS,
    ) -> None:
        self.state_dir = state_dir
        self.jail_pid = jail_pid
        self.runner = runner
        self.proc_sys = proc_sys

    # ------------------------------------------------------------ plumbing

    async def _run(self, argv: Sequence[str]) -> cmd.CommandResult:
        try:
            return await self.runner(list(argv), timeout=TIMEOUT)
        except cmd.CommandError as err:
            raise NetworkHostError(str(err)) from err

    async def _must(self, argv: Sequence[str]) -> str:
        result = await self._run(argv)
        if not result.ok:
            raise NetworkHostError(f"{' '.join(argv)}: {cmd.failure_message(result)}")
        return result.out

    def _proc(self, path: Path) -> Path:
        # iproute builds paths under /proc/sys; tests may point proc_sys elsewhere.
        return self.proc_sys / path.relative_to(iproute.PROC_SYS)

    def _sysctl(self, path: Path, value: str = "1") -> None:
        path = self._proc(path)
        try:
            path.write_text(value)
        except FileNotFoundError:
            pass  # e.g. force_forwarding before Linux 6.17, or IPv6 disabled
        except OSError as err:
            raise NetworkHostError(f"could not set {path}: {err}") from err

    def _routing_sysctls(self, name: str) -> None:
        """What an interface containers are reached through needs."""
        self._sysctl(iproute.ipv4_forwarding_path(name))
        self._sysctl(iproute.route_localnet_path(name))
        self._sysctl(iproute.ipv6_forwarding_path(name))
        self._sysctl(iproute.ipv6_force_forwarding_path(name))

    # ------------------------------------------------------------ queries

    async def startup(self) -> list[str]:
        """Forwarding is enabled per interface as they are created; nothing global.
        The uplink is the administrator's: we only say when it cannot forward."""
        uplink = await self.host_gateway()
        if uplink is None:
            return []
        try:
            enabled = self._proc(iproute.ipv4_forwarding_path(uplink)).read_text().strip() == "1"
        except OSError:
            return []
        if enabled:
            return []
        return [
            f"IPv4 forwarding is off on the uplink {uplink}: containers' NAT traffic and "
            f"published ports reached from other hosts will not work. Enable it with "
            f"'sysctl -w net.ipv4.conf.{uplink}.forwarding=1'."
        ]

    async def host_gateway(self) -> str | None:
        result = await self._run(iproute.default_route())
        if not result.ok:
            return None
        try:
            return iproute.parse_default_interface(result.out)
        except ValueError:
            return None

    async def interface_exists(self, name: str) -> bool:
        return (await self._run(iproute.link_show(name))).ok

    async def interface_names(self) -> set[str]:
        result = await self._run([iproute.IP, "-j", "link", "show"])
        if not result.ok:
            return set()
        return {str(link.get("ifname")) for link in json.loads(result.out or "[]")}

    async def interface_addresses(self, name: str) -> list[str]:
        result = await self._run(iproute.addr_show(name))
        if not result.ok:
            return []
        return iproute.parse_addresses(result.out)

    # ------------------------------------------------------------ network interfaces

    def _gateway_addresses(self, network: NetworkSpec) -> list[tuple[str, int]]:
        """`<auto>` gateways go on bridges only (reference §1.4)."""
        if network.type != "bridge":
            return []
        found = []
        for subnet, gateway in (
            (network.subnet, network.gateway),
            (network.subnet6, network.gateway6),
        ):
            if gateway == AUTO and subnet and auto_gateway(subnet):
                found.append((auto_gateway(subnet), _prefixlen(subnet)))
        return found

    async def _configure_bridge(self, network: NetworkSpec) -> None:
        name = network.interface
        present = {ipaddress.ip_address(a) for a in await self.interface_addresses(name)}
        for address, prefixlen in self._gateway_addresses(network):
            if ipaddress.ip_address(address) not in present:
                await self._must(_nodad(iproute.addr_add(name, address, prefixlen), address))
        self._routing_sysctls(name)
        await self._must(iproute.link_up(name))

    async def create_interface(self, network: NetworkSpec) -> None:
        if network.type == "custom":
            return
        await self._must(iproute.bridge_create(network.interface))
        try:
            await self._configure_bridge(network)
        except NetworkHostError:
            await self._run(iproute.link_delete(network.interface))
            raise

    async def restore_interface(self, network: NetworkSpec) -> None:
        if network.type == "custom":
            return
        if not await self.interface_exists(network.interface):
            await self.create_interface(network)
        else:
            # Ours and still there (the daemon restarted): complete it, never
            # recreate it, so running containers keep their connectivity.
            await self._configure_bridge(network)

    async def destroy_interface(self, network: NetworkSpec) -> None:
        if network.type == "custom":
            return
        if await self.interface_exists(network.interface):
            await self._must(iproute.link_delete(network.interface))

    # ------------------------------------------------------------ containers

    async def _attach(
        self, pid: int, driver: str, network: NetworkSpec, endpoint: EndpointSpec
    ) -> None:
        """One veth pair from the host into the jail's namespace, configured."""
        host, peer = iproute.veth_names(endpoint.id)
        if await self.interface_exists(host):
            await self._run(iproute.link_delete(host))  # left over from a crash: ours by name
        await self._must(iproute.veth_create(host, peer))
        try:
            await self._must(iproute.move_to_netns(peer, pid))
            if driver == "vnet":
                await self._must(iproute.bridge_attach(host, network.interface))
                if not network.icc:
                    await self._must(iproute.port_isolated(host))
                await self._must(iproute.link_up(host))
                await self._must(iproute.ns_link_up(pid, peer))
                for subnet, address in (
                    (network.subnet, endpoint.ip_address),
                    (network.subnet6, endpoint.ip_address6),
                ):
                    if subnet and address:
                        await self._must(
                            _nodad(
                                iproute.ns_addr_add(pid, peer, address, _prefixlen(subnet)), address
                            )
                        )
            else:
                await self._must(_nodad(iproute.addr_add(host, IPNET_GW6, 64), IPNET_GW6))
                await self._must(iproute.addr_add(host, IPNET_GW4, 32))
                self._routing_sysctls(host)
                await self._must(iproute.link_up(host))
                await self._must(iproute.ns_link_up(pid, peer))
                for address, prefixlen in ((endpoint.ip_address, 32), (endpoint.ip_address6, 128)):
                    if address:
                        await self._must(
                            _nodad(iproute.ns_addr_add(pid, peer, address, prefixlen), address)
                        )
                        await self._must(iproute.route_add(f"{address}/{prefixlen}", host))
                # The network's own subnet through this veth, from this
                # address: what a FreeBSD jail gets by source selection on the
                # network's interface (peers see the address of their network).
                for subnet, address, gw in (
                    (network.subnet, endpoint.ip_address, IPNET_GW4),
                    (network.subnet6, endpoint.ip_address6, IPNET_GW6),
                ):
                    if subnet and address:
                        flag = "-4" if gw == IPNET_GW4 else "-6"
                        route = [iproute.IP, flag, "route", "replace", subnet, "via", gw]
                        route += ["dev", peer, "src", address]
                        if gw == IPNET_GW4:
                            route.append("onlink")
                        await self._must(iproute.in_netns(pid, route))
        except NetworkHostError:
            await self._run(iproute.link_delete(host))
            raise

    async def _default_routes(self, pid: int, driver: str, attached: Attached) -> None:
        """At most one default route per family (reference §9.17), from the
        first network in name order that can give one; replaced, so it is
        also right after a live connect or disconnect."""
        for family in (4, 6):
            target: tuple[str, str] | None = None
            for network, endpoint in attached:
                address = endpoint.ip_address if family == 4 else endpoint.ip_address6
                if not address:
                    continue
                peer = iproute.veth_names(endpoint.id)[1]
                if driver == "ipnet":
                    target = (IPNET_GW4 if family == 4 else IPNET_GW6, peer)
                else:
                    subnet = network.subnet if family == 4 else network.subnet6
                    gateway = network.gateway if family == 4 else network.gateway6
                    gw = effective_gateway(subnet, gateway)
                    if not gw:
                        continue
                    target = (gw, peer)
                break
            if target is None:
                continue
            gw, peer = target
            argv = [iproute.IP, f"-{family}", "route", "replace", "default", "via", gw, "dev", peer]
            if driver == "ipnet" and family == 4:
                argv.append("onlink")  # 169.254.0.1 is on no prefix of the container's
            await self._must(iproute.in_netns(pid, argv))

    async def prepare_start(self, container_id: str, driver: str, attached: Attached) -> StartPlan:
        if driver not in ("ipnet", "vnet") or not attached:
            return StartPlan()
        attached = list(attached)

        async def before_command(pid: int) -> None:
            for network, endpoint in attached:
                await self._attach(pid, driver, network, endpoint)
            await self._default_routes(pid, driver, attached)

        epairs = {}
        if driver == "vnet":
            epairs = {ep.id: f"{iproute.VETH_PREFIX}{ep.id}" for _net, ep in attached}
        return StartPlan(before_command=before_command, epairs=epairs)

    async def container_stopped(self, container_id: str, driver: str, attached: Attached) -> None:
        # The jail's namespace took its veth ends with it; the host ends (and
        # the host routes through them) may remain after a failed start.
        for _network, endpoint in attached:
            host, _peer = iproute.veth_names(endpoint.id)
            if await self.interface_exists(host):
                await self._run(iproute.link_delete(host))

    def _pid(self, container_id: str) -> int:
        pid = self.jail_pid(container_id)
        if pid is None:
            raise NetworkHostError(f"container {container_id} is not running")
        return pid

    async def connect_running(
        self,
        container_id: str,
        driver: str,
        network: NetworkSpec,
        endpoint: EndpointSpec,
        attached: Attached = (),
    ) -> str | None:
        pid = self._pid(container_id)
        await self._attach(pid, driver, network, endpoint)
        try:
            await self._default_routes(pid, driver, attached or [(network, endpoint)])
        except NetworkHostError:
            await self._run(iproute.link_delete(iproute.veth_names(endpoint.id)[0]))
            raise
        return f"{iproute.VETH_PREFIX}{endpoint.id}" if driver == "vnet" else None

    async def disconnect_running(
        self,
        container_id: str,
        driver: str,
        network: NetworkSpec,
        endpoint: EndpointSpec,
        attached: Attached = (),
    ) -> None:
        host, _peer = iproute.veth_names(endpoint.id)
        if await self.interface_exists(host):
            await self._must(iproute.link_delete(host))
        pid = self.jail_pid(container_id)
        if pid is not None and attached:
            with contextlib.suppress(NetworkHostError):
                await self._default_routes(pid, driver, attached)

    # ------------------------------------------------------------ firewall

    def _script_path(self, suffix: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / f"kleened.nft{suffix}"

    async def apply_firewall(self, state: FirewallState) -> None:
        if not state.networks and not any(c.public_ports for c in state.containers):
            # Nothing to enforce: remove the table, but only if this daemon
            # installed it (its copy of the live script says so); another
            # daemon's table on a shared test host is not ours to delete.
            if self._script_path("").exists():
                await self.remove_firewall()
            return
        try:
            text = nft.render_ruleset(state)
        except ValueError as err:
            raise FirewallError(f"could not render the firewall rules: {err}") from err
        staging = self._script_path(".new")
        staging.write_text(text)
        checked = await self._run(nft.nft_check_argv(str(staging)))
        if not checked.ok:
            raise FirewallError(f"nft refused the ruleset: {cmd.failure_message(checked)}")
        applied = await self._run(nft.nft_apply_argv(str(staging)))
        if not applied.ok:
            raise FirewallError(f"nft could not load the ruleset: {cmd.failure_message(applied)}")
        os.replace(staging, self._script_path(""))  # the live ruleset, for inspection

    async def remove_firewall(self) -> None:
        path = self._script_path(".teardown")
        path.write_text(nft.teardown_script())
        result = await self._run(nft.nft_apply_argv(str(path)))
        path.unlink(missing_ok=True)
        self._script_path("").unlink(missing_ok=True)
        if not result.ok:
            raise FirewallError(f"could not remove the nft table: {cmd.failure_message(result)}")
