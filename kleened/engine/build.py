"""Building images from a Dockerfile (reference §9.3-§9.5, with §14.4 fixed).

A build is a *build container* with the image's id, named `builder_<id>`,
cloned from the FROM image. Every executing step (WORKDIR's mkdir, COPY's
mkdir and cp, RUN) is an exec instance on it, started with
`start_container`, so it creates the jail when none runs, exactly like the
original. Successful RUN and COPY steps are followed by a snapshot of the
container's dataset. At the end the dataset is renamed into the image root
(keeping its snapshots and its clone origin), gets `@image`, and the container
record is replaced by the image record in one transaction.

Differences from the original, all from §14.4:

* variables are substituted in-process (`engine.substitution`); nothing runs
  on the host;
* RUN gets an stdin at EOF and no tty (the original gave a tty and no stdin,
  so a prompt hung the build forever); stdout and stderr are merged;
* an absolute COPY destination stays absolute;
* COPY sees the context only while its `cp` runs: a read-only nullfs (bind)
  mount on `/kleene_temporary_context_store`, registered as a mount record just
  for that jail start and removed, with its directory, before the snapshot. A
  jail left running by an earlier RUN is stopped first, because a mount cannot
  be added to a running Linux jail (its mount namespace is private);
* COPY sources are matched on the host with Python's glob (`*`, `?`, `[..]`;
  not `{a,b}`), must stay inside the context (no `..`, no symlink out of it)
  and must match something;
* a client disconnect, a crash or a cancelled task removes the build
  container and its dataset; only `cleanup: false` keeps a `:failed` image.

The build container is connected to each of `networks` right after it is
created (the entries' `container` field is ignored); the connections end
with the build container.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import posixpath
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import delete, select

from kleened.api.schemas import ContainerConfig, ImageBuildConfig
from kleened.engine import containers, execs, images, resolve
from kleened.engine.dockerfile import (
    ArgInstruction,
    CmdInstruction,
    CopyInstruction,
    EnvInstruction,
    FromInstruction,
    Instruction,
    ParseError,
    RunInstruction,
    UserInstruction,
    WorkdirInstruction,
    build_variables,
    expand_instruction,
    parse_dockerfile,
    read_dockerfile,
)
from kleened.engine.errors import EngineError, HostFailure, NotFound
from kleened.engine.ids import new_id, now_iso
from kleened.engine.runtime import Runtime
from kleened.engine.substitution import SubstitutionError
from kleened.host.base import HostError, StorageError
from kleened.store.models import Container, Image, Mount

log = logging.getLogger("kleened.build")

CONTEXT_STORE = "/kleene_temporary_context_store"  # [exact] the original's path
NO_SNAPSHOTS = "no snapshots available"  # [exact]

Emit = Callable[[str | bytes], Awaitable[None]]


class StepFailed(Exception):
    """The build stops; `message` (if any) is sent to the client first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Plan:
    """What the config and the Dockerfile say, checked before the build starts."""

    context: Path  # resolved
    instructions: list[Instruction]


@dataclass
class Outcome:
    ok: bool
    data: str  # the image id on success; a snapshot, "" or NO_SNAPSHOTS on failure


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def load_plan(config: ImageBuildConfig) -> Plan:
    """Read and parse the Dockerfile (blocking; run it in a thread). Raises ParseError.

    The Dockerfile must lie inside the context: its lines are quoted back in
    error messages, so `-f ../../etc/shadow` would otherwise leak host files.
    """
    if not config.context.startswith("/"):
        raise ParseError(f"the build context '{config.context}' must be an absolute path")
    context = Path(os.path.realpath(config.context))
    if not context.is_dir():
        raise ParseError(f"the build context '{config.context}' is not a directory")
    dockerfile = Path(os.path.realpath(context / config.dockerfile))
    if not _inside(str(dockerfile), str(context)):
        raise ParseError(
            f"Could not open Docker file {config.dockerfile}: it is outside the build context"
        )
    return Plan(context=context, instructions=parse_dockerfile(read_dockerfile(dockerfile)))


def _with_workdir(command: Sequence[str], workdir: str) -> list[str]:
    """§9.4.3: shell-form commands run in the working directory."""
    if workdir != "/" and len(command) == 3 and tuple(command[:2]) == ("/bin/sh", "-c"):
        return ["/bin/sh", "-c", f"cd {shlex.quote(workdir)} && {command[2]}"]
    return list(command)


