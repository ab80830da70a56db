"""FastAPI application factory and its lifespan.

Start-up order (reference §1): storage roots, metadata database (migrated),
host drivers, then whatever the engine has to restore (reconcile, networks,
on-startup containers) before the listeners accept requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from kleened import __version__
from kleened.api import errors
from kleened.api.routes import containers, execs, images, networks, volumes
from kleened.config import Settings
from kleened.engine import build as build_engine
from kleened.engine import execs as exec_engine
from kleened.engine import images as image_engine
from kleened.engine import networks as network_engine
from kleened.engine.errors import HostFailure
from kleened.engine.runtime import Runtime
from kleened.host import factory
from kleened.host.base import Storage, StorageError
from kleened.logs import AccessLog
from kleened.store import db

log = logging.getLogger("kleened")


async def prepare_storage(settings: Settings, storage: Storage) -> None:
    """Make sure <root>/{image,container,volumes} exist.

    With `dir` storage the daemon creates them itself (zero-configuration on
    Linux). A ZFS root must have been created by `kleened init`; its children
    are created if missing, as init would.
    """
    root = settings.kleene_root
    if storage.kind == "dir":
        for part in root.split("/"):
            prefix = root[: root.index(part) + len(part)]
            if not await storage.exists(prefix):
                await storage.create(prefix)
    elif not await storage.exists(root):
        raise HostFailure(
            f"ZFS dataset {root} (kleene_root) does not exist: run 'kleened init' first"
        )
    for child in (settings.image_root, settings.container_root, settings.volume_root):
        if not await storage.exists(child):
            await storage.create(child)


async def database_path(settings: Settings, storage: Storage) -> Path:
    if settings.metadata_db is not None:
        return settings.metadata_db
    if storage.kind == "dir":
        return settings.data_root / "metadata.sqlite"
    # As the original: the file sits in the root dataset's directory, but we
    # ask ZFS where that is instead of assuming /<root>.
    return await storage.mountpoint(settings.kleene_root) / "metadata.sqlite"


async def build_runtime(settings: Settings) -> Runtime:
    storage = factory.build_storage(settings)
    try:
        await storage.open()
        await prepare_storage(settings, storage)
    except StorageError as err:
        raise HostFailure(f"could not prepare storage: {err}") from err
    db_path = await database_path(settings, storage)
    await asyncio.to_thread(db.migrate, db_path)
    engine = db.async_engine(db_path)
    runtime = Runtime(
        settings=settings,
        sessions=db.sessionmaker(engine),
        storage=storage,
        jails=factory.build_jails(settings),
        mounts=factory.build_mounts(settings),
    )
    runtime.services["db_engine"] = engine
    runtime.services["db_path"] = db_path
    return runtime


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await build_runtime(settings)
        app.state.runtime = runtime
        # Networks before reconcile: cleaning up a stopped container is also a
        # network operation (its endpoints and firewall rules).
        runtime.network = network_engine.build(runtime)
        if runtime.network is not None:
            await runtime.network.startup()
        await exec_engine.reconcile(runtime)
        await build_engine.reconcile(runtime)
        await image_engine.reconcile(runtime)
        await exec_engine.start_on_startup_containers(runtime)
        try:
            yield
        finally:
            # Jails keep running without the daemon, as on FreeBSD; only our
            # watchers of them stop.
            await exec_engine.stop_watchers(runtime)
            await runtime.services["db_engine"].dispose()
            await runtime.storage.close()

    app = FastAPI(
        title="Kleened API",
        version=__version__,
        description="The API of kleened, the Kleene container daemon.",
        lifespan=lifespan,
    )
    errors.install(app)
    for router in (
        containers.router,
        execs.router,
        images.router,
        networks.router,
        volumes.router,
    ):
        app.include_router(router)
    app.add_middleware(AccessLog)
    app.state.settings = settings
    return app
