"""Execution instances: one process to start in a container (reference §7).

Instances live in memory only. The first instance started on a stopped
container creates its jail (`start_container`); later ones join it. When a
process ends, the instance finds out whether its container is still running,
tears down host state if not, and tells its subscribers with the original's
exact closing message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from kleened.engine import containers, resolve
from kleened.engine.errors import Conflict, EngineError, HostFailure, NotFound
from kleened.engine.ids import new_id
from kleened.engine.runtime import Runtime
from kleened.host import files
from kleened.host.base import BeforeCommand, ExecSpec, HostError, JailSpec, Process
from kleened.store.models import Container, Mount, Volume

log = logging.getLogger("kleened.exec")

# Created-but-never-started instances are forgotten after this (§14.3.12).
UNSTARTED_TTL = 600.0
# How long a stop waits for the instance's own process (§7.5).
STOP_WAIT = 5.0
NETWORK_MODES = {"host": "host", "disabled": "disabled", "ipnet": "new", "vnet": "new"}


def not_found(exec_id: str) -> NotFound:
    return NotFound(f"could not find execution instance matching '{exec_id}'")  # [exact]


@dataclass
class ExecInstance:
    id: str
    container_id: str
    cmd: list[str]
    user: str
    env: list[str]
    tty: bool
    created: float = field(default_factory=time.monotonic)
    process: Process | None = None
    first_process: bool = False  # this process created the jail
    started: bool = False
    exit_code: int | None = None
    closing_message: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Set-up warnings (failed mounts, ...) to show to attached clients first.
    warnings: list[str] = field(default_factory=list)
    # Build steps: stdin already at EOF, so a prompt fails instead of hanging (§14.4.10).
    stdin_eof: bool = False


class ExecRegistry:
    def __init__(self) -> None:
        self._instances: dict[str, ExecInstance] = {}

    def add(self, instance: ExecInstance) -> None:
        self._expire()
        self._instances[instance.id] = instance

    def get(self, exec_id: str) -> ExecInstance:
        self._expire()
        instance = self._instances.get(exec_id)
        if instance is None:
            raise not_found(exec_id)
        return instance

    def discard(self, exec_id: str) -> None:
        self._instances.pop(exec_id, None)

    def running_in(self, container_id: str) -> list[ExecInstance]:
        return [
            i
            for i in self._instances.values()
            if i.container_id == container_id and i.process is not None
        ]

    def _expire(self) -> None:
        cutoff = time.monotonic() - UNSTARTED_TTL
        for key in [k for k, i in self._instances.items() if not i.started and i.created < cutoff]:
            del self._instances[key]


def registry(rt: Runtime) -> ExecRegistry:
    return rt.services.setdefault("execs", ExecRegistry())


async def create(
    rt: Runtime,
    container_ident: str,
    cmd: Sequence[str],
    user: str,
    env: Sequence[str],
    tty: bool,
    *,
    stdin_eof: bool = False,
) -> ExecInstance:
    containers.validate_env(env)
    async with rt.sessions() as session:
        container = await resolve.container(session, container_ident, "container not found")
    instance = ExecInstance(
        id=new_id(),
        container_id=container.id,
        cmd=list(cmd),
        user=user,
        env=list(env),
        tty=tty,
        stdin_eof=stdin_eof,
    )
    registry(rt).add(instance)
    return instance


# ---------------------------------------------------------------- starting


async def _mount_all(rt: Runtime, container: Container, root: Path) -> list[str]:
    """Mount the container's mount records; failures become warnings (§8.3)."""
    assert rt.mounts is not None
    warnings = []
    async with rt.sessions() as session:
        mounts = list(
            await session.scalars(
                select(Mount).where(Mount.container_id == container.id).order_by(Mount.id)
            )
        )
        vols = {v.name: v for v in await session.scalars(select(Volume))}
    for mount in mounts:
        try:
            if mount.type == "volume":
                volume = vols.get(mount.source)
                if volume is None:
                    raise HostError(
                        f"could not mount volume {mount.source} into container {container.id}"
                    )
                source = Path(volume.mountpoint)
            else:
                source = Path(mount.source)
            target = files.safe_join(root, mount.destination)
            if await rt.mounts.is_mounted(target):
                await rt.mounts.unmount(target)
            await rt.mounts.mount_nullfs(source, target, read_only=mount.read_only)
        except HostError as err:
            warnings.append(f"could not mount {mount.source} at {mount.destination}: {err}\n")
    return warnings


