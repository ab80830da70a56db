"""Volume endpoints in-process: bodies, status codes and messages (reference §3.15-3.19)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from kleened.store.models import Container, Image, Mount


def volume_dir(client, name: str) -> Path:
    settings = client.app.state.settings
    return settings.dir_storage_base / settings.volume_root / name


async def test_create_list_inspect_remove(app_client):
    r = await app_client.post("/volumes/create", json={"name": "v1"})
    assert (r.status_code, r.json()) == (201, {"id": "v1"})
    assert volume_dir(app_client, "v1").is_dir()

    listed = (await app_client.get("/volumes/list")).json()
    assert [v["name"] for v in listed] == ["v1"]
    v = listed[0]
    assert v["dataset"] == "kleene/volumes/v1"
    assert v["mountpoint"] == str(volume_dir(app_client, "v1"))
    assert datetime.strptime(v["created"], "%Y-%m-%dT%H:%M:%S.%fZ")

    r = await app_client.get("/volumes/v1/inspect")
    assert r.status_code == 200
    assert r.json() == {"volume": v, "mountpoints": []}

    r = await app_client.delete("/volumes/v1")
    assert (r.status_code, r.json()) == (200, {"id": "v1"})
    assert not volume_dir(app_client, "v1").exists()
    assert (await app_client.get("/volumes/list")).json() == []


async def test_list_is_newest_first(app_client):
    for name in ("a1", "b2", "c3"):
        await app_client.post("/volumes/create", json={"name": name})
    assert [v["name"] for v in (await app_client.get("/volumes/list")).json()] == ["c3", "b2", "a1"]


async def test_create_existing_returns_it_unchanged(app_client):
    await app_client.post("/volumes/create", json={"name": "same"})
    (volume_dir(app_client, "same") / "keep").write_text("data")
    before = (await app_client.get("/volumes/same/inspect")).json()
    r = await app_client.post("/volumes/create", json={"name": "same"})
    assert (r.status_code, r.json()) == (201, {"id": "same"})
    assert (await app_client.get("/volumes/same/inspect")).json() == before
    assert (volume_dir(app_client, "same") / "keep").read_text() == "data"


@pytest.mark.parametrize("path", ["/volumes/nope/inspect"])
async def test_unknown_volume_inspect(app_client, path):
    r = await app_client.get(path)
    assert (r.status_code, r.json()) == (404, {"message": "No such volume"})


async def test_unknown_volume_remove(app_client):
    r = await app_client.delete("/volumes/nope")
    assert (r.status_code, r.json()) == (404, {"message": "No such volume"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            "invalid json",
        ),
        ({"json": {}}, "Missing field: name"),
        ({"json": {"name": 5}}, "Invalid string. Got: integer"),
        ({"json": {"name": None}}, "null value where string expected"),
        ({"json": ["name"]}, "Invalid object. Got: array"),
        ({"json": {"name": "../escape"}}, "does not match"),
        ({"json": {"name": "a/b"}}, "does not match"),
        ({"json": {"name": "x"}}, "does not match"),
        ({"json": {"name": "-dash"}}, "does not match"),
    ],
)
async def test_bad_create_requests_change_nothing(app_client, kwargs, message):
    base = volume_dir(app_client, "x").parent
    before = sorted(p.name for p in base.iterdir())
    r = await app_client.post("/volumes/create", **kwargs)
    # klee's parser accepts only 201 and 500 for this endpoint (never 422).
    assert r.status_code == 500
    assert message in r.json()["message"]
    assert (await app_client.get("/volumes/list")).json() == []
    assert sorted(p.name for p in base.iterdir()) == before


async def test_unknown_fields_are_ignored(app_client):
    r = await app_client.post("/volumes/create", json={"name": "ok1", "driver": "x"})
    assert r.status_code == 201


async def test_unknown_route_is_json_404(app_client):
    for method, path in (("GET", "/nope"), ("POST", "/volumes/list"), ("PUT", "/volumes/create")):
        r = await app_client.request(method, path)
        assert (r.status_code, r.json()) == (404, {"message": "not found"})


async def _add_user(app_client, volume: str) -> None:
    """A container record whose mount uses the volume (no host work needed)."""
    async with app_client.app.state.runtime.sessions() as session, session.begin():
        await session.execute(
            insert(Image).values(
                id="aaaaaaaaaaaa",
                name="base",
                tag="latest",
                created="2024-01-01T00:00:00.000000Z",
                dataset="kleene/image/aaaaaaaaaaaa",
                cmd=[],
                env=[],
                instructions=[],
                buildargs={},
                user="",
            )
        )
        await session.execute(
            insert(Container).values(
                id="cccccccccccc",
                name="c1",
                image_id="aaaaaaaaaaaa",
                created="2024-01-01T00:00:00.000000Z",
                dataset="kleene/container/cccccccccccc",
                cmd=[],
                env=[],
                jail_param=[],
                user="",
                network_driver="host",
                restart_policy="no",
                persist=False,
            )
        )
        await session.execute(
            insert(Mount).values(
                container_id="cccccccccccc",
                type="volume",
                source=volume,
                destination="/data",
                read_only=False,
            )
        )


async def test_volume_in_use_is_not_removed_or_pruned(app_client):
    await app_client.post("/volumes/create", json={"name": "used"})
    await app_client.post("/volumes/create", json={"name": "free"})
    await _add_user(app_client, "used")

    inspect = (await app_client.get("/volumes/used/inspect")).json()
    assert inspect["mountpoints"] == [
        {
            "container_id": "cccccccccccc",
            "destination": "/data",
            "read_only": False,
            "source": "used",
            "type": "volume",
        }
    ]
    r = await app_client.delete("/volumes/used")
    assert r.status_code == 404  # klee parses only 200/404/500 here
    assert "in use" in r.json()["message"] and "cccccccccccc" in r.json()["message"]
    assert volume_dir(app_client, "used").is_dir()

    r = await app_client.post("/volumes/prune")
    assert (r.status_code, r.json()) == (200, ["free"])
    assert [v["name"] for v in (await app_client.get("/volumes/list")).json()] == ["used"]
    assert not volume_dir(app_client, "free").exists()


async def test_prune_with_nothing_to_do(app_client):
    r = await app_client.post("/volumes/prune")
    assert (r.status_code, r.json()) == (200, [])


async def test_failed_host_step_leaves_no_record(app_client):
    # A regular file where the volume's directory must go makes the dataset
    # creation fail for real.
    blocker = volume_dir(app_client, "blocked")
    blocker.write_text("not a directory")
    r = await app_client.post("/volumes/create", json={"name": "blocked"})
    assert r.status_code == 500
    assert "could not create volume blocked" in r.json()["message"]
    assert (await app_client.get("/volumes/list")).json() == []


async def test_failed_record_leaves_no_directory(app_client):
    # A trigger makes the INSERT itself fail, after the dataset was created.
    db_path = app_client.app.state.runtime.services["db_path"]
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER no_volumes BEFORE INSERT ON volumes "
            "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
    r = await app_client.post("/volumes/create", json={"name": "norecord"})
    assert r.status_code == 500
    assert "Traceback" not in r.text
    assert not volume_dir(app_client, "norecord").exists()


async def test_database_file_is_private_and_in_wal_mode(app_client):
    db_path = app_client.app.state.runtime.services["db_path"]
    assert db_path.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "images",
        "containers",
        "networks",
        "endpoints",
        "volumes",
        "mounts",
        "published_ports",
        "alembic_version",
    } <= tables


async def test_openapi_describes_volume_routes(app_client):
    spec = (await app_client.get("/openapi.json")).json()
    for path in (
        "/volumes/create",
        "/volumes/list",
        "/volumes/{volume_name}/inspect",
        "/volumes/{volume_name}",
        "/volumes/prune",
    ):
        assert path in spec["paths"]
    assert set(spec["components"]["schemas"]["Volume"]["properties"]) == {
        "name",
        "dataset",
        "mountpoint",
        "created",
    }
