"""Network endpoints in-process: every status code and message (networking
reference §1-§4), against real bridges and the real nft table."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.fixtures.images import register_busybox_image


@pytest.fixture
async def base(app_client, busybox_tree):
    rt = app_client.app.state.runtime
    return await register_busybox_image(rt, busybox_tree, "base")


async def net(client, name="n1", **body):
    r = await client.post("/networks/create", json={"name": name, "type": "bridge", **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def container(client, driver="ipnet", **body):
    r = await client.post(
        "/containers/create", json={"image": "base", "network_driver": driver, **body}
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def connect(client, cid, network, ip="<auto>", ip6="<auto>"):
    return await client.post(
        "/networks/connect",
        json={"container": cid, "network": network, "ip_address": ip, "ip_address6": ip6},
    )


def host_interfaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(out)}


async def expect(response, status, message):
    assert response.status_code == status, response.text
    assert response.json() == {"message": message}


# ---------------------------------------------------------------- create


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"subnet": "172.18.0.0-16"},
            'invalid subnet: could not parse cidr block: "172.18.0.0-16"',
        ),
        ({"subnet": "10.77.0.5/24"}, 'invalid subnet: could not parse cidr block: "10.77.0.5/24"'),
        ({"subnet": "fd00:77::/64"}, "invalid subnet: wrong IP protocol"),
        ({"subnet6": "10.77.0.0/24"}, "invalid subnet6: wrong IP protocol"),
        ({"subnet6": "fd00:77::/x"}, 'invalid subnet6: could not parse cidr block: "fd00:77::/x"'),
        ({"gateway": "10.77.0"}, 'invalid gateway: could not parse cidr block: "10.77.0"'),
        ({"gateway": "fd00:77::1"}, "invalid gateway: wrong IP protocol"),
        ({"gateway6": "10.77.0.1"}, "invalid gateway6: wrong IP protocol"),
        (
            {"subnet": "10.77.0.0/24", "gateway": "10.78.0.1"},
            "invalid gateway: 10.78.0.1 is not in the subnet 10.77.0.0/24",
        ),
        (
            {"interface": "bad name"},
            'invalid interface name "bad name": use 1 to 15 letters, digits, '
            "'_', '.' or '-', starting with a letter",
        ),
        ({"type": "custom"}, "a custom network needs the name of an existing interface"),
        ({"type": "custom", "interface": "klnotthere0"}, "interface 'klnotthere0' does not exist"),
        ({"name": ""}, "invalid network name: it must be non-empty and printable"),
        (
            {"nat": "bad nat"},
            'invalid nat interface: invalid interface name "bad nat": use 1 to 15 '
            "letters, digits, '_', '.' or '-', starting with a letter",
        ),
    ],
)
async def test_create_validation_is_409_and_changes_nothing(app_client, body, message):
    before = host_interfaces()
    r = await app_client.post("/networks/create", json={"name": "n1", "type": "bridge", **body})
    await expect(r, 409, message)
    assert (await app_client.get("/networks/list")).json() == []
    assert host_interfaces() == before


async def test_schema_errors_are_409(app_client):
    for body in (
        {"type": "bridge"},
        {"name": "x", "type": "nope"},
        {"name": "x", "type": "bridge", "interface": "a" * 16},
    ):
        r = await app_client.post("/networks/create", json=body)
        assert r.status_code == 409, r.text
        assert "message" in r.json()


async def test_name_taken(app_client):
    nid = await net(app_client, subnet="10.77.10.0/24")
    r = await app_client.post("/networks/create", json={"name": "n1", "type": "loopback"})
    await expect(r, 409, "network name is already taken")
    # A name that is a prefix of an id is not "taken" (reference §9.15).
    await net(app_client, name=nid[:3], type="loopback")


async def test_existing_interface_is_refused_and_untouched(app_client):
    # lo belongs to the host: neither a loopback nor a bridge network may take it.
    for kind in ("loopback", "bridge"):
        r = await app_client.post(
            "/networks/create", json={"name": "x", "type": kind, "interface": "lo"}
        )
        assert r.status_code == 409
        assert r.json()["message"].startswith("interface 'lo' already exists and was not created")
    assert "lo" in host_interfaces()
    up = subprocess.run(["ip", "-j", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    assert "127.0.0.1" in up.stdout
    # Used by another network: refused too.
    await net(app_client, interface="kltest1")
    r = await app_client.post(
        "/networks/create", json={"name": "y", "type": "bridge", "interface": "kltest1"}
    )
    await expect(r, 409, "interface 'kltest1' is already used by network 'n1'")


async def test_auto_names_skip_host_interfaces(app_client):
    names = host_interfaces()
    n = 0
    while f"kleene{n}" in names:
        n += 1
    squatter = f"kleene{n}"
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    try:
        await net(app_client)
        got = (await app_client.get("/networks/n1/inspect")).json()["network"]["interface"]
        assert got != squatter and got.startswith("kleene")
        await app_client.delete("/networks/n1")
        assert squatter in host_interfaces()  # never touched
    finally:
        subprocess.run(["ip", "link", "del", squatter], check=False)


async def test_create_shapes_and_host_effects(app_client):
    nid = await net(
        app_client,
        subnet="10.77.11.0/24",
        subnet6="fd00:77:11::/64",
        gateway="<auto>",
        gateway6="<auto>",
    )
    doc = (await app_client.get(f"/networks/{nid}/inspect")).json()
    assert doc["network_endpoints"] == []
    n = doc["network"]
    assert (
        n["id"] == nid and n["gateway"] == "<auto>" and n["icc"] is True and n["internal"] is False
    )
    assert n["nat"] == "<host-gateway>"  # resolved at every regeneration (§9.20)
    addrs = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", n["interface"]], capture_output=True, text=True
    ).stdout
    assert "10.77.11.1" in addrs and "fd00:77:11::1" in addrs
    # Loopback networks ignore their gateways.
    lid = await net(
        app_client, name="lb", type="loopback", subnet="10.77.12.0/24", gateway="<auto>"
    )
    lif = (await app_client.get(f"/networks/{lid}/inspect")).json()["network"]["interface"]
    addrs = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", lif], capture_output=True, text=True
    ).stdout
    assert "10.77.12.1" not in addrs
    names = [x["name"] for x in (await app_client.get("/networks/list")).json()]
    assert names == sorted(names) == ["lb", "n1"]


# ---------------------------------------------------------------- inspect, remove, prune


async def test_not_found_messages(app_client):
    await expect(await app_client.get("/networks/nope/inspect"), 404, "network not found")
    await expect(await app_client.delete("/networks/nope"), 404, "network not found.")


async def test_remove_and_prune(app_client, base):
    used = await net(app_client, name="used", subnet="10.77.13.0/24")
    idle = await net(app_client, name="idle", type="loopback", subnet="10.77.14.0/24")
    iface = (await app_client.get(f"/networks/{idle}/inspect")).json()["network"]["interface"]
    cid = await container(app_client)
    assert (await connect(app_client, cid, "used")).status_code == 204
    r = await app_client.post("/networks/prune")
    assert r.status_code == 200 and r.json() == [idle]
    assert iface not in host_interfaces()
    r = await app_client.delete(f"/networks/{used[:5]}")
    assert r.status_code == 200 and r.json() == {"id": used}
    doc = (await app_client.get(f"/containers/{cid}/inspect")).json()
    assert doc["container_endpoints"] == []


# ---------------------------------------------------------------- connect


async def test_connect_errors(app_client, base):
    await net(app_client, subnet="10.77.15.0/30", gateway="<auto>")
    await net(app_client, name="lb", type="loopback", subnet="10.77.16.0/24")
    await net(app_client, name="v4only", type="loopback", subnet="10.77.17.0/24")
    cid = await container(app_client)
    await expect(await connect(app_client, "nope", "n1"), 404, "container not found")
    await expect(await connect(app_client, cid, "nope"), 404, "network not found")
    assert (await connect(app_client, cid, "n1")).status_code == 204
    await expect(
        await connect(app_client, cid, "n1"), 409, "container already connected to the network"
    )
    for driver in ("host", "disabled"):
        other = await container(app_client, driver)
        await expect(
            await connect(app_client, other, "n1"),
            409,
            f"containers with the '{driver}' network-driver cannot connect to networks.",
        )
    vnet = await container(app_client, "vnet")
    await expect(
        await connect(app_client, vnet, "lb"),
        409,
        "containers using the 'vnet' network-driver can't connect to loopback networks",
    )
    # Addresses (reference §3, with the checks §9.9 asks for).
    c2 = await container(app_client)
    await expect(
        await connect(app_client, c2, "v4only", "<auto>", "fd00::5"),
        409,
        "cannot set ip address because there is no IPv6 subnet defined for this network",
    )
    await expect(
        await connect(app_client, c2, "lb", "10.77.16"),
        409,
        "could not parse inet address 10.77.16: einval",
    )
    await expect(
        await connect(app_client, c2, "lb", "10.99.0.1"),
        409,
        "cannot set ip address 10.99.0.1 because it is not in the subnet 10.77.16.0/24"
        " of this network",
    )
    assert (await connect(app_client, c2, "lb", "10.77.16.9")).status_code == 204
    c3 = await container(app_client)
    await expect(
        await connect(app_client, c3, "lb", "10.77.16.9"),
        409,
        "cannot set ip address 10.77.16.9 because it is already in use",
    )
    # /30 on a bridge: .1 is the gateway, .2 went to cid, nothing is left.
    await expect(await connect(app_client, c3, "n1"), 409, "no more inet IP's left in the network")
    # Nothing was stored by the failures.
    doc = (await app_client.get(f"/containers/{c3}/inspect")).json()
    assert doc["container_endpoints"] == []


async def test_custom_network_and_vnet(app_client, base):
    subprocess.run(["ip", "link", "add", "kltest2", "type", "bridge"], check=True)
    try:
        await net(
            app_client, name="cust", type="custom", interface="kltest2", subnet="10.77.18.0/24"
        )
        vnet = await container(app_client, "vnet")
        await expect(
            await connect(app_client, vnet, "cust"),
            409,
            "containers using the 'vnet' network-driver can't connect to custom networks",
        )
        ipnet = await container(app_client)
        assert (await connect(app_client, ipnet, "cust")).status_code == 204
        await app_client.delete(f"/containers/{ipnet}")
        assert (await app_client.delete("/networks/cust")).status_code == 200
        assert "kltest2" in host_interfaces()  # custom interfaces are never removed
    finally:
        subprocess.run(["ip", "link", "del", "kltest2"], check=False)


async def test_addresses_auto_explicit_and_none(app_client, base):
    await net(
        app_client,
        subnet="10.77.19.0/24",
        subnet6="fd00:77:19::/64",
        gateway="<auto>",
        gateway6="<auto>",
    )
    a, b, c = [await container(app_client) for _ in range(3)]
    assert (await connect(app_client, a, "n1")).status_code == 204
    assert (await connect(app_client, b, "n1", "10.77.19.50", "")).status_code == 204
    assert (await connect(app_client, c, "n1", "", "FD00:77:19::00AB")).status_code == 204
    eps = {
        e["container_id"]: e
        for e in (await app_client.get("/networks/n1/inspect")).json()["network_endpoints"]
    }
    assert (eps[a]["ip_address"], eps[a]["ip_address6"]) == ("10.77.19.2", "fd00:77:19::2")
    assert (eps[b]["ip_address"], eps[b]["ip_address6"]) == ("10.77.19.50", "")
    assert (eps[c]["ip_address"], eps[c]["ip_address6"]) == ("", "fd00:77:19::ab")  # canonical
    assert all(e["epair"] is None for e in eps.values())


# ---------------------------------------------------------------- disconnect


async def test_disconnect_errors_are_404(app_client, base):
    await net(app_client, subnet="10.77.20.0/24")
    cid = await container(app_client)
    await expect(await app_client.post("/networks/n1/disconnect/nope"), 404, "container not found")
    await expect(
        await app_client.post(f"/networks/nope/disconnect/{cid}"), 404, "network not found"
    )
    await expect(
        await app_client.post(f"/networks/n1/disconnect/{cid}"),
        404,
        "endpoint configuration not found",
    )
    assert (await connect(app_client, cid, "n1")).status_code == 204
    r = await app_client.post(f"/networks/n1/disconnect/{cid}")
    assert r.status_code == 204 and r.content == b""


async def test_published_ports_need_ipnet_or_vnet(app_client, base):
    for driver in ("host", "disabled"):
        r = await app_client.post(
            "/containers/create",
            json={
                "image": "base",
                "network_driver": driver,
                "public_ports": [{"interfaces": [], "host_port": "8080", "container_port": "80"}],
            },
        )
        await expect(
            r, 404, f"cannot publish ports of a container using the '{driver}' network driver"
        )


async def test_published_port_addresses_follow_endpoints(app_client, base):
    await net(app_client, subnet="10.77.21.0/24")
    cid = await container(
        app_client,
        "vnet",
        public_ports=[{"interfaces": ["lo"], "host_port": "18090", "container_port": "80"}],
    )
    port = lambda doc: doc["container"]["public_ports"][0]  # noqa: E731
    assert (await connect(app_client, cid, "n1")).status_code == 204
    doc = (await app_client.get(f"/containers/{cid}/inspect")).json()
    # Gateway "" (the API default): nothing reserved, the first address is .1.
    assert port(doc)["ip_address"] == "10.77.21.1" and port(doc)["interfaces"] == ["lo"]
    assert (await app_client.post(f"/networks/n1/disconnect/{cid}")).status_code == 204
    doc = (await app_client.get(f"/containers/{cid}/inspect")).json()
    assert port(doc)["ip_address"] == ""  # cleared, not stale (reference §9.4)


@pytest.mark.parametrize(
    ("host_port", "container_port", "message"),
    [
        ("3leet", "80", "invalid port value (should be in the range 0 - 65535)"),
        ("", "80", "invalid port value (should be in the range 0 - 65535)"),
        ("-1", "80", "invalid port value (should be in the range 0 - 65535)"),
        ("70000", "80", "invalid port value (should be in the range 0 - 65535)"),
        ("80:*", "80", "invalid port value (should be in the range 0 - 65535)"),
        ("80", "x", "invalid port value (should be in the range 0 - 65535)"),
        ("1:2:3", "80", "could not decode port publishing specification"),
        ("80", "1:2:3", "could not decode port publishing specification"),
        ("90:80", "80", "could not decode port publishing specification"),
    ],
)
async def test_port_validation(app_client, base, host_port, container_port, message):
    r = await app_client.post(
        "/containers/create",
        json={
            "image": "base",
            "network_driver": "vnet",
            "public_ports": [
                {"interfaces": [], "host_port": host_port, "container_port": container_port}
            ],
        },
    )
    await expect(r, 404, message)  # every container-create error is a 404 for klee


@pytest.mark.parametrize(
    ("host_port", "container_port"), [("8080", "80"), ("8080:8090", "80:*"), ("8080:8082", "80:82")]
)
async def test_port_forms_accepted(app_client, base, host_port, container_port):
    cid = await container(
        app_client,
        "vnet",
        public_ports=[
            {
                "interfaces": [],
                "host_port": host_port,
                "container_port": container_port,
                "protocol": "udp",
            }
        ],
    )
    doc = (await app_client.get(f"/containers/{cid}/inspect")).json()
    (port,) = doc["container"]["public_ports"]
    assert (port["host_port"], port["container_port"], port["protocol"]) == (
        host_port,
        container_port,
        "udp",
    )
