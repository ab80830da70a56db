"""Containers: create, list, inspect, update, stop, remove, prune (reference §6).

A container is a record plus a clone of an image snapshot; it is *running*
exactly when a jail named after its id exists, which is always asked of the
host, never stored. Operations on one container are serialised by a lock per
id; different containers proceed in parallel.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from kleened.api.schemas import ContainerConfig, MountPointConfig, PublishedPortConfig
from kleened.engine import resolve, volumes
from kleened.engine.errors import Conflict, EngineError, HostFailure, InvalidInput, NotFound
from kleened.engine.ids import NAME_PATTERN, NAME_RULE, new_id, now_iso
from kleened.engine.runtime import Runtime
from kleened.host import files
from kleened.host.base import HostError, JailError, StorageError
from kleened.store.models import Container, Endpoint, Image, Mount, PublishedPort, Volume

log = logging.getLogger("kleened.containers")

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JAIL_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")
# klee gives up on an HTTP reply after 5 s, so TERM-then-KILL must end sooner.
STOP_TIMEOUT = 3.0


# ---------------------------------------------------------------- validation


def merge_env(base: Sequence[str], over: Sequence[str]) -> list[str]:
    """Reference §6.4: split at the first '=', later entries and `over` win, sorted."""
    merged: dict[str, str] = {}
    for entry in [*base, *over]:
        name, _, value = entry.partition("=")
        merged[name] = value
    return [f"{name}={merged[name]}" for name in sorted(merged)]


def validate_env(env: Sequence[str]) -> None:
    for entry in env:
        name, sep, _ = entry.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise InvalidInput(f"invalid environment variable '{entry}': expected NAME=value")


# Set by kleened itself: a user value would move the jail off its dataset or
# replace the container's command.
RESERVED_JAIL_PARAMS = frozenset({"command", "path", "name", "jid"})


def validate_jail_params(params: Sequence[str]) -> None:
    for param in params:
        name = param.partition("=")[0]
        if not JAIL_PARAM_NAME.match(name):
            raise InvalidInput(f"invalid jail parameter '{param}'")
        if name in RESERVED_JAIL_PARAMS:
            raise InvalidInput(f"invalid jail parameter '{param}': '{name}' is set by kleened")


def validate_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidInput(f"{name} does not match {NAME_RULE}")  # [exact]


def _port(value: str) -> int:
    # "3leet", "", "-1", "*" and 70000 all get the range message (reference §6).
    if not (value.isascii() and value.isdigit()):
        raise InvalidInput("invalid port value (should be in the range 0 - 65535)")
    number = int(value)
    if not 0 <= number <= 65535:
        raise InvalidInput("invalid port value (should be in the range 0 - 65535)")
    return number


def validate_port(port: PublishedPortConfig) -> None:
    """`host_port` is "N" or "N:M" (a range); `container_port` "N" or "N:*"."""
    host = port.host_port.split(":")
    if len(host) > 2:
        raise InvalidInput("could not decode port publishing specification")
    numbers = [_port(p) for p in host]
    if len(numbers) == 2 and numbers[0] > numbers[1]:
        raise InvalidInput("could not decode port publishing specification")
    container = port.container_port.split(":")
    if len(container) > 2:
        raise InvalidInput("could not decode port publishing specification")
    _port(container[0])
    # "N:*" keeps the offset within a host range; "A:B" is an explicit range.
    if len(container) == 2 and container[1] != "*" and _port(container[1]) < int(container[0]):
        raise InvalidInput("could not decode port publishing specification")
    for interface in port.interfaces:
        if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", interface):
            raise InvalidInput(f"invalid interface name '{interface}'")


def effective_user(exec_user: str, container: Container) -> str:
    """Exec user, then the container's `exec.jail_user` parameter, then its user.

    The original applied `exec.jail_user` only to a container's first process
    (reference §7.2, §14.3.3); we apply one rule to every process.
    """
    if exec_user:
        return exec_user
    for param in container.jail_param:
        name, sep, value = param.partition("=")
        if name == "exec.jail_user" and sep and value:
            return value
    return container.user or "root"


# ---------------------------------------------------------------- reading


# A container's fields as the API shows them, besides `public_ports` and `running`.
_STORED_FIELDS = (
    "cmd",
    "created",
    "dataset",
    "env",
    "id",
    "image_id",
    "jail_param",
    "name",
    "network_driver",
    "persist",
    "restart_policy",
    "user",
)


def to_api(container: Container, ports: Sequence[PublishedPort], running: bool) -> dict[str, Any]:
    item = {name: getattr(container, name) for name in _STORED_FIELDS}
    item.update(public_ports=[p.to_api() for p in ports], running=running)
    return item


async def running_jails(rt: Runtime) -> dict[str, int]:
    assert rt.jails is not None
    return {name: jail.jid for name, jail in (await rt.jails.list_running()).items()}


async def list_summaries(rt: Runtime, *, all_: bool) -> list[dict[str, Any]]:
    """One query for the records and one host call for the jails: no per-container work.

    Plain rows, not ORM objects: with a thousand containers, building and
    tracking the objects was most of the listing's time (see benchmarks/).
    """
    jails = await running_jails(rt)
    table = Container.__table__.c
    stored = len(_STORED_FIELDS)
    async with rt.sessions() as session:
        rows = await session.execute(
            select(*(table[name] for name in _STORED_FIELDS), Image.name, Image.tag)
            .outerjoin(Image, Image.id == table.image_id)
            .order_by(table.created.desc())
        )
        port_rows = (
            await session.execute(select(PublishedPort.__table__).order_by(PublishedPort.id))
        ).mappings()
        ports: dict[str, list[dict[str, Any]]] = {}
        for port in port_rows:
            ports.setdefault(port["container_id"], []).append(
                {name: port[name] for name in PublishedPort.API_FIELDS}
            )
        out = []
        for row in rows:
            item = dict(zip(_STORED_FIELDS, row[:stored], strict=False))
            cid = item["id"]
            running = cid in jails
            if not all_ and not running:
                continue
            item.update(
                public_ports=ports.get(cid, []),
                running=running,
                image_name=row[stored] or "",
                image_tag=row[stored + 1] or "",
                jid=jails.get(cid),
            )
            out.append(item)
    return out


async def inspect(rt: Runtime, ident: str) -> dict[str, Any]:
    assert rt.jails is not None
    async with rt.sessions() as session:
        container = await resolve.container(session, ident, "container not found")
        ports = list(
            await session.scalars(
                select(PublishedPort)
                .where(PublishedPort.container_id == container.id)
                .order_by(PublishedPort.id)
            )
        )
        endpoints = list(
            await session.scalars(select(Endpoint).where(Endpoint.container_id == container.id))
        )
        mounts = list(
            await session.scalars(
                select(Mount).where(Mount.container_id == container.id).order_by(Mount.id)
            )
        )
    running = await rt.jails.is_running(container.id)
    return {
        "container": to_api(container, ports, running),
        "container_endpoints": [e.to_api() for e in endpoints],
        "container_mountpoints": [m.to_api() for m in mounts],
    }


async def root_of(rt: Runtime, container: Container) -> Path:
    try:
        return await rt.storage.mountpoint(container.dataset)
    except StorageError as err:
        raise HostFailure(f"container {container.id} has no dataset: {err}") from err


# ---------------------------------------------------------------- create


@dataclass
class _Prepared:
    mounts: list[Mount]
    new_volumes: list[str]


async def _prepare_mounts(
    rt: Runtime, cid: str, root: Path, configs: Sequence[MountPointConfig]
) -> _Prepared:
    """Create mount points and mount records (mounting happens at start, §10.2)."""
    prepared = _Prepared(mounts=[], new_volumes=[])
    seen: set[str] = set()
    try:
        for cfg in configs:
            if not cfg.destination.startswith("/"):
                raise InvalidInput(
                    f"mount destination '{cfg.destination}' must be an absolute path"
                )
            try:
                target = files.safe_join(root, cfg.destination)
            except HostError as err:
                raise InvalidInput(f"invalid mount destination: {err}") from err
            if cfg.destination in seen:
                raise InvalidInput(f"mount destination '{cfg.destination}' is used twice")
            seen.add(cfg.destination)
            if cfg.type == "volume":
                async with rt.sessions() as session:
                    existed = await session.get(Volume, cfg.source)
                volume = await volumes.get_or_create(rt, cfg.source)
                if existed is None:
                    prepared.new_volumes.append(volume.name)
                target.mkdir(parents=True, exist_ok=True)
                await files.populate_volume(target, Path(volume.mountpoint))
            else:
                source = Path(cfg.source)
                if not source.is_absolute():
                    raise InvalidInput(f"nullfs source '{cfg.source}' must be an absolute path")
                try:
                    await files.prepare_mount_target(source, target)
                except HostError as err:
                    raise InvalidInput(str(err)) from err
            prepared.mounts.append(
                Mount(
                    container_id=cid,
                    type=cfg.type,
                    source=cfg.source,
                    destination=cfg.destination,
                    read_only=cfg.read_only,
                )
            )
    except BaseException:
        await _drop_volumes(rt, prepared.new_volumes)
        raise
    return prepared


async def _drop_volumes(rt: Runtime, names: Sequence[str]) -> None:
    for name in names:
        try:
            await volumes.remove(rt, name)
        except EngineError as err:
            log.warning("could not roll back volume %s: %s", name, err)


async def create(rt: Runtime, config: ContainerConfig, *, cid: str | None = None) -> Container:
    """Clone, prepare mounts, store: all of it or nothing (reference §6.3, §14.3.8)."""
    if config.image is None:
        raise InvalidInput("no image given: the 'image' field is required")
    image_ident, snapshot = resolve.split_snapshot(config.image)
    if config.name is not None:
        validate_name(config.name)
    env = config.env or []
    validate_env(env)
    validate_jail_params(config.jail_param or [])
    driver = config.network_driver or "ipnet"
    ports = config.public_ports or []
    if ports and driver in ("host", "disabled"):
        raise InvalidInput(
            f"cannot publish ports of a container using the '{driver}' network driver"
        )
    for port in ports:
        validate_port(port)

    async with rt.sessions() as session:
        image = await resolve.find_image(session, image_ident)
        if image is None:
            raise NotFound(f"no such image '{config.image}'")  # [exact]
        if config.name is not None and await session.scalar(
            select(Container.id).where(Container.name == config.name)
        ):
            raise Conflict(f"container name '{config.name}' is already in use")

    cid = cid or new_id()
    dataset = f"{rt.settings.container_root}/{cid}"
    origin = f"{image.dataset}@{snapshot or 'image'}"
    if snapshot is not None and not await rt.storage.exists(origin):
        raise NotFound(f"no such snapshot '@{snapshot}' in image '{image_ident}'")
    try:
        await rt.storage.clone(origin, dataset)
    except StorageError as err:
        raise HostFailure(f"could not create the container's dataset: {err}") from err

    prepared: _Prepared | None = None
    try:
        root = await rt.storage.mountpoint(dataset)
        prepared = await _prepare_mounts(rt, cid, root, config.mounts or [])
        host_gateway = rt.services.get("host_gateway") or ""
        container = Container(
            id=cid,
            name=config.name,
            image_id=image.id,
            cmd=config.cmd or image.cmd,
            user=config.user or image.user,
            env=merge_env(image.env, env),
            network_driver=driver,
            jail_param=list(config.jail_param or []),
            restart_policy=config.restart_policy or "no",
            persist=bool(config.persist),
            created=now_iso(),
            dataset=dataset,
        )
        async with rt.sessions() as session, session.begin():
            session.add(container)
            await session.flush()
            session.add_all(prepared.mounts)
            session.add_all(
                PublishedPort(
                    container_id=cid,
                    interfaces=p.interfaces or ([host_gateway] if host_gateway else []),
                    host_port=p.host_port,
                    container_port=p.container_port,
                    protocol=p.protocol,
                )
                for p in ports
            )
        return container
    except BaseException as err:
        await _destroy_dataset(rt, dataset)
        if prepared is not None:
            await _drop_volumes(rt, prepared.new_volumes)
        if isinstance(err, IntegrityError):
            raise Conflict(f"container name '{config.name}' is already in use") from err
        raise


async def _destroy_dataset(rt: Runtime, dataset: str) -> None:
    try:
        if await rt.storage.exists(dataset):
            await rt.storage.destroy(dataset)
    except StorageError as err:
        log.error("could not destroy %s while rolling back: %s", dataset, err)


# ---------------------------------------------------------------- host-side teardown


async def cleanup(rt: Runtime, container: Container) -> None:
    """Reference §6.6: undo what exists only while running. Idempotent."""
    assert rt.mounts is not None
    if rt.network is not None:
        try:
            await rt.network.container_stopped(container)
        except EngineError as err:
            log.warning("network cleanup of %s: %s", container.id, err)
    try:
        root = await rt.storage.mountpoint(container.dataset)
    except StorageError:
        return
    for target in await rt.mounts.mounted_under(root):
        if os.path.normpath(target) == os.path.normpath(root):
            continue  # the dataset itself (a ZFS or overlay mount), not the jail's
        try:
            await rt.mounts.unmount(target)
        except HostError as err:
            log.warning("could not unmount %s: %s", target, err)


# ---------------------------------------------------------------- stop, remove, prune


async def stop(rt: Runtime, ident: str) -> str:
    assert rt.jails is not None
    async with rt.sessions() as session:
        container = await resolve.container(session, ident, "container not found")
    async with rt.lock(container.id):
        running = await rt.jails.is_running(container.id)
        if running:
            try:
                await rt.jails.stop(container.id, timeout=STOP_TIMEOUT)
            except JailError as err:
                await cleanup(rt, container)
                raise HostFailure(str(err)) from err
        await cleanup(rt, container)
    if not running:
        raise NotFound("container not running")  # [exact]
    return container.id


async def remove(rt: Runtime, ident: str) -> str:
    assert rt.jails is not None
    async with rt.sessions() as session:
        container = await resolve.container(session, ident, "no such container")  # [exact]
    async with rt.lock(container.id):
        if await rt.jails.is_running(container.id):
            raise Conflict("you cannot remove a running container")  # [exact]
        await _remove_stopped(rt, container)
    return container.id


async def _remove_stopped(rt: Runtime, container: Container) -> None:
    await cleanup(rt, container)
    if rt.network is not None:
        await rt.network.container_removed(container)
    # The record goes only once the dataset is gone, so a failure leaves a
    # container that can be removed again rather than an orphaned dataset.
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Container).where(Container.id == container.id))
        try:
            if await rt.storage.exists(container.dataset):
                await rt.storage.destroy(container.dataset)
        except StorageError as err:
            raise HostFailure(f"could not remove container {container.id}: {err}") from err


async def prune(rt: Runtime) -> list[str]:
    jails = await running_jails(rt)
    async with rt.sessions() as session:
        candidates = list(
            await session.scalars(
                select(Container).where(Container.persist.is_(False)).order_by(Container.created)
            )
        )
    removed = []
    for container in candidates:
        if container.id in jails:
            continue
        async with rt.lock(container.id):
            assert rt.jails is not None
            if await rt.jails.is_running(container.id):
                continue
            try:
                await _remove_stopped(rt, container)
            except EngineError as err:
                log.warning("prune: could not remove %s: %s", container.id, err)
                continue
        removed.append(container.id)
    return removed


# ---------------------------------------------------------------- update


UPDATABLE = ("name", "user", "env", "cmd", "jail_param", "persist", "restart_policy")


def _param_changes(old: Sequence[str], new: Sequence[str]) -> list[str]:
    """Parameters that are new or changed; `jail -m` gets only these (§14.1.1)."""
    before = set(old)
    return [p for p in new if p not in before]


async def update(rt: Runtime, ident: str, config: ContainerConfig) -> str:
    assert rt.jails is not None
    async with rt.sessions() as session:
        container = await resolve.container(session, ident, f"no such container '{ident}'")
    changes = {f: getattr(config, f) for f in UPDATABLE if getattr(config, f) is not None}
    if "name" in changes:
        validate_name(changes["name"])
    if "env" in changes:
        validate_env(changes["env"])
    if "jail_param" in changes:
        validate_jail_params(changes["jail_param"])
    async with rt.lock(container.id):
        async with rt.sessions() as session:
            current = await session.get(Container, container.id)
            if current is None:
                raise NotFound(f"no such container '{ident}'")
            changed = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if not changed:
                return current.id
            if "name" in changed and await session.scalar(
                select(Container.id).where(Container.name == changed["name"])
            ):
                raise Conflict(f"container name '{changed['name']}' is already in use")
        if "jail_param" in changed and await rt.jails.is_running(current.id):
            live = _param_changes(current.jail_param, changed["jail_param"])
            if live:
                try:
                    await rt.jails.modify(current.id, live)
                except JailError as err:
                    raise Conflict(
                        f"an error ocurred while updating the container: {err}"  # [exact] (sic)
                    ) from err
        async with rt.sessions() as session, session.begin():
            row = await session.get(Container, current.id)
            assert row is not None
            for key, value in changed.items():
                setattr(row, key, value)
        return current.id
