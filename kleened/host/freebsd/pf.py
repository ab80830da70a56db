"""pf: render Kleene's three ruleset blocks and fill the template (pure).

The template (`etc/pf.conf.kleene`) is ordinary pf.conf text with three
placeholders, replaced literally, never evaluated (reference §5.1, §9.8). The
rules follow the original's generator line for line (networking reference
§5.3-§5.6, worked example §5.7) except for these fixes from reference §9:

* §9.1: the host-gateway egress blocks (HGW4/HGW6) are emitted from the same
  known value, the detected gateway, and only when it was detected: the
  original emitted HGW4 even when `$kleenet_host_gw_if` was undefined (pf then
  refuses the whole file) and never emitted HGW6.
* §9.7: an internal network's upstream egress block no longer depends on icc.
  Every upstream interface known is blocked, for each family: the nat interface
  (NATBLK, also for IPv6, since pf's `nat` rule has no address family) and the
  host gateway interface (HGW) when it is a different interface. With the nat
  interface being the host gateway (the default), IPv4 output is the original's.
* §9.3: the cross-network pass rule of a published port uses the port's own
  protocol; the original always said `proto tcp`, so UDP ports were unreachable
  from other container networks.
* §9.5/§9.4: redirect targets are resolved on the fly by `netmodel.port_addresses`
  (first address by network name), and a container without addresses gets none.
* §9.20: a network's `nat` may be `<host-gateway>`, resolved at render time.

Loading (reference §5.8, §9.2): the caller writes the rendered text to
`staging_path(pf_config_path)`, runs `pfctl_check_argv` on it, and only if that
succeeds renames it over the live file and runs `pfctl_load_argv`; a failure of
either is reported, not just logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kleened.engine.netmodel import (
    FirewallState,
    NetworkSpec,
    PortTarget,
    check_state,
    container_port_range,
    is_offset_port,
    port_targets,
    resolve_nat,
)

PFCTL = "/sbin/pfctl"

MACROS_PLACEHOLDER = "<%= kleene_macros %>"
TRANSLATION_PLACEHOLDER = "<%= kleene_translation %>"
FILTERING_PLACEHOLDER = "<%= kleene_filtering %>"
PLACEHOLDERS = (MACROS_PLACEHOLDER, TRANSLATION_PLACEHOLDER, FILTERING_PLACEHOLDER)

NETWORK_INTERFACES = "$kleenet_network_interfaces"
HOST_GW_IF = "$kleenet_host_gw_if"


class PfTemplateError(ValueError):
    """The template lacks a placeholder or has them out of pf's required order."""


@dataclass(frozen=True)
class PfRules:
    macros: tuple[str, ...]
    translation: tuple[str, ...]
    filtering: tuple[str, ...]


def _prefix(net: NetworkSpec) -> str:
    return f"kleenet_{net.id}"


# ---------------------------------------------------------------- macros (§5.3)


def render_macros(state: FirewallState) -> list[str]:
    networks = state.sorted_networks()
    lines = []
    if state.host_gateway_if:
        lines.append(f'kleenet_host_gw_if="{state.host_gateway_if}"')
    # Always defined: published-port rules refer to it. The separators (", " after
    # lo0, a bare "," between networks) are the original's; pf accepts both.
    if networks:
        joined = ",".join(n.interface for n in networks)
        lines.append(f'kleenet_network_interfaces="{{lo0, {joined}}}"')
    else:
        lines.append('kleenet_network_interfaces="{lo0}"')
    for net in networks:
        p = _prefix(net)
        lines.append(f'{p}_interface="{net.interface}"')
        if net.subnet:
            lines.append(f'{p}_subnet="{net.subnet}"')
        if net.subnet6:
            lines.append(f'{p}_subnet6="{net.subnet6}"')
        nat_if = resolve_nat(net, state.host_gateway_if)
        if nat_if:
            lines.append(f'{p}_nat_if="{nat_if}"')
        members = [net.interface, "lo0"] + [f"{ep.epair}a" for ep in net.endpoints if ep.epair]
        lines.append(f'{p}_all_interfaces="{{{", ".join(members)}}}"')
    return lines


# ---------------------------------------------------------------- translation (§5.4)


def render_translation(state: FirewallState) -> list[str]:
    lines = []
    for net in state.sorted_networks():
        if resolve_nat(net, state.host_gateway_if) and not net.internal:
            p = _prefix(net)
            lines.append(
                f"nat on ${p}_nat_if from (${p}_interface:network) to any -> (${p}_nat_if)"
            )
    for target in port_targets(state):
        port = target.port
        for af, addr in (("inet", target.ip_address), ("inet6", target.ip_address6)):
            if not addr:
                continue
            for ifname in port.interfaces:
                # Ports are copied verbatim: pf itself understands "N:*".
                lines.append(
                    f"rdr on {ifname} {af} proto {port.protocol} from any to ({ifname}) "
                    f"port {port.host_port} -> {addr} port {port.container_port}"
                )
    return lines


