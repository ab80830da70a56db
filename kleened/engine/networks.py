"""Networks, endpoints and the firewall (networking reference §1-§6).

The engine decides, the platform's `NetworkDriver` (host/netdriver.py) acts.
Every network operation and every firewall regeneration runs under one lock,
as the original's single network process did, and the firewall is
regenerated on every state change (create, connect, disconnect, remove,
container start, stop and removal; reference §9.4, §9.6), from a snapshot of
the store: published ports count only while their container runs.

Messages marked [exact] are the original's; klee prints them. Fixes of the
original's defects (reference §9) are noted where they are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from kleened.engine import ipam, resolve
from kleened.engine.errors import Conflict, HostFailure, NotFound
from kleened.engine.ids import new_id
from kleened.engine.netmodel import (
    HOST_GATEWAY,
    ContainerSpec,
    EndpointSpec,
    FirewallState,
    NetworkSpec,
    PublishedPortSpec,
    attachments,
    port_addresses,
    published_port_clash,
)
from kleened.engine.runtime import Runtime
from kleened.host.base import HostError
from kleened.host.netdriver import NetworkDriver, StartPlan
from kleened.store.models import Container, Endpoint, Network, PublishedPort

log = logging.getLogger("kleened.network")

NETWORK_TYPES = ("loopback", "bridge", "custom")


@dataclass
class NetworkConfig:
    """`NetworkConfig` with the API defaults (reference §1.2)."""

    name: str
    type: str
    interface: str = ""
    subnet: str = ""
    subnet6: str = ""
    gateway: str = ""
    gateway6: str = ""
    nat: str = HOST_GATEWAY
    icc: bool = True
    internal: bool = False


def _conflict(err: ipam.IpamError) -> Conflict:
    return Conflict(err.message)


def endpoint_spec(ep: Endpoint) -> EndpointSpec:
    return EndpointSpec(
        id=ep.id,
        container_id=ep.container_id,
        ip_address=ep.ip_address,
        ip_address6=ep.ip_address6,
        epair=ep.epair,
    )


def network_spec(net: Network, endpoints: list[Endpoint] | tuple = ()) -> NetworkSpec:
    return NetworkSpec(
        id=net.id,
        name=net.name,
        type=net.type,  # type: ignore[arg-type]
        interface=net.interface,
        subnet=net.subnet,
        subnet6=net.subnet6,
        gateway=net.gateway,
        gateway6=net.gateway6,
        nat=net.nat,
        icc=net.icc,
        internal=net.internal,
        endpoints=tuple(endpoint_spec(ep) for ep in endpoints),
    )


# Endpoints in storage (insertion) order, as the original lists them.
STORAGE_ORDER = literal_column("endpoints.rowid")


def _ports_by_container(ports: list[PublishedPort]) -> dict[str, list[PublishedPortSpec]]:
    grouped: dict[str, list[PublishedPortSpec]] = {}
    for port in ports:
        grouped.setdefault(port.container_id, []).append(
            PublishedPortSpec(
                interfaces=tuple(port.interfaces),
                host_port=port.host_port,
                container_port=port.container_port,
                protocol=port.protocol,  # type: ignore[arg-type]
            )
        )
    return grouped


async def _container_and_network(
    session: AsyncSession, container_ident: str, network_ident: str
) -> tuple[Container, Network]:
    container = await resolve.find_container(session, container_ident)
    if container is None:
        raise NotFound("container not found")  # [exact]
    net = await resolve.find_network(session, network_ident)
    if net is None:
        raise NotFound("network not found")  # [exact]
    return container, net


class NetworkService:
    """`rt.network`: the network API's engine and the container hooks."""

    def __init__(self, rt: Runtime, driver: NetworkDriver) -> None:
        self.rt = rt
        self.driver = driver
        self.lock = asyncio.Lock()
        self.running: set[str] = set()
        self.host_gateway: str | None = None
        self.firewall_error: str = ""
        self._applied: FirewallState | None = None  # the ruleset in force, as a state

    # ------------------------------------------------------------ snapshots

    async def _specs(self) -> list[NetworkSpec]:
        async with self.rt.sessions() as session:
            networks = list(await session.scalars(select(Network).order_by(Network.name)))
            endpoints = list(await session.scalars(select(Endpoint).order_by(STORAGE_ORDER)))
        by_net: dict[str, list[Endpoint]] = {}
        for ep in endpoints:
            by_net.setdefault(ep.network_id, []).append(ep)
        return [network_spec(n, by_net.get(n.id, [])) for n in networks]

    async def _state(self, specs: list[NetworkSpec]) -> FirewallState:
        async with self.rt.sessions() as session, session.begin():
            ports = list(await session.scalars(select(PublishedPort).order_by(PublishedPort.id)))
            # Resolved addresses are kept with the ports, not the containers
            # (reference §9.6), and cleared when they no longer resolve (§9.4).
            for port in ports:
                ip4, ip6 = port_addresses(port.container_id, specs)
                if (port.ip_address, port.ip_address6) != (ip4, ip6):
                    port.ip_address, port.ip_address6 = ip4, ip6
            by_container = _ports_by_container(ports)
            # Only running containers with ports are in the rules: load just
            # those (this runs on every container start and stop).
            publishing = sorted(self.running & by_container.keys())
            rows = (
                await session.execute(
                    select(Container.id, Container.created)
                    .where(Container.id.in_(publishing))
                    .order_by(Container.created)
                )
            ).all()
        running = [
            ContainerSpec(id=cid, created=created, public_ports=tuple(by_container[cid]))
            for cid, created in rows
        ]
        return FirewallState(tuple(specs), tuple(running), self.host_gateway)

    async def _regenerate(self) -> None:
        """Caller holds the lock. Raises HostFailure when the ruleset is refused
        (the live one stays in force, reference §9.2)."""
        state = await self._state(await self._specs())
        if state == self._applied:
            return  # e.g. a container without ports started: the rules are the same
        try:
            await self.driver.apply_firewall(state)
        except HostError as err:
            self.firewall_error = str(err)
            self._applied = None
            log.error("firewall not updated: %s", err)
            raise HostFailure(f"could not update the firewall: {err}") from err
        self.firewall_error = ""
        self._applied = state

    async def _regenerate_quietly(self) -> None:
        # Logged by _regenerate; the next change tries again.
        with contextlib.suppress(HostFailure):
            await self._regenerate()

    # ------------------------------------------------------------ start-up

    async def startup(self) -> None:
        """Reference §1.5, made non-destructive (§9.13): owned interfaces are
        completed or recreated, nothing else is touched, and running
        containers keep their connectivity."""
        try:
            for warning in await self.driver.startup():
                log.warning("%s", warning)
        except HostError as err:
            log.warning("network start-up: %s", err)
        self.host_gateway = await self.driver.host_gateway()
        if self.host_gateway is None:
            log.warning("Unable to detect host gateway interface. Connectivity might not work.")
        self.rt.services["host_gateway"] = self.host_gateway or ""
        if self.rt.jails is not None:
            self.running = set(await self.rt.jails.list_running())
        async with self.lock:
            for spec in await self._specs():
                if not await self._owns(spec.id):
                    if not await self.driver.interface_exists(spec.interface):
                        log.warning(
                            "interface %s of network %s is missing", spec.interface, spec.name
                        )
                    continue
                try:
                    await self.driver.restore_interface(spec)
                except HostError as err:
                    log.error("could not restore network %s: %s", spec.name, err)
            await self._regenerate_quietly()

    async def _owns(self, network_id: str) -> bool:
        async with self.rt.sessions() as session:
            net = await session.get(Network, network_id)
        return bool(net and net.owns_interface)

    # ------------------------------------------------------------ API: networks

    async def list_all(self) -> list[Network]:
        async with self.rt.sessions() as session:
            return list(await session.scalars(select(Network).order_by(Network.name)))

    async def inspect(self, ident: str) -> tuple[Network, list[Endpoint]]:
        async with self.rt.sessions() as session:
            net = await resolve.find_network(session, ident)
            if net is None:
                raise NotFound("network not found")  # [exact]
            endpoints = list(
                await session.scalars(
                    select(Endpoint).where(Endpoint.network_id == net.id).order_by(STORAGE_ORDER)
                )
            )
        return net, endpoints

    async def create(self, cfg: NetworkConfig) -> str:
        """Validate (first failure wins, all 409), create the interface, store."""
        if cfg.type not in NETWORK_TYPES:
            raise Conflict(f"invalid network type '{cfg.type}'")
        try:
            ipam.validate_addressing(cfg.subnet, cfg.subnet6, cfg.gateway, cfg.gateway6)
        except ipam.IpamError as err:
            raise _conflict(err) from None
        if not cfg.name or not cfg.name.isprintable():
            raise Conflict("invalid network name: it must be non-empty and printable")
        async with self.lock:
            async with self.rt.sessions() as session:
                stored = list(await session.scalars(select(Network)))
            # Exact name only: the original also matched id prefixes (§9.15).
            if any(n.name == cfg.name for n in stored):
                raise Conflict("network name is already taken")  # [exact]
            interface = await self._choose_interface(cfg, stored)
            if cfg.nat not in ("", HOST_GATEWAY):
                try:
                    ipam.validate_interface_name(cfg.nat)
                except ipam.IpamError as err:
                    raise Conflict(f"invalid nat interface: {err.message}") from None
            owns = cfg.type != "custom"
            net = Network(
                id=new_id(),
                name=cfg.name,
                type=cfg.type,
                interface=interface,
                subnet=cfg.subnet,
                subnet6=cfg.subnet6,
                gateway=cfg.gateway,
                gateway6=cfg.gateway6,
                # `<host-gateway>` is kept and resolved at every regeneration,
                # so a changed default route is followed (§9.20).
                nat=cfg.nat,
                icc=cfg.icc,
                internal=cfg.internal,
                owns_interface=owns,
            )
            spec = network_spec(net)
            if owns:
                try:
                    await self.driver.create_interface(spec)
                except HostError as err:
                    raise HostFailure(f"could not create interface {interface}: {err}") from err
            try:
                async with self.rt.sessions() as session, session.begin():
                    session.add(net)
                await self._regenerate()
            except BaseException:
                await self._undo_create(net.id, spec, owns)
                raise
            return net.id

    async def _undo_create(self, network_id: str, spec: NetworkSpec, owns: bool) -> None:
        async with self.rt.sessions() as session, session.begin():
            await session.execute(delete(Network).where(Network.id == network_id))
        if owns:
            try:
                await self.driver.destroy_interface(spec)
            except HostError as err:
                log.error("could not remove interface %s: %s", spec.interface, err)
        await self._regenerate_quietly()

    async def _choose_interface(self, cfg: NetworkConfig, stored: list[Network]) -> str:
        """The interface name, refusing any the daemon must not take (§9.13, §9.14)."""
        host = await self.driver.interface_names()
        interface = cfg.interface
        if interface == "":
            if cfg.type == "custom":
                raise Conflict("a custom network needs the name of an existing interface")
            return ipam.next_interface_name({n.interface for n in stored} | host)
        try:
            ipam.validate_interface_name(interface)
        except ipam.IpamError as err:
            raise Conflict(err.message) from None
        for other in stored:
            if other.interface == interface:
                raise Conflict(f"interface '{interface}' is already used by network '{other.name}'")
        exists = interface in host or await self.driver.interface_exists(interface)
        if cfg.type == "custom" and not exists:
            raise Conflict(f"interface '{interface}' does not exist")
        if cfg.type != "custom" and exists:
            raise Conflict(
                f"interface '{interface}' already exists and was not created by kleened: "
                "use another name, or a custom network to use it as it is"
            )
        return interface

    async def remove(self, ident: str) -> str:
        async with self.lock:
            async with self.rt.sessions() as session:
                net = await resolve.find_network(session, ident)
                if net is None:
                    raise NotFound("network not found.")  # [exact] (with the full stop)
            await self._remove(net)
            await self._regenerate_quietly()
            return net.id

    async def _remove(self, net: Network) -> None:
        """Disconnect everything, drop the record, remove the owned interface."""
        specs = {s.id: s for s in await self._specs()}
        spec = specs[net.id]
        for ep in spec.endpoints:
            await self._disconnect_endpoint(ep.container_id, spec, ep, list(specs.values()))
        async with self.rt.sessions() as session, session.begin():
            await session.execute(delete(Endpoint).where(Endpoint.network_id == net.id))
            await session.execute(delete(Network).where(Network.id == net.id))
        if net.owns_interface:
            try:
                await self.driver.destroy_interface(spec)
            except HostError as err:
                log.error("could not remove interface %s: %s", spec.interface, err)

    async def prune(self) -> list[str]:
        """Every network without endpoints, whatever its containers' state (§1.6)."""
        removed = []
        async with self.lock:
            for spec in await self._specs():
                if spec.endpoints:
                    continue
                async with self.rt.sessions() as session:
                    net = await session.get(Network, spec.id)
                if net is not None:
                    await self._remove(net)
                    removed.append(net.id)
            if removed:
                await self._regenerate_quietly()
        return removed

    # ------------------------------------------------------------ API: endpoints

    async def _is_running(self, container_id: str) -> bool:
        return self.rt.jails is not None and await self.rt.jails.is_running(container_id)

    async def connect(
        self, container_ident: str, network_ident: str, ip_address: str, ip_address6: str
    ) -> None:
        """Reference §2.1's processing order and matrix, §4 for running containers."""
        async with self.lock:
            async with self.rt.sessions() as session:
                container, net = await _container_and_network(
                    session, container_ident, network_ident
                )
                if await session.scalar(
                    select(Endpoint.id).where(
                        Endpoint.container_id == container.id, Endpoint.network_id == net.id
                    )
                ):
                    raise Conflict("container already connected to the network")  # [exact]
            driver = container.network_driver
            if driver in ("disabled", "host"):
                raise Conflict(  # [exact]
                    f"containers with the '{driver}' network-driver cannot connect to networks."
                )
            if driver == "vnet" and net.type != "bridge":
                raise Conflict(  # [exact]
                    "containers using the 'vnet' network-driver "
                    f"can't connect to {net.type} networks"
                )
            if driver not in ("ipnet", "vnet"):
                raise Conflict("unknown error")  # [exact]
            running = await self._is_running(container.id)
            if driver == "vnet" and running:
                raise Conflict("cannot connect a running vnet container to a network")  # [exact]
            specs = await self._specs()
            spec = next(s for s in specs if s.id == net.id)
            present = await self.driver.interface_addresses(net.interface)
            try:
                ip4, ip6 = ipam.assign_endpoint(spec, ip_address, ip_address6, present)
            except ipam.IpamError as err:
                raise _conflict(err) from None
            endpoint = Endpoint(
                id=new_id(),
                network_id=net.id,
                container_id=container.id,
                epair=None,
                ip_address=ip4,
                ip_address6=ip6,
            )
            if running:
                ep_spec = endpoint_spec(endpoint)
                after = [s if s.id != net.id else _with_endpoint(s, ep_spec) for s in specs]
                try:
                    await self.driver.connect_running(
                        container.id, driver, spec, ep_spec, attachments(container.id, after)
                    )
                except HostError as err:
                    raise HostFailure(f"could not connect the running container: {err}") from err
            async with self.rt.sessions() as session, session.begin():
                session.add(endpoint)
            await self._regenerate()

    async def disconnect(self, network_ident: str, container_ident: str) -> None:
        """Reference §4; every failure is reported as not-found (klee crashes on 409)."""
        async with self.lock:
            async with self.rt.sessions() as session:
                container, net = await _container_and_network(
                    session, container_ident, network_ident
                )
                ep = await session.scalar(
                    select(Endpoint).where(
                        Endpoint.container_id == container.id, Endpoint.network_id == net.id
                    )
                )
                if ep is None:
                    raise NotFound("endpoint configuration not found")  # [exact]
            specs = await self._specs()
            spec = next(s for s in specs if s.id == net.id)
            await self._disconnect_endpoint(container.id, spec, endpoint_spec(ep), specs)
            async with self.rt.sessions() as session, session.begin():
                await session.execute(delete(Endpoint).where(Endpoint.id == ep.id))
            # The original left the ruleset stale here (§9.4).
            await self._regenerate()

    async def _disconnect_endpoint(
        self, container_id: str, spec: NetworkSpec, ep: EndpointSpec, specs: list[NetworkSpec]
    ) -> None:
        """Host side of a disconnect; nothing to do for a stopped container."""
        if not await self._is_running(container_id):
            return
        async with self.rt.sessions() as session:
            container = await session.get(Container, container_id)
        if container is None:
            return
        remaining = [
            (n, e)
            for n, e in attachments(container_id, specs)
            if not (n.id == spec.id and e.id == ep.id)
        ]
        try:
            await self.driver.disconnect_running(
                container_id, container.network_driver, spec, ep, remaining
            )
        except HostError as err:
            raise HostFailure(f"could not disconnect the running container: {err}") from err

    # ------------------------------------------------------------ container hooks

    async def _check_ports(self, container: Container) -> None:
        """A host port is published by one running container at a time."""
        async with self.rt.sessions() as session:
            ports = list(await session.scalars(select(PublishedPort).order_by(PublishedPort.id)))
        by_container = _ports_by_container(ports)
        mine = by_container.pop(container.id, [])
        running = {cid: specs for cid, specs in by_container.items() if cid in self.running}
        clash = published_port_clash(mine, running)
        if clash is not None:
            raise Conflict(clash)

    async def container_starting(self, container: Container) -> StartPlan:
        async with self.lock:
            await self._check_ports(container)
            attached = attachments(container.id, await self._specs())
            try:
                plan = await self.driver.prepare_start(
                    container.id, container.network_driver, attached
                )
            except HostError as err:
                raise HostFailure(f"could not set up the container's network: {err}") from err
            if plan.epairs:
                async with self.rt.sessions() as session, session.begin():
                    for ep in await session.scalars(
                        select(Endpoint).where(Endpoint.container_id == container.id)
                    ):
                        ep.epair = plan.epairs.get(ep.id)
            return plan

    async def container_started(self, container: Container, process: Any) -> None:
        async with self.lock:
            self.running.add(container.id)
            await self._regenerate_quietly()

    async def container_stopped(self, container: Container) -> None:
        async with self.lock:
            was_running = container.id in self.running
            self.running.discard(container.id)
            attached = attachments(container.id, await self._specs())
            if attached:
                try:
                    await self.driver.container_stopped(
                        container.id, container.network_driver, attached
                    )
                except HostError as err:
                    log.warning("network clean-up of %s: %s", container.id, err)
                async with self.rt.sessions() as session, session.begin():
                    for ep in await session.scalars(
                        select(Endpoint).where(Endpoint.container_id == container.id)
                    ):
                        ep.epair = None
            if was_running or any(ep.epair for _n, ep in attached):
                await self._regenerate_quietly()

    async def container_removed(self, container: Container) -> None:
        """Disconnect-all (the container is stopped) and forget its ports."""
        async with self.lock:
            async with self.rt.sessions() as session, session.begin():
                result = await session.execute(
                    delete(Endpoint).where(Endpoint.container_id == container.id)
                )
                had = bool(result.rowcount)  # type: ignore[attr-defined]
            self.running.discard(container.id)
            if had:
                await self._regenerate_quietly()


def _with_endpoint(spec: NetworkSpec, ep: EndpointSpec) -> NetworkSpec:
    from dataclasses import replace

    return replace(spec, endpoints=(*spec.endpoints, ep))


def build(rt: Runtime) -> NetworkService | None:
    """The service for this platform, or None where networking is unavailable."""
    from kleened.host import factory

    build_network = getattr(factory, "build_network", None)
    if build_network is None:
        return None
    driver = build_network(rt.settings, rt.jails)
    return NetworkService(rt, driver) if driver is not None else None
