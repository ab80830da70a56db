"""Container, exec and image REST endpoints in-process (WebSockets are in tests/e2e)."""

from __future__ import annotations

import pytest

from tests.fixtures.images import register_busybox_image


@pytest.fixture
async def base(app_client, busybox_tree):
    rt = app_client.app.state.runtime
    return await register_busybox_image(rt, busybox_tree, "base")


async def create(client, **body):
    r = await client.post("/containers/create", json={"image": "base", **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_create_inspect_list(app_client, base):
    cid = await create(
        app_client,
        name="web",
        cmd=["/bin/echo", "hi"],
        env=["B=2", "A=1"],
        jail_param=["allow.raw_sockets=true"],
        network_driver="host",
    )
    doc = (await app_client.get(f"/containers/{cid}/inspect")).json()
    c = doc["container"]
    assert c["id"] == cid and c["name"] == "web" and c["image_id"] == base.id
    assert c["cmd"] == ["/bin/echo", "hi"] and c["env"] == ["A=1", "B=2"]
    assert c["user"] == "root"  # from the image
    assert c["jail_param"] == ["allow.raw_sockets=true"]
    assert c["running"] is False and c["persist"] is False and c["restart_policy"] == "no"
    assert c["dataset"] == f"kleene/container/{cid}"
    assert doc["container_endpoints"] == [] and doc["container_mountpoints"] == []

    assert (await app_client.get("/containers/list")).json() == []  # only running ones
    listed = (await app_client.get("/containers/list", params={"all": "true"})).json()
    assert [x["id"] for x in listed] == [cid]
    assert (listed[0]["image_name"], listed[0]["image_tag"], listed[0]["jid"]) == (
        "base",
        "latest",
        None,
    )


async def test_image_defaults_and_env_merge(app_client, base):
    cid = await create(app_client, env=["PATH=/x"])
    c = (await app_client.get(f"/containers/{cid}/inspect")).json()["container"]
    assert c["cmd"] == ["/bin/sh", "/etc/rc"] and c["env"] == ["PATH=/x"]


async def test_identifiers(app_client, base):
    a = await create(app_client, name="alpha")
    for ident in (a, a[:6], "alpha"):
        r = await app_client.get(f"/containers/{ident}/inspect")
        assert r.json()["container"]["id"] == a
    r = await app_client.get("/containers/zzzz/inspect")
    assert (r.status_code, r.json()) == (404, {"message": "container not found"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x"}, "x does not match /?[a-zA-Z0-9][a-zA-Z0-9_.-]+$"),
        ({"image": "nope"}, "no such image 'nope'"),
        ({"env": ["NOEQ"]}, "invalid environment variable 'NOEQ'"),
        (
            {"mounts": [{"type": "volume", "source": "v", "destination": "rel"}]},
            "must be an absolute path",
        ),
        (
            {"mounts": [{"type": "volume", "source": "v", "destination": "/a/../../etc"}]},
            "must not contain '..'",
        ),
        (
            {"mounts": [{"type": "nullfs", "source": "/nonexistent/dir", "destination": "/m"}]},
            "error ocurred while determining source type",
        ),
        (
            {
                "network_driver": "host",
                "public_ports": [{"interfaces": [], "host_port": "80", "container_port": "80"}],
            },
            "cannot publish ports of a container using the 'host' network driver",
        ),
        (
            {"public_ports": [{"interfaces": [], "host_port": "99999", "container_port": "80"}]},
            "invalid port value (should be in the range 0 - 65535)",
        ),
        (
            {"public_ports": [{"interfaces": [], "host_port": "x", "container_port": "80"}]},
            "invalid port value (should be in the range 0 - 65535)",  # reference §6: "3leet"
        ),
        (
            {"public_ports": [{"interfaces": [], "host_port": "1:2:3", "container_port": "80"}]},
            "could not decode port publishing specification",
        ),
        ({"jail_param": ["bad param"]}, "invalid jail parameter"),
        ({"jail_param": ["path=/"]}, "invalid jail parameter 'path=/': 'path' is set by kleened"),
        ({"jail_param": ["command=/bin/sh"]}, "'command' is set by kleened"),
        ({"persist": "maybe"}, "Invalid boolean. Got: string"),
        ({"network_driver": "bogus"}, "Invalid value for enum"),
        ({"image": "base@nosnap"}, "no such snapshot '@nosnap'"),
    ],
)
async def test_invalid_create_leaves_nothing(app_client, base, body, message):
    settings = app_client.app.state.settings
    containers_dir = settings.dir_storage_base / settings.container_root
    r = await app_client.post("/containers/create", json={"image": "base", **body})
    assert r.status_code == 404  # klee parses 201/404/500 here
    assert message in r.json()["message"]
    assert (await app_client.get("/containers/list", params={"all": "true"})).json() == []
    assert list(containers_dir.iterdir()) == []
    assert (await app_client.get("/volumes/list")).json() == []


async def test_name_clash_is_refused(app_client, base):
    await create(app_client, name="dup")
    r = await app_client.post("/containers/create", json={"image": "base", "name": "dup"})
    assert r.status_code == 404 and "already in use" in r.json()["message"]


async def test_update_keeps_absent_fields(app_client, base):
    cid = await create(app_client, name="u1", env=["A=1"], cmd=["/bin/true"], persist=True)
    r = await app_client.post(f"/containers/{cid}/update", json={"name": "u2"})
    assert (r.status_code, r.json()) == (201, {"id": cid})
    c = (await app_client.get("/containers/u2/inspect")).json()["container"]
    assert (c["env"], c["cmd"], c["persist"]) == (["A=1"], ["/bin/true"], True)
    r = await app_client.post(f"/containers/{cid}/update", json={"env": ["B=2"], "user": "nobody"})
    c = (await app_client.get(f"/containers/{cid}/inspect")).json()["container"]
    assert (c["env"], c["user"], c["name"]) == (["B=2"], "nobody", "u2")
    r = await app_client.post("/containers/nope/update", json={})
    assert (r.status_code, r.json()) == (404, {"message": "no such container 'nope'"})
    r = await app_client.post(f"/containers/{cid}/update", json={"name": "!"})
    assert r.status_code == 409


async def test_stop_remove_prune(app_client, base):
    keep = await create(app_client, persist=True)
    drop = await create(app_client)
    r = await app_client.post(f"/containers/{drop}/stop")
    assert (r.status_code, r.json()) == (404, {"message": "container not running"})
    r = await app_client.post("/containers/prune")
    assert (r.status_code, r.json()) == (200, [drop])
    r = await app_client.delete(f"/containers/{keep}")
    assert (r.status_code, r.json()) == (200, {"id": keep})
    settings = app_client.app.state.settings
    assert list((settings.dir_storage_base / settings.container_root).iterdir()) == []


async def test_exec_create_and_stop_errors(app_client, base):
    cid = await create(app_client)
    r = await app_client.post("/exec/create", json={"container_id": cid, "cmd": ["/bin/true"]})
    assert r.status_code == 201
    exec_id = r.json()["id"]
    r = await app_client.post(
        f"/exec/{exec_id}/stop", params={"force_stop": "false", "stop_container": "false"}
    )
    assert (r.status_code, r.json()) == (
        404,
        {"message": "execution instance have not been started"},
    )
    r = await app_client.post(
        f"/exec/{exec_id}/stop", params={"force_stop": "false", "stop_container": "false"}
    )
    assert r.json() == {"message": f"could not find execution instance matching '{exec_id}'"}
    r = await app_client.post("/exec/create", json={"container_id": cid, "env": ["X"]})
    assert r.status_code == 404


async def test_images_rest(app_client, base):
    listed = (await app_client.get("/images/list")).json()
    assert [(i["id"], i["name"], i["tag"]) for i in listed] == [(base.id, "base", "latest")]
    assert (await app_client.get("/images/base/inspect")).json()["cmd"] == ["/bin/sh", "/etc/rc"]
    r = await app_client.get("/images/nope/inspect")
    assert (r.status_code, r.json()) == (404, {"message": "image not found"})

    r = await app_client.post(f"/images/{base.id}/tag", params={"nametag": "other:v1"})
    assert (r.status_code, r.json()) == (200, {"id": base.id})
    assert (await app_client.get("/images/other:v1/inspect")).json()["id"] == base.id
    r = await app_client.post(f"/images/{base.id}/tag", params={"nametag": "a:b:c"})
    assert r.status_code == 404

    cid = await create(app_client, image="other:v1")
    r = await app_client.delete("/images/other:v1")
    assert r.status_code == 404
    assert r.json()["message"] == (
        f"could not remove image {base.id} since it is used for containers:\n{cid}"
    )
    assert (await app_client.post("/images/prune", params={"all": "true"})).json() == []
    await app_client.delete(f"/containers/{cid}")
    r = await app_client.delete("/images/other:v1")
    assert (r.status_code, r.json()) == (200, {"id": base.id})
    r = await app_client.delete("/images/other:v1")
    assert (r.status_code, r.json()) == (404, {"message": "Error: No such image: other:v1\n"})


async def test_unstarted_exec_instances_expire(app_client, base, monkeypatch):
    from kleened.engine import execs

    cid = await create(app_client)
    r = await app_client.post("/exec/create", json={"container_id": cid, "cmd": ["/bin/true"]})
    assert r.status_code == 201, r.text
    exec_id = r.json()["id"]
    stop = {"force_stop": "false", "stop_container": "false"}
    kept = await app_client.post(f"/exec/{exec_id}/stop", params=stop)
    assert kept.json() != {"message": f"could not find execution instance matching '{exec_id}'"}
    monkeypatch.setattr(execs, "UNSTARTED_TTL", -1.0)  # every unstarted instance is now too old
    r = await app_client.post(f"/exec/{exec_id}/stop", params=stop)
    assert (r.status_code, r.json()) == (
        404,
        {"message": f"could not find execution instance matching '{exec_id}'"},
    )