# ---------------------------------------------------------------- filtering (§5.5, §5.6)


def _family_rules(
    net: NetworkSpec, subnet_macro: str, nat_if: str, host_gw: str | None
) -> list[str]:
    """The rules after the incoming block, for one address family."""
    p = _prefix(net)
    s = f"${p}_{subnet_macro}"
    rules = []
    if net.icc:
        rules.append(f"pass quick on ${p}_all_interfaces from {s} to {s}")
    if net.internal:
        rules.append(f"block out quick log on {NETWORK_INTERFACES} from {s}")
        if nat_if:
            rules.append(f"block out quick log on ${p}_nat_if from {s}")
        if host_gw and host_gw != nat_if:
            rules.append(f"block out quick log on {HOST_GW_IF} from {s}")
    return rules


def filter_port(host_port: str, container_port: str) -> str:
    """`<cport>` for filter rules: pf's filter rules do not accept "N:*" (§5.6)."""
    if not is_offset_port(container_port):
        return container_port
    low, high = container_port_range(host_port, container_port)
    return str(low) if low == high else f"{low}:{high}"


def _port_pass_rules(target: PortTarget) -> list[str]:
    port = target.port
    cport = filter_port(port.host_port, port.container_port)
    lines = []
    for af, addr in (("inet", target.ip_address), ("inet6", target.ip_address6)):
        if not addr:
            continue
        for ifname in port.interfaces:
            lines.append(
                f"pass quick on {ifname} {af} proto {port.protocol} from any to {addr} port {cport}"
            )
        lines.append(
            f"pass quick on {NETWORK_INTERFACES} {af} proto {port.protocol} "
            f"from any to {addr} port {cport}"
        )
    return lines


def render_filtering(state: FirewallState) -> list[str]:
    lines = []
    for net in state.sorted_networks():
        p = _prefix(net)
        nat_if = resolve_nat(net, state.host_gateway_if)
        if net.subnet:
            lines.append(f"block in log from any to ${p}_subnet")
        if net.subnet6:
            lines.append(f"block in log from any to ${p}_subnet6")
        if net.subnet:
            lines += _family_rules(net, "subnet", nat_if, state.host_gateway_if)
        if net.subnet6:
            lines += _family_rules(net, "subnet6", nat_if, state.host_gateway_if)
    for target in port_targets(state):
        lines += _port_pass_rules(target)
    return lines


# ---------------------------------------------------------------- the whole file


def render_rules(state: FirewallState) -> PfRules:
    check_state(state)
    return PfRules(
        macros=tuple(render_macros(state)),
        translation=tuple(render_translation(state)),
        filtering=tuple(render_filtering(state)),
    )


def check_template(template: str) -> None:
    """All three placeholders present, once each, in pf's order."""
    positions = []
    for placeholder in PLACEHOLDERS:
        count = template.count(placeholder)
        if count != 1:
            raise PfTemplateError(
                f"the pf template must contain {placeholder} exactly once (found {count})"
            )
        positions.append(template.index(placeholder))
    if positions != sorted(positions):
        raise PfTemplateError(
            "the pf template's placeholders must appear in the order macros, translation, filtering"
        )


_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def fill_template(template: str, rules: PfRules) -> str:
    """Literal substitution in one pass, so rendered text is never re-scanned.

    An empty block leaves an empty line where its placeholder was (§5.1).
    """
    check_template(template)
    blocks = {
        MACROS_PLACEHOLDER: "\n".join(rules.macros),
        TRANSLATION_PLACEHOLDER: "\n".join(rules.translation),
        FILTERING_PLACEHOLDER: "\n".join(rules.filtering),
    }
    return _PLACEHOLDER_RE.sub(lambda m: blocks[m.group(0)], template)


def render_pf_conf(template: str, state: FirewallState) -> str:
    return fill_template(template, render_rules(state))


# ---------------------------------------------------------------- pfctl


def staging_path(pf_config_path: Path) -> Path:
    """Where a candidate ruleset is written: beside the live file, so the final
    rename is atomic (same filesystem)."""
    return pf_config_path.with_name(pf_config_path.name + ".kleened-new")


def pfctl_check_argv(path: Path | str) -> list[str]:
    """Parse and check a ruleset without loading it (needs root, no side effects)."""
    return [PFCTL, "-n", "-f", str(path)]


def pfctl_load_argv(path: Path | str) -> list[str]:
    return [PFCTL, "-f", str(path)]


def pfctl_enable_argv() -> list[str]:
    """Run at start-up; it fails harmlessly when pf is already enabled (§1.5)."""
    return [PFCTL, "-e"]
