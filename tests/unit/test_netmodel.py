"""Pure network-model rules that are not renderer output."""

from __future__ import annotations

import pytest

from kleened.engine.netmodel import PublishedPortSpec, published_port_clash


def port(host: str, proto: str = "tcp", interfaces: tuple[str, ...] = ()) -> PublishedPortSpec:
    return PublishedPortSpec(interfaces, host, host.split(":")[0], proto)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        ("8080", "8080"),
        ("8080", "8000:8100"),
        ("8090:8095", "8095:8099"),
        ("8090:8095", "8080:8091"),
    ],
)
def test_overlapping_host_ports_of_one_protocol_clash(mine, theirs):
    # interfaces do not matter: every port is also redirected from the host itself
    message = published_port_clash(
        [port(mine, interfaces=("eth0",))], {"abc123": [port(theirs, interfaces=("lo",))]}
    )
    assert message == f"host port {mine}/tcp is already published by running container abc123"


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        (port("8080"), port("8081")),
        (port("8080", "udp"), port("8080", "tcp")),
        (port("8090:8095"), port("8096:9000")),
    ],
)
def test_disjoint_ports_or_protocols_do_not_clash(mine, theirs):
    assert published_port_clash([mine], {"abc123": [theirs]}) is None


def test_no_ports_never_clash():
    assert published_port_clash([], {"abc123": [port("80")]}) is None
    assert published_port_clash([port("80")], {}) is None