async def _start_jail(
    rt: Runtime,
    container: Container,
    instance: ExecInstance,
    cmd: list[str],
    user: str,
    env: list[str],
) -> Process:
    assert rt.jails is not None
    root = await containers.root_of(rt, container)
    warnings = await _mount_all(rt, container, root)
    network_params: list[str] = []
    before_command: BeforeCommand | None = None
    if rt.network is not None:
        try:
            prepared = await rt.network.container_starting(container)
        except BaseException:  # nothing of the start may stay behind (mounts)
            await containers.cleanup(rt, container)
            raise
        network_params = prepared.jail_params
        warnings.extend(prepared.warnings)
        # Linux: the veth set-up runs once the jail's namespaces exist.
        before_command = prepared.before_command
    instance.warnings.extend(warnings)
    spec = JailSpec(
        name=container.id,
        path=root,
        command=cmd,
        user=user,
        env=env,
        jail_params=container.jail_param,
        tty=instance.tty,
        stdin_eof=instance.stdin_eof,
        network_params=network_params,
        network_mode=NETWORK_MODES[container.network_driver],  # type: ignore[arg-type]
    )
    try:
        process = await rt.jails.start(spec, before_command=before_command)
    except HostError as err:
        await containers.cleanup(rt, container)
        raise HostFailure(str(err)) from err
    if rt.network is not None:
        await rt.network.container_started(container, process)
    watch_jail(rt, container)
    return process


async def start(rt: Runtime, exec_id: str, *, start_container: bool) -> ExecInstance:
    """Start the instance's process (§7.3); errors carry the original's exact reasons."""
    assert rt.jails is not None
    instance = registry(rt).get(exec_id)
    if instance.started:
        raise Conflict("executable already started")  # [exact]
    instance.started = True
    try:
        async with rt.lock(instance.container_id):
            async with rt.sessions() as session:
                container = await session.get(Container, instance.container_id)
            if container is None:
                raise NotFound("container not found")  # [exact]
            cmd = instance.cmd or container.cmd
            user = containers.effective_user(instance.user, container)
            env = containers.merge_env(container.env, instance.env)
            if not cmd:
                raise Conflict("no command given and the container has none")
            if await rt.jails.is_running(container.id):
                try:
                    process = await rt.jails.exec(
                        ExecSpec(
                            name=container.id,
                            command=cmd,
                            user=user,
                            env=env,
                            tty=instance.tty,
                            stdin_eof=instance.stdin_eof,
                        )
                    )
                except HostError as err:
                    raise HostFailure(str(err)) from err
            elif start_container:
                process = await _start_jail(rt, container, instance, cmd, user, env)
                instance.first_process = True
            else:
                raise Conflict("cannot start container when 'start_container' is false.")  # [exact]
    except BaseException:
        registry(rt).discard(exec_id)
        raise
    instance.process = process
    asyncio.get_running_loop().create_task(_await_end(rt, instance), name=f"exec-{exec_id}")
    return instance


async def _await_end(rt: Runtime, instance: ExecInstance) -> None:
    """§7.4: learn the status, check the container, clean up, tell subscribers."""
    assert instance.process is not None and rt.jails is not None
    code = await instance.process.wait()
    instance.exit_code = code
    try:
        running = await rt.jails.is_running(instance.container_id)
        if not running:
            await cleanup_by_id(rt, instance.container_id)
    except Exception:  # the message must still reach the client
        log.exception("end of exec %s", instance.id)
        running = False
    if running:
        instance.closing_message = f"{instance.id} has exited with exit-code {code}"
    else:
        instance.closing_message = (
            f"executable {instance.id} and its container exited with exit-code {code}"
        )
    registry(rt).discard(instance.id)
    instance.done.set()


async def cleanup_by_id(rt: Runtime, container_id: str) -> None:
    async with rt.sessions() as session:
        container = await session.get(Container, container_id)
    if container is not None:
        await containers.cleanup(rt, container)