def _join(workdir: str, path: str) -> str:
    """An absolute path stays as is (§14.4.2); a relative one is joined to workdir."""
    joined = posixpath.normpath(posixpath.join(workdir, path))
    return "/" + joined.lstrip("/")


@dataclass
class Build:
    rt: Runtime
    config: ImageBuildConfig
    plan: Plan
    image_id: str
    emit: Emit
    args: dict[str, str] = field(default_factory=dict)
    env: list[str] = field(default_factory=list)
    user: str = "root"
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"
    lines: list[list[str]] = field(default_factory=list)
    container: Container | None = None

    # ------------------------------------------------------------ driver

    async def run(self) -> Outcome:
        total = len(self.plan.instructions)
        try:
            for number, instruction in enumerate(self.plan.instructions, 1):
                if not self.config.quiet:
                    await self.emit(f"Step {number}/{total} : {instruction.line}")
                self.lines.append([instruction.line, ""])
                await self._step(instruction)
            image = await self._store(*images.parse_nametag(self.config.tag))
            return Outcome(ok=True, data=image.id)
        except StepFailed as err:
            failure = err
        except BaseException:
            # The client left, the task was cancelled, or something broke:
            # nothing of the build may stay behind.
            await asyncio.shield(self.discard())
            raise
        try:
            if failure.message:
                await self.emit(failure.message)
            return await self._failed()
        except BaseException:  # as above: the client may leave while we report
            await asyncio.shield(self.discard())
            raise

    async def _failed(self) -> Outcome:
        if self.container is None:
            return Outcome(ok=False, data="")
        if self.config.cleanup:
            await self.discard()
            return Outcome(ok=False, data="")
        name, _tag = images.parse_nametag(self.config.tag)
        await self._store(name, "failed")
        snapshots = [snap for _line, snap in self.lines if snap]
        return Outcome(ok=False, data=snapshots[-1] if snapshots else NO_SNAPSHOTS)

    async def _step(self, instruction: Instruction) -> None:
        variables = build_variables(self.args, self.config.buildargs, self.env)
        try:
            instruction = expand_instruction(instruction, variables)
        except SubstitutionError as err:
            raise StepFailed(str(err)) from err
        if isinstance(instruction, ArgInstruction):
            self.args[instruction.name] = instruction.default or ""
        elif isinstance(instruction, FromInstruction):
            await self._from(instruction)
        elif isinstance(instruction, EnvInstruction):
            self.env = containers.merge_env(self.env, [instruction.pair])
        elif isinstance(instruction, UserInstruction):
            self.user = instruction.user
        elif isinstance(instruction, WorkdirInstruction):
            self.workdir = _join(self.workdir, instruction.path)
            await self._checked(["/bin/mkdir", "-p", self.workdir], user="root", env=[])
        elif isinstance(instruction, CmdInstruction):
            self.cmd = _with_workdir(instruction.command, self.workdir)
        elif isinstance(instruction, RunInstruction):
            command = _with_workdir(instruction.command, self.workdir)
            env = [f"{k}={v}" for k, v in sorted(variables.items())]
            await self._checked(command, user=self.user, env=env)
            await self._snapshot()
        elif isinstance(instruction, CopyInstruction):
            await self._copy(instruction)
            await self._snapshot()

    # ------------------------------------------------------------ FROM

    async def _from(self, instruction: FromInstruction) -> None:
        override = self.config.container_config.image
        if override is not None:
            await self.emit(f"Using user-supplied parent image: '{override}'")  # [exact]
            reference = override
        else:
            reference = instruction.image
        try:
            ident, snapshot = resolve.split_snapshot(reference)
        except EngineError as err:
            raise StepFailed(f"error: {err.message}") from err
        async with self.rt.sessions() as session:
            parent = await resolve.find_image(session, ident)
        if parent is None:
            raise StepFailed(f"error: could not find image {ident}")  # [exact]
        if snapshot is not None and not await self.rt.storage.exists(
            f"{parent.dataset}@{snapshot}"
        ):
            raise StepFailed(f"error: invalid snapshot @{snapshot}")  # [exact]
        user_config = self.config.container_config
        config = ContainerConfig(
            name=f"builder_{self.image_id}",
            image=reference,
            cmd=parent.cmd,  # a cmd in container_config is ignored (§9.4.3)
            user=user_config.user,
            env=user_config.env,
            mounts=user_config.mounts,
            jail_param=user_config.jail_param,
            network_driver=user_config.network_driver or "host",
        )
        try:
            self.container = await containers.create(self.rt, config, cid=self.image_id)
        except EngineError as err:
            raise StepFailed(f"error: {err.message}") from err
        self.env = list(self.container.env)
        self.user = self.container.user
        self.cmd = list(self.container.cmd)
        # §9.4.3 step 4; a failure here fails the build like any other step
        # (the original leaked the container, §14.4.16).
        for entry in self.config.networks:
            if self.rt.network is None:
                raise StepFailed("error: networking is not available on this daemon")
            try:
                await self.rt.network.connect(
                    self.image_id, entry.network, entry.ip_address, entry.ip_address6
                )
            except EngineError as err:
                raise StepFailed(f"error: {err.message}") from err

    # ------------------------------------------------------------ executing steps

    async def _exec(self, command: list[str], *, user: str, env: list[str]) -> int:
        try:
            instance = await execs.create(
                self.rt, self.image_id, command, user, env, False, stdin_eof=True
            )
            await execs.start(self.rt, instance.id, start_container=True)
        except EngineError as err:
            raise StepFailed(f"could not run '{' '.join(command)}': {err.message}") from err
        async with contextlib.aclosing(execs.output(instance)) as output:
            async for chunk in output:
                if not self.config.quiet:
                    await self.emit(chunk)
        await instance.done.wait()
        assert instance.exit_code is not None
        return instance.exit_code

    async def _checked(self, command: list[str], *, user: str, env: list[str]) -> None:
        code = await self._exec(command, user=user, env=env)
        if code != 0:
            # [exact]
            raise StepFailed(f"The command '{' '.join(command)}' returned a non-zero code: {code}")

    async def _snapshot(self) -> None:
        assert self.container is not None
        name = new_id()
        try:
            await self.rt.storage.snapshot(f"{self.container.dataset}@{name}")
        except StorageError as err:
            raise StepFailed(f"could not take a snapshot: {err}") from err
        self.lines[-1][1] = f"@{name}"
        await self.emit(f"--> Snapshot created: @{name}")  # [exact], even when quiet

    # ------------------------------------------------------------ COPY

    def _sources(self, patterns: Sequence[str]) -> list[str]:
        """Context-relative matches; anything reaching outside the context is refused."""
        context = str(self.plan.context)
        found: list[str] = []
        for pattern in patterns:
            relative = pattern.lstrip("/") or "."
            if ".." in PurePosixPath(relative).parts:
                raise StepFailed(f"COPY source '{pattern}' is outside the build context")
            matches = (
                sorted(glob.glob(relative, root_dir=context))
                if glob.has_magic(relative)
                else ([relative] if os.path.lexists(os.path.join(context, relative)) else [])
            )
            if not matches:
                raise StepFailed(f"COPY source '{pattern}' matches nothing in the build context")
            for match in matches:
                if not _inside(os.path.realpath(os.path.join(context, match)), context):
                    raise StepFailed(f"COPY source '{pattern}' is outside the build context")
                found.append(posixpath.normpath(match))
        return found

    async def _copy(self, instruction: CopyInstruction) -> None:
        assert self.container is not None and self.rt.jails is not None
        sources = self._sources(instruction.sources)
        destination = _join(self.workdir, instruction.destination)
        if instruction.destination.endswith("/") and destination != "/":
            destination += "/"
        parent = destination.rstrip("/") or "/"
        if not instruction.destination.endswith("/"):
            parent = posixpath.dirname(parent)
        await self._checked(["/bin/mkdir", "-p", parent], user="root", env=[])
        # The context can only be mounted when the jail is created.
        if await self.rt.jails.is_running(self.image_id):
            with contextlib.suppress(NotFound):
                await containers.stop(self.rt, self.image_id)
        root = await containers.root_of(self.rt, self.container)
        store = Path(os.path.realpath(root)) / CONTEXT_STORE.lstrip("/")
        try:
            store.mkdir(mode=0o755)
        except OSError as err:
            raise StepFailed(
                f"could not create context mountpoint in container: {err.strerror}"  # [exact]
            ) from err
        record = Mount(
            container_id=self.image_id,
            type="nullfs",
            source=str(self.plan.context),
            destination=CONTEXT_STORE,
            read_only=True,
        )
        try:
            async with self.rt.sessions() as session, session.begin():
                session.add(record)
            command = ["/bin/cp", "-R", *(f"{CONTEXT_STORE}/{s}" for s in sources), destination]
            await self._checked(command, user="root", env=[])
        finally:
            await asyncio.shield(self._drop_context(record, store))

    async def _drop_context(self, record: Mount, store: Path) -> None:
        assert self.rt.mounts is not None and self.rt.jails is not None
        async with self.rt.sessions() as session, session.begin():
            await session.execute(delete(Mount).where(Mount.id == record.id))
        if await self.rt.jails.is_running(self.image_id):
            # `cp` left nothing behind normally; a cancelled step may have.
            with contextlib.suppress(NotFound):
                await containers.stop(self.rt, self.image_id)
        try:
            if await self.rt.mounts.is_mounted(store):
                await self.rt.mounts.unmount(store)
            store.rmdir()
        except (HostError, OSError) as err:
            log.warning("build %s: could not remove the context mount: %s", self.image_id, err)

    # ------------------------------------------------------------ finishing

    async def _stop(self) -> None:
        """Stop the build container's jail (if any) and undo its host state."""
        assert self.rt.jails is not None
        if self.container is None:
            return
        with contextlib.suppress(NotFound):
            await containers.stop(self.rt, self.image_id)
        await containers.cleanup(self.rt, self.container)

    async def _store(self, name: str, tag: str) -> Image:
        """§9.4.5: the container's dataset becomes the image's; one transaction for the records."""
        assert self.container is not None
        await self._stop()
        if self.rt.network is not None:
            with contextlib.suppress(EngineError):
                await self.rt.network.container_removed(self.container)
        dataset = f"{self.rt.settings.image_root}/{self.image_id}"
        try:
            await self.rt.storage.rename(self.container.dataset, dataset)
            await self.rt.storage.snapshot(f"{dataset}@image")
        except StorageError as err:
            # Not StepFailed: storing a `:failed` image would fail the same way.
            raise HostFailure(f"could not store the image: {err}") from err
        image = Image(
            id=self.image_id,
            name=name,
            tag=tag,
            cmd=self.cmd,
            env=self.env,
            user=self.user,
            instructions=self.lines,
            buildargs=dict(self.config.buildargs),
            created=now_iso(),
            dataset=dataset,
        )
        async with self.rt.sessions() as session, session.begin():
            await session.execute(delete(Mount).where(Mount.container_id == self.image_id))
            await session.execute(delete(Container).where(Container.id == self.image_id))
            await images.untag_others(session, self.image_id, name, tag)
            session.add(image)
        self.container = None
        return image

    async def discard(self) -> None:
        """Remove every trace of the build: jail, mounts, container, datasets, records."""
        await discard(self.rt, self.image_id, self.container)
        self.container = None


