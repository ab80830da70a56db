"""The FreeBSD network driver: ifconfig, epair(4), jail(8) network parameters, pf.

Every command goes through an injectable `Runner` (host/freebsd/runner.py), so
the tests check the exact argument vectors on hosts without FreeBSD. The
vectors and parameters come from `ifconfig.py` and `pf.py`; what this module
adds is the order, the error handling, and the fixes of reference §9:

* interfaces are created only for networks the daemon owns, never destroyed
  first (§9.13), and a failed set-up removes what it created (§9.19);
* a failed epair creation fails the start instead of being relayed (§9.19);
* live ipnet connect and disconnect update `ip6.addr` too (§9.12);
* pf: check the candidate with `pfctl -n -f` before it replaces the live file,
  and report failures instead of only logging them (§9.2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from dataclasses import replace
from pathlib import Path

from kleened.engine.netmodel import EndpointSpec, FirewallState, NetworkSpec
from kleened.host.freebsd import ifconfig, pf
from kleened.host.freebsd import runner as runner_module
from kleened.host.freebsd.runner import CommandError, Runner
from kleened.host.netdriver import Attached, FirewallError, NetworkHostError, StartPlan

log = logging.getLogger("kleened.network")

TIMEOUT = 30.0


class FreeBSDNetwork:
    def __init__(
        self, pf_template_path: Path, pf_config_path: Path, *, run: Runner | None = None
    ) -> None:
        self.pf_template_path = Path(pf_template_path)
        self.pf_config_path = Path(pf_config_path)
        self._runner: Runner = run if run is not None else runner_module.run

    # ------------------------------------------------------------ plumbing

    async def _run(self, argv: list[str]) -> tuple[int, str]:
        try:
            return await self._runner(argv, timeout=TIMEOUT)
        except CommandError as err:
            raise NetworkHostError(str(err)) from err

    async def _must(self, argv: list[str]) -> str:
        code, output = await self._run(argv)
        if code != 0:
            raise NetworkHostError(f"{' '.join(argv)}: {output.strip() or f'exit code {code}'}")
        return output

    # ------------------------------------------------------------ start-up and queries

    async def startup(self) -> list[str]:
        """IPv4 and IPv6 forwarding on, pf enabled (reference §1.5, §7, §9.21)."""
        warnings = []
        code, out = await self._run(ifconfig.ip_forwarding_query())
        if code == 0 and out.strip().endswith(": 0"):
            code, out = await self._run(ifconfig.ip_forwarding_enable())
            if code != 0:
                warnings.append(f"could not enable IPv4 forwarding: {out.strip()}")
        code, out = await self._run(ifconfig.ip6_forwarding_enable())
        if code != 0:
            warnings.append(f"could not enable IPv6 forwarding: {out.strip()}")
        await self._run(pf.pfctl_enable_argv())  # fails harmlessly when already enabled
        return warnings

    async def host_gateway(self) -> str | None:
        code, out = await self._run(ifconfig.routing_table())
        if code != 0:
            return None
        try:
            return ifconfig.parse_default_interface(out)
        except ValueError:
            return None

    async def interface_exists(self, name: str) -> bool:
        code, out = await self._run(ifconfig.interface_addresses(name))
        if code != 0:
            return False
        try:
            return ifconfig.interface_exists(out)
        except ValueError:
            return False

    async def interface_names(self) -> set[str]:
        code, out = await self._run([ifconfig.IFCONFIG, "-l"])
        return set(out.split()) if code == 0 else set()

    async def interface_addresses(self, name: str) -> list[str]:
        code, out = await self._run(ifconfig.interface_addresses(name))
        if code != 0:
            return []
        try:
            return ifconfig.parse_interface_addresses(out)
        except ValueError:
            return []

    # ------------------------------------------------------------ network interfaces

    async def _add_gateways(self, network: NetworkSpec) -> None:
        present = {
            ipaddress.ip_address(a) for a in await self.interface_addresses(network.interface)
        }
        for argv in ifconfig.bridge_gateway_aliases(network):
            address = argv[3].split("/", 1)[0]
            if ipaddress.ip_address(address) not in present:
                await self._must(argv)

    async def create_interface(self, network: NetworkSpec) -> None:
        if network.type == "custom":
            return
        if network.type == "loopback":
            await self._must(ifconfig.create_loopback(network.interface))
        else:
            await self._must(ifconfig.create_bridge(network.interface))
        try:
            await self._add_gateways(network)
            await self._must(ifconfig.up(network.interface))
        except NetworkHostError:
            await self._run(ifconfig.destroy(network.interface))
            raise

    async def restore_interface(self, network: NetworkSpec) -> None:
        if network.type == "custom":
            return
        if not await self.interface_exists(network.interface):
            await self.create_interface(network)
            return
        # Still there (the daemon restarted): complete it, keep its members and
        # the aliases of running containers (the original recreated it, §9.13).
        await self._add_gateways(network)
        await self._must(ifconfig.up(network.interface))

    async def destroy_interface(self, network: NetworkSpec) -> None:
        if network.type == "custom" or not await self.interface_exists(network.interface):
            return
        if network.type == "bridge":
            shown = await self._must(ifconfig.show(network.interface))
            for member in ifconfig.parse_bridge_members(shown):
                await self._run(ifconfig.bridge_deletem(network.interface, member))
        await self._must(ifconfig.destroy(network.interface))

    # ------------------------------------------------------------ containers

    async def prepare_start(self, container_id: str, driver: str, attached: Attached) -> StartPlan:
        attached = list(attached)
        epairs: dict[str, str] = {}
        if driver == "vnet":
            try:
                for _network, endpoint in attached:
                    out = await self._must(ifconfig.create_epair())
                    epairs[endpoint.id] = ifconfig.parse_epair(out)
            except (NetworkHostError, ValueError) as err:
                await self._destroy_epairs(epairs.values())
                raise NetworkHostError(f"could not create new epair: {err}") from err
            attached = [(n, replace(ep, epair=epairs[ep.id])) for n, ep in attached]
        try:
            params = ifconfig.jail_network_params(driver, container_id, attached)
        except ValueError as err:
            await self._destroy_epairs(epairs.values())
            raise NetworkHostError(str(err)) from err
        return StartPlan(jail_params=params, epairs=epairs)

    async def _destroy_epairs(self, epairs) -> None:  # type: ignore[no-untyped-def]
        for epair in epairs:
            await self._run(ifconfig.destroy(ifconfig.epair_host_end(epair)))

    async def _release_epair(self, network: NetworkSpec, epair: str) -> None:
        host_end = ifconfig.epair_host_end(epair)
        await self._run(ifconfig.bridge_deletem(network.interface, host_end))
        await self._run(ifconfig.destroy(host_end))

    async def _remove_aliases(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        present = await self.interface_addresses(network.interface)
        for argv in ifconfig.endpoint_alias_removals(network, endpoint, present):
            await self._run(argv)

    async def container_stopped(self, container_id: str, driver: str, attached: Attached) -> None:
        for network, endpoint in attached:
            if driver == "vnet" and endpoint.epair:
                await self._release_epair(network, endpoint.epair)
            elif driver == "ipnet":
                await self._remove_aliases(network, endpoint)

    async def _jail_addresses(self, container_id: str) -> tuple[list[str], list[str]]:
        out = await self._must(ifconfig.jail_addresses(container_id))
        try:
            return ifconfig.parse_jail_addresses(out)
        except ValueError as err:
            raise NetworkHostError(f"unexpected output of jls: {err}") from err

    async def connect_running(
        self,
        container_id: str,
        driver: str,
        network: NetworkSpec,
        endpoint: EndpointSpec,
        attached: Attached = (),
    ) -> str | None:
        if driver != "ipnet":
            raise NetworkHostError("cannot connect a running vnet container to a network")
        for argv in ifconfig.endpoint_aliases(network, endpoint):
            await self._must(argv)
        try:
            ip4, ip6 = await self._jail_addresses(container_id)
            # New address first, as the original; IPv6 through ip6.addr (§9.12).
            new4 = [endpoint.ip_address, *ip4] if endpoint.ip_address else None
            new6 = [endpoint.ip_address6, *ip6] if endpoint.ip_address6 else None
            if new4 is not None or new6 is not None:
                await self._must(ifconfig.jail_set_addresses(container_id, new4, new6))
        except NetworkHostError:
            await self._remove_aliases(network, endpoint)
            raise
        return None

    async def disconnect_running(
        self,
        container_id: str,
        driver: str,
        network: NetworkSpec,
        endpoint: EndpointSpec,
        attached: Attached = (),
    ) -> None:
        if driver == "vnet":
            if endpoint.epair:
                await self._must(ifconfig.reclaim_from_jail(endpoint.epair, container_id))
                await self._release_epair(network, endpoint.epair)
            return
        await self._remove_aliases(network, endpoint)
        ip4, ip6 = await self._jail_addresses(container_id)
        gone = {ipaddress.ip_address(a) for a in (endpoint.ip_address, endpoint.ip_address6) if a}

        def keep(addresses: list[str]) -> list[str]:
            return [a for a in addresses if ipaddress.ip_address(a) not in gone]

        new4 = keep(ip4) if endpoint.ip_address else None
        new6 = keep(ip6) if endpoint.ip_address6 else None
        if new4 is not None or new6 is not None:
            await self._must(ifconfig.jail_set_addresses(container_id, new4, new6))

    # ------------------------------------------------------------ pf

    async def apply_firewall(self, state: FirewallState) -> None:
        try:
            template = self.pf_template_path.read_text()
        except OSError as err:
            raise FirewallError(f"could not read the pf template: {err}") from err
        try:
            text = pf.render_pf_conf(template, state)
        except ValueError as err:
            raise FirewallError(f"could not render the pf ruleset: {err}") from err
        staging = pf.staging_path(self.pf_config_path)
        try:
            staging.write_text(text)
        except OSError as err:
            raise FirewallError(f"could not write {staging}: {err}") from err
        code, out = await self._run(pf.pfctl_check_argv(staging))
        if code != 0:
            with contextlib.suppress(OSError):
                staging.unlink()
            # The live file and ruleset are untouched (reference §9.2).
            raise FirewallError(f"pfctl refused the ruleset: {out.strip()}")
        os.replace(staging, self.pf_config_path)
        code, out = await self._run(pf.pfctl_load_argv(self.pf_config_path))
        if code != 0:
            raise FirewallError(f"Failed to load PF configuration file: {out.strip()}")

    async def remove_firewall(self) -> None:
        """pf.conf is the host's whole ruleset: keep the template's own rules."""
        await self.apply_firewall(FirewallState())
