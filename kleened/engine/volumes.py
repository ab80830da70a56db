"""Volumes: a dataset under <kleene_root>/volumes plus a record (reference §10)."""

from __future__ import annotations

from sqlalchemy import delete, select

from kleened.engine.errors import Conflict, HostFailure, InvalidInput, NotFound
from kleened.engine.ids import VOLUME_NAME_PATTERN, now_iso
from kleened.engine.runtime import Runtime
from kleened.host.base import StorageError
from kleened.store.models import Mount, Volume

NO_SUCH_VOLUME = "No such volume"  # [exact]


def validate_name(name: str) -> None:
    if not VOLUME_NAME_PATTERN.match(name):
        raise InvalidInput(f"{name} does not match [a-zA-Z0-9][a-zA-Z0-9_.-]+$")


async def get_or_create(rt: Runtime, name: str) -> Volume:
    """Create the volume, or return it unchanged if it exists (the original's idempotence).

    The dataset is made first and the record stored after it; if storing fails
    the dataset is destroyed again, so neither exists without the other.
    """
    validate_name(name)
    async with rt.lock(f"volume:{name}"):
        async with rt.sessions() as session:
            existing = await session.get(Volume, name)
            if existing is not None:
                return existing
        dataset = f"{rt.settings.volume_root}/{name}"
        try:
            await rt.storage.create(dataset)
            mountpoint = await rt.storage.mountpoint(dataset)
        except StorageError as err:
            raise HostFailure(f"could not create volume {name}: {err}") from err
        volume = Volume(name=name, dataset=dataset, mountpoint=str(mountpoint), created=now_iso())
        try:
            async with rt.sessions() as session, session.begin():
                session.add(volume)
        except BaseException:
            await rt.storage.destroy(dataset)
            raise
        return volume


async def list_all(rt: Runtime) -> list[Volume]:
    async with rt.sessions() as session:
        rows = await session.scalars(select(Volume).order_by(Volume.created.desc()))
        return list(rows)


async def _mounts_of(session, name: str) -> list[Mount]:  # type: ignore[no-untyped-def]
    rows = await session.scalars(
        select(Mount).where(Mount.type == "volume", Mount.source == name).order_by(Mount.id)
    )
    return list(rows)


async def inspect(rt: Runtime, name: str) -> tuple[Volume, list[Mount]]:
    async with rt.sessions() as session:
        volume = await session.get(Volume, name)
        if volume is None:
            raise NotFound(NO_SUCH_VOLUME)
        return volume, await _mounts_of(session, name)


async def _destroy(rt: Runtime, volume: Volume) -> None:
    """Dataset first, then the record: a failed destroy leaves the volume usable."""
    try:
        if await rt.storage.exists(volume.dataset):
            await rt.storage.destroy(volume.dataset)
    except StorageError as err:
        raise HostFailure(f"could not remove volume {volume.name}: {err}") from err
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Volume).where(Volume.name == volume.name))


async def remove(rt: Runtime, name: str) -> str:
    """Remove a volume that no container uses.

    The original silently unmounted it from under running containers; we refuse
    instead (its own docs promise that). klee only parses 200/404/500 here, so
    the refusal is reported as 404 by the router, with a message that says why.
    """
    async with rt.lock(f"volume:{name}"):
        async with rt.sessions() as session:
            volume = await session.get(Volume, name)
            if volume is None:
                raise NotFound(NO_SUCH_VOLUME)
            users = sorted({m.container_id for m in await _mounts_of(session, name)})
        if users:
            raise Conflict(f"volume '{name}' is in use by container(s): {', '.join(users)}")
        await _destroy(rt, volume)
        return name


async def prune(rt: Runtime) -> list[str]:
    """Remove every volume no mount record refers to; returns their names."""
    async with rt.sessions() as session:
        used = set(await session.scalars(select(Mount.source).where(Mount.type == "volume")))
        candidates = [v for v in await session.scalars(select(Volume).order_by(Volume.created))]
    removed = []
    for volume in candidates:
        if volume.name in used:
            continue
        async with rt.lock(f"volume:{volume.name}"):
            try:
                await _destroy(rt, volume)
            except HostFailure:
                continue  # reported in the log by the caller's next list; not pruned
        removed.append(volume.name)
    return removed