async def discard(rt: Runtime, image_id: str, container: Container | None) -> None:
    """Remove a build's container (if any), its datasets and any record with its id."""
    if container is not None:
        try:
            with contextlib.suppress(NotFound):
                await containers.stop(rt, image_id)
            await containers.cleanup(rt, container)
        except EngineError as err:
            log.warning("build %s: could not stop the build container: %s", image_id, err)
        if rt.network is not None:
            with contextlib.suppress(EngineError):
                await rt.network.container_removed(container)
    for dataset in (
        f"{rt.settings.container_root}/{image_id}",
        f"{rt.settings.image_root}/{image_id}",
    ):
        try:
            if await rt.storage.exists(dataset):
                await rt.storage.destroy(dataset)
        except StorageError as err:
            log.error("build %s: could not destroy %s: %s", image_id, dataset, err)
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Mount).where(Mount.container_id == image_id))
        await session.execute(delete(Container).where(Container.id == image_id))
        await session.execute(delete(Image).where(Image.id == image_id))


async def reconcile(rt: Runtime) -> list[str]:
    """At start-up: builds that died with the previous daemon are removed.

    A build lives only as long as its WebSocket (§5.3), so a `builder_<id>`
    container found at start-up belongs to a build nobody can finish; this
    also covers a crash between the dataset rename and the image record.
    """
    async with rt.sessions() as session:
        stale = [
            c
            for c in await session.scalars(
                select(Container).where(Container.name.like("builder\\_%", escape="\\"))
            )
            if c.name == f"builder_{c.id}"
        ]
    for container in stale:
        log.warning("removing build container %s left by an interrupted build", container.id)
        async with rt.sessions() as session:
            finished = await session.get(Image, container.id)
        if finished is not None:
            continue  # the build finished (the records change in one transaction): keep it
        await discard(rt, container.id, container)
    return [c.id for c in stale]