def watch_jail(rt: Runtime, container: Container) -> None:
    """Notice a jail that ends by itself and tear down its host state (§14.3.5)."""
    assert rt.jails is not None
    watchers: dict[str, asyncio.Task] = rt.services.setdefault("jail_watchers", {})
    if container.id in watchers and not watchers[container.id].done():
        return

    async def watch() -> None:
        assert rt.jails is not None
        await rt.jails.wait_stopped(container.id)
        async with rt.lock(container.id):
            if not await rt.jails.is_running(container.id):
                await cleanup_by_id(rt, container.id)
        watchers.pop(container.id, None)

    watchers[container.id] = asyncio.get_running_loop().create_task(
        watch(), name=f"watch-{container.id}"
    )


async def stop_watchers(rt: Runtime) -> None:
    watchers: dict[str, asyncio.Task] = rt.services.get("jail_watchers", {})
    for task in watchers.values():
        task.cancel()
    for task in list(watchers.values()):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# ---------------------------------------------------------------- output


async def output(instance: ExecInstance) -> AsyncIterator[bytes]:
    """Set-up warnings, then the process's output until it ends."""
    assert instance.process is not None
    for warning in instance.warnings:
        yield warning.encode()
    stream = instance.process.subscribe()
    try:
        async for chunk in stream:
            yield chunk
    finally:  # a reader that stops must not hold the process
        await stream.aclose()


# ---------------------------------------------------------------- stopping


async def stop(rt: Runtime, exec_id: str, *, force: bool, stop_container: bool) -> str:
    """POST /exec/{id}/stop (§7.5). The instance is forgotten after any attempt."""
    instance = registry(rt).get(exec_id)
    try:
        if instance.process is None:
            raise NotFound("execution instance have not been started")  # [exact] (sic)
        if stop_container:
            # NotFound: it ended on its own meanwhile; the wait below settles it.
            with contextlib.suppress(NotFound):
                await containers.stop(rt, instance.container_id)
        else:
            try:
                if force:
                    instance.process.kill()
                else:
                    instance.process.terminate()
            except ProcessLookupError:
                pass
            except OSError as err:
                raise HostFailure(f"error closing process: {err}") from err  # [exact prefix]
        try:
            await asyncio.wait_for(instance.done.wait(), STOP_WAIT)
        except TimeoutError as err:
            raise HostFailure("timed out while waiting for jail to stop") from err  # [exact]
    finally:
        registry(rt).discard(exec_id)
    return exec_id


async def detach(rt: Runtime, instance: ExecInstance) -> None:
    """An attached client went away (§5.2).

    A process started with jexec gets SIGTERM. For the container's first
    process the original only killed jail(8), so the jailed command kept running
    and the container stayed up; klee's users rely on that, so we leave it
    running too.
    """
    if instance.done.is_set() or instance.process is None or instance.first_process:
        return
    with contextlib.suppress(ProcessLookupError, OSError):
        instance.process.terminate()


async def start_on_startup_containers(rt: Runtime) -> None:
    """restart_policy on-startup: started at daemon start, oldest first (§6.9).

    Containers that are already running (jails survive a daemon restart) are
    left alone; the original ran their command a second time.
    """
    assert rt.jails is not None
    running = await rt.jails.list_running()
    async with rt.sessions() as session:
        candidates = list(
            await session.scalars(
                select(Container)
                .where(Container.restart_policy == "on-startup")
                .order_by(Container.created)
            )
        )
    for container in candidates:
        if container.id in running:
            continue
        try:
            instance = await create(rt, container.id, [], "", [], False)
            await start(rt, instance.id, start_container=True)
        except EngineError as err:
            log.error("Could not start container %s: %s", container.id, err)


async def reconcile(rt: Runtime) -> None:
    """Compare the store with the host at start-up (§13.3).

    Running jails are adopted (watched, so their end is noticed); containers
    whose jail is gone get their leftover mounts removed; datasets that no
    record owns are reported.
    """
    assert rt.jails is not None
    running = await rt.jails.list_running()
    async with rt.sessions() as session:
        records = list(await session.scalars(select(Container)))
    known = set()
    for container in records:
        known.add(container.dataset)
        if container.id in running:
            watch_jail(rt, container)
        else:
            await containers.cleanup(rt, container)
    try:
        datasets = await rt.storage.list_children(rt.settings.container_root)
    except HostError:
        datasets = []
    for dataset in datasets:
        if dataset not in known:
            log.warning("dataset %s has no container record", dataset)
