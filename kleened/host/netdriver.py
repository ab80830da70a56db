"""The network driver contract: what the network engine asks of the host.

`engine/networks.py` decides (validation, addresses, which rules); a driver
only carries decisions out, on FreeBSD (`host/freebsd/network.py`: ifconfig,
epair, jail parameters, pf) or Linux (`host/linux/network.py`: bridges, veth
pairs in the jail's network namespace, one nftables table).

Rule every driver keeps: an interface is created, reconfigured or destroyed
only when the network record says the daemon owns it (`owns_interface`);
custom networks and anything else on the host are only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kleened.engine.netmodel import EndpointSpec, FirewallState, NetworkSpec
from kleened.host.base import BeforeCommand, HostError

# (network, endpoint) pairs of one container, networks in name order.
Attached = Sequence[tuple[NetworkSpec, EndpointSpec]]


class NetworkHostError(HostError):
    """A host network operation failed; the message is safe to show clients."""


class FirewallError(NetworkHostError):
    """The ruleset was refused by its checker; the live ruleset is unchanged."""


@dataclass
class StartPlan:
    """What a container start needs from the network driver."""

    jail_params: list[str] = field(default_factory=list)  # FreeBSD jail(8) parameters
    warnings: list[str] = field(default_factory=list)  # shown to the attached client
    # Linux: run with the jail's pid 1 once its namespaces exist (veth set-up).
    before_command: BeforeCommand | None = None
    # endpoint id -> interface base name while running (FreeBSD epair, Linux veth)
    epairs: dict[str, str] = field(default_factory=dict)


class NetworkDriver(Protocol):
    async def startup(self) -> list[str]:
        """Host prerequisites at daemon start (forwarding, pf enabled); warnings."""

    async def host_gateway(self) -> str | None:
        """The interface of the IPv4 default route, or None."""

    async def interface_exists(self, name: str) -> bool: ...

    async def interface_names(self) -> set[str]:
        """Every interface on the host (for auto-naming, which must avoid them)."""

    async def interface_addresses(self, name: str) -> list[str]:
        """Addresses configured on `name` (canonical text); [] if it does not exist."""

    async def create_interface(self, network: NetworkSpec) -> None:
        """Create an owned network interface with its `<auto>` gateways.

        Either completes or leaves nothing behind (raises NetworkHostError)."""

    async def restore_interface(self, network: NetworkSpec) -> None:
        """Start-up: make an owned interface exist and be configured, without
        disturbing it if it already is (containers keep running)."""

    async def destroy_interface(self, network: NetworkSpec) -> None:
        """Remove an owned interface (and what is still attached to it)."""

    async def prepare_start(self, container_id: str, driver: str, attached: Attached) -> StartPlan:
        """Host set-up before a jail is created; parameters for jail(8)."""

    async def container_stopped(self, container_id: str, driver: str, attached: Attached) -> None:
        """Undo what exists only while the container runs. Idempotent."""

    async def connect_running(
        self, container_id: str, driver: str, network: NetworkSpec, endpoint: EndpointSpec
    ) -> str | None:
        """Give a running container a new endpoint; returns its epair/veth name or None."""

    async def disconnect_running(
        self, container_id: str, driver: str, network: NetworkSpec, endpoint: EndpointSpec
    ) -> None:
        """Take an endpoint away from a running container."""

    async def apply_firewall(self, state: FirewallState) -> None:
        """Check, then atomically install, the ruleset for `state` (FirewallError)."""

    async def remove_firewall(self) -> None:
        """Remove everything the daemon installed in the firewall."""
