"""Image REST endpoints and start-up repair in-process (WebSockets are in tests/e2e)."""

from __future__ import annotations

import pytest

from kleened.engine import build, images
from kleened.store.models import Container
from tests.fixtures.images import register_busybox_image


@pytest.fixture
async def base(app_client, busybox_tree):
    rt = app_client.app.state.runtime
    return await register_busybox_image(rt, busybox_tree, "base")


async def test_image_endpoints(app_client, base):
    listed = (await app_client.get("/images/list")).json()
    assert [i["id"] for i in listed] == [base.id]
    assert set(listed[0]) >= {"id", "name", "tag", "cmd", "env", "user", "instructions", "created"}
    r = await app_client.get("/images/nope/inspect")
    assert (r.status_code, r.json()) == (404, {"message": "image not found"})
    r = await app_client.post(f"/images/{base.id[:5]}/tag", params={"nametag": "renamed:v1"})
    assert (r.status_code, r.json()) == (200, {"id": base.id})
    assert (await app_client.get("/images/renamed:v1/inspect")).json()["id"] == base.id
    for bad in ("a:b:c", ".dot", "x" * 129):
        r = await app_client.post(f"/images/{base.id}/tag", params={"nametag": bad})
        assert r.status_code == 404, bad
    assert (await app_client.get("/images/renamed:v1/inspect")).status_code == 200
    r = await app_client.post(f"/images/{base.id}/tag", params={"nametag": ""})
    assert r.status_code == 200
    assert (await app_client.get(f"/images/{base.id}/inspect")).json()["name"] == ""
    r = await app_client.delete("/images/nope")
    assert (r.status_code, r.json()) == (404, {"message": "Error: No such image: nope\n"})
    assert (await app_client.post("/images/prune", params={"all": "false"})).json() == [base.id]
    assert (await app_client.get("/images/list")).json() == []


async def test_start_up_removes_interrupted_builds_and_creations(app_client, base):
    rt = app_client.app.state.runtime
    orphan = f"{rt.settings.image_root}/0rphan000000"
    await rt.storage.create(orphan)
    root = await rt.storage.mountpoint(rt.settings.kleene_root)
    (root / ".download-x.archive").write_bytes(b"partial")
    # a build container whose build died with the daemon, with a snapshot
    cid = "b0ild0000000"
    dataset = f"{rt.settings.container_root}/{cid}"
    await rt.storage.clone(f"{base.dataset}@image", dataset)
    await rt.storage.snapshot(f"{dataset}@s1")
    async with rt.sessions() as session, session.begin():
        session.add(
            Container(
                id=cid,
                name=f"builder_{cid}",
                image_id=base.id,
                cmd=[],
                user="root",
                env=[],
                network_driver="host",
                jail_param=[],
                restart_policy="no",
                persist=False,
                created="2026-01-01T00:00:00.000000Z",
                dataset=dataset,
            )
        )
    assert await build.reconcile(rt) == [cid]
    await images.reconcile(rt)
    assert not await rt.storage.exists(orphan)
    assert not await rt.storage.exists(dataset)
    assert not (root / ".download-x.archive").exists()
    assert (await app_client.get("/containers/list", params={"all": "true"})).json() == []
    # the base image and its dataset are untouched
    assert await rt.storage.exists(base.dataset)
    assert (await app_client.get(f"/images/{base.id}/inspect")).status_code == 200
