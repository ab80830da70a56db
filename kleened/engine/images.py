"""Images: records plus datasets with an `@image` snapshot (reference §9.1, §9.6).

Nametags are unique in effect: saving an image with a name:tag that another
image has untags the other one. An image whose snapshots have clones
(containers, child images) cannot be removed.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kleened.engine import resolve
from kleened.engine.errors import Conflict, HostFailure, InvalidInput, NotFound
from kleened.engine.ids import now_iso
from kleened.engine.runtime import Runtime
from kleened.host.base import StorageError
from kleened.store.models import Container, Image

log = logging.getLogger("kleened.images")

# Docs: letters, digits, '_', '.', '-'; no leading '.' or '-'; at most 128
# characters. '/' is allowed inside names (the docs show 13.2-STABLE/base).
NAMETAG_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$")
BASE_CMD = ["/bin/sh", "/etc/rc"]


def parse_nametag(nametag: str) -> tuple[str, str]:
    name, tag = resolve.split_nametag(nametag)
    for part in (name, tag):
        if part and (not NAMETAG_PART.match(part) or ".." in part or part.endswith("/")):
            raise InvalidInput(
                f"invalid name:tag '{nametag}': use letters, digits, '_', '.', '-' "
                "(not first) and at most 128 characters"
            )
    return name, tag


async def untag_others(session: AsyncSession, image_id: str, name: str, tag: str) -> None:
    if name or tag:
        await session.execute(
            update(Image)
            .where(Image.name == name, Image.tag == tag, Image.id != image_id)
            .values(name="", tag="")
        )


async def save(rt: Runtime, image: Image) -> None:
    """Store a new image, untagging any other image with its name:tag, in one transaction."""
    async with rt.sessions() as session, session.begin():
        await untag_others(session, image.id, image.name, image.tag)
        session.add(image)


async def list_all(rt: Runtime) -> list[Image]:
    async with rt.sessions() as session:
        return list(await session.scalars(select(Image).order_by(Image.created.desc())))


async def get(rt: Runtime, ident: str, message: str = "image not found") -> Image:
    async with rt.sessions() as session:
        image = await resolve.find_image(session, ident)
    if image is None:
        raise NotFound(message)
    return image


async def tag(rt: Runtime, ident: str, nametag: str) -> str:
    image = await get(rt, ident)
    name, tag_ = parse_nametag(nametag)
    async with rt.lock(f"image:{image.id}"), rt.sessions() as session, session.begin():
        await untag_others(session, image.id, name, tag_)
        await session.execute(update(Image).where(Image.id == image.id).values(name=name, tag=tag_))
    return image.id


async def _dependents(rt: Runtime, image: Image) -> tuple[list[str], list[str]]:
    """(container ids, image ids) cloned from any snapshot of the image."""
    clones = await rt.storage.clones_of(image.dataset)
    containers = [
        c.rsplit("/", 1)[1] for c in clones if c.startswith(rt.settings.container_root + "/")
    ]
    images = [c.rsplit("/", 1)[1] for c in clones if c.startswith(rt.settings.image_root + "/")]
    return sorted(containers), sorted(images)


async def remove(rt: Runtime, ident: str) -> str:
    async with rt.sessions() as session:
        image = await resolve.find_image(session, ident)
        if image is None:
            raise NotFound(f"Error: No such image: {ident}\n")  # [exact]
        users = list(
            await session.scalars(
                select(Container.id).where(Container.image_id == image.id).order_by(Container.id)
            )
        )
    async with rt.lock(f"image:{image.id}"):
        try:
            containers, images = await _dependents(rt, image)
        except StorageError as err:
            raise HostFailure(str(err)) from err
        containers = sorted(set(containers) | set(users))
        if containers:
            raise Conflict(
                f"could not remove image {image.id} since it is used for containers:\n"
                + "\n".join(containers)
            )
        if images:
            raise Conflict(
                f"could not remove image {image.id} since it is used for images:\n"
                + "\n".join(images)
            )
        await _destroy(rt, image)
    return image.id  # the full id, not the identifier as given (§14.1.3)


async def _destroy(rt: Runtime, image: Image) -> None:
    """Dataset first; the record goes only when the dataset is gone (§14.5.6)."""
    origin = None
    try:
        if await rt.storage.exists(image.dataset):
            origin = await rt.storage.origin(image.dataset)
            await rt.storage.destroy(image.dataset)
    except StorageError as err:
        raise HostFailure(f"could not remove image dataset: {err}") from err
    async with rt.sessions() as session, session.begin():
        row = await session.get(Image, image.id)
        if row is not None:
            await session.delete(row)
    # A zfs-clone base image's origin snapshot lives outside our root and was
    # created for this image alone (§14.5.4).
    if (
        origin
        and origin.endswith(f"@{image.id}")
        and not origin.startswith(rt.settings.kleene_root + "/")
    ):
        try:
            await rt.storage.destroy_snapshot(origin)
        except StorageError as err:
            log.warning("could not destroy origin snapshot %s: %s", origin, err)


async def prune(rt: Runtime, *, all_: bool) -> list[str]:
    """Remove unused images (untagged ones, or all with `all_`) until none is left."""
    removed: list[str] = []
    while True:
        async with rt.sessions() as session:
            used_by_containers = set(await session.scalars(select(Container.image_id)))
        progress = False
        for image in await list_all(rt):
            if image.id in used_by_containers or (not all_ and (image.name or image.tag)):
                continue
            try:
                if await rt.storage.exists(image.dataset) and await rt.storage.clones_of(
                    image.dataset
                ):
                    continue
                async with rt.lock(f"image:{image.id}"):
                    await _destroy(rt, image)
            except (StorageError, HostFailure) as err:
                log.warning("prune: could not remove image %s: %s", image.id, err)
                continue
            removed.append(image.id)
            progress = True
        if not progress:
            return removed


async def finish(rt: Runtime, image_id: str, dataset: str, nametag: str) -> Image:
    """Snapshot a filled base-image dataset as `@image` and store its record."""
    name, tag_ = parse_nametag(nametag)
    await rt.storage.snapshot(f"{dataset}@image")
    image = Image(
        id=image_id,
        name=name,
        tag=tag_,
        cmd=list(BASE_CMD),
        env=[],
        user="root",
        instructions=[],
        buildargs={},
        created=now_iso(),
        dataset=dataset,
    )
    await save(rt, image)
    return image


async def reconcile(rt: Runtime) -> None:
    """At start-up: undo image creations and builds that a crash cut short.

    An image dataset without a record can only come from an interrupted
    `/images/create` or build (the record is always written last), so it is
    destroyed unless something was cloned from it. Half-downloaded archives
    (`.download-*` in the root's directory) go too.
    """
    async with rt.sessions() as session:
        known = {image.dataset for image in await session.scalars(select(Image))}
    try:
        datasets = await rt.storage.list_children(rt.settings.image_root)
    except StorageError as err:
        log.warning("could not list image datasets: %s", err)
        return
    for dataset in datasets:
        if dataset in known:
            continue
        try:
            if await rt.storage.clones_of(dataset):
                log.warning("image dataset %s has no record but has clones; kept", dataset)
                continue
            origin = await rt.storage.origin(dataset)
            await rt.storage.destroy(dataset)
            log.warning("removed image dataset %s left by an interrupted operation", dataset)
            image_id = dataset.rsplit("/", 1)[1]
            # zfs-clone's origin snapshot outside our root was made for this image alone.
            if (
                origin
                and origin.endswith(f"@{image_id}")
                and not origin.startswith(rt.settings.kleene_root + "/")
            ):
                await rt.storage.destroy_snapshot(origin)
        except StorageError as err:
            log.warning("could not remove orphaned image dataset %s: %s", dataset, err)
    try:
        workdir = await rt.storage.mountpoint(rt.settings.kleene_root)
    except StorageError:
        return
    for leftover in workdir.glob(".download-*.archive"):
        leftover.unlink(missing_ok=True)
