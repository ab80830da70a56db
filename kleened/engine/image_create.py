"""Base-image creation: fetch, fetch-auto, zfs-copy, zfs-clone (reference §9.2).

Each method is an async generator of progress text; it returns (through
`Created.image`) the stored image. The record is stored only once the image's
dataset and `@image` snapshot exist, and any failure destroys what was made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from kleened.api.schemas import ImageCreateConfig
from kleened.engine import images
from kleened.engine.errors import EngineError, HostFailure, InvalidInput
from kleened.engine.ids import new_id
from kleened.engine.runtime import Runtime
from kleened.host import fetch
from kleened.host.base import HostError, StorageError
from kleened.store.models import Image

log = logging.getLogger("kleened.images")
DATASET_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)*$")


class CreateFailed(EngineError):
    pass


@dataclass
class Created:
    image: Image | None = None


def fetch_auto_url(uname_rms: str) -> tuple[str, str]:
    """(url, version) for `uname -rms` output such as `FreeBSD 14.1-RELEASE-p5 amd64`."""
    try:
        _os, version, arch = uname_rms.split()
    except ValueError as err:
        raise CreateFailed(f"could not parse the output of uname: {uname_rms!r}") from err
    base = "https://download.freebsd.org"
    release = re.match(r"^(\d+\.\d+)-RELEASE(-p\d+)?$", version)
    if release:
        return f"{base}/releases/{arch}/{release.group(1)}-RELEASE/base.txz", version
    if re.match(r"^\d+\.\d+-STABLE$", version):
        return f"{base}/snapshots/{arch}/{version}/base.txz", version
    raise CreateFailed(f"could not deduce url from FreeBSD version {version}")


async def _finish_tree(rt: Runtime, config: ImageCreateConfig, root: Path) -> AsyncIterator[str]:
    """The common steps before the snapshot: resolv.conf, localtime (§9.2)."""
    if config.dns:
        dest = root / "etc" / "resolv.conf"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():
                dest.unlink()
            shutil.copyfile("/etc/resolv.conf", dest)
        except OSError as err:
            raise CreateFailed(
                f"exit code 1 when copying host '/etc/resolv.conf' to {dest}: {err.strerror}"
            ) from err
    if config.localtime:
        if Path("/etc/localtime").exists():
            dest = root / "etc" / "localtime"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            shutil.copyfile("/etc/localtime", dest)
        else:
            yield "/etc/localtime not found on host, skipping...\n"


async def _from_archive(
    rt: Runtime, config: ImageCreateConfig, url: str, nametag: str, out: Created
) -> AsyncIterator[str]:
    image_id = new_id()
    dataset = f"{rt.settings.image_root}/{image_id}"
    workdir = await rt.storage.mountpoint(rt.settings.kleene_root)
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".archive", dir=workdir)
    os.close(fd)
    archive = Path(tmp)
    try:
        async for line in fetch.download(url, archive):
            yield line
        yield "Succesfully fetched base system.\n"  # [exact] (sic)
        yield "Unpacking contents and creating image...\n"
        try:
            await rt.storage.create(dataset)
        except StorageError as err:
            raise CreateFailed(f"error creating dataset {dataset}: {err}") from err

        async def unpack(root: Path) -> AsyncIterator[str]:
            async for line in fetch.extract(archive, root):
                yield line
            yield "Succesfully extracted binaries, creating image...\n"

        async for line in _complete(rt, config, dataset, image_id, nametag, out, unpack):
            yield line
    finally:
        archive.unlink(missing_ok=True)


async def _complete(
    rt: Runtime,
    config: ImageCreateConfig,
    dataset: str,
    image_id: str,
    nametag: str,
    out: Created,
    fill: Callable[[Path], AsyncIterator[str]] | None = None,
) -> AsyncIterator[str]:
    """Fill the new dataset, finish its tree and store the image record; on any
    failure (or a client leaving) the dataset goes, so no half image stays."""
    try:
        root = await rt.storage.mountpoint(dataset)
        if fill is not None:
            async for line in fill(root):
                yield line
        async for line in _finish_tree(rt, config, root):
            yield line
        out.image = await images.finish(rt, image_id, dataset, nametag)
    except BaseException:
        with contextlib.suppress(StorageError):
            await rt.storage.destroy(dataset)
        raise


async def _from_dataset(
    rt: Runtime, config: ImageCreateConfig, nametag: str, out: Created
) -> AsyncIterator[str]:
    if rt.storage.kind != "zfs":
        raise CreateFailed(
            f"the '{config.method}' method needs ZFS storage (this daemon uses '{rt.storage.kind}')"
        )
    source = config.zfs_dataset
    if not DATASET_PATTERN.match(source) or not await rt.storage.exists(source):
        raise CreateFailed("invalid dataset")  # [exact]
    image_id = new_id()
    dataset = f"{rt.settings.image_root}/{image_id}"
    snapshot = f"{source}@{image_id}"
    await rt.storage.snapshot(snapshot)
    keep_snapshot = False
    try:
        if config.method == "zfs-copy":
            yield "copying dataset into the new image, this can take a while...\n"
            try:
                await rt.storage.copy(snapshot, dataset)  # type: ignore[attr-defined]
            except StorageError as err:
                raise CreateFailed(f"error copying image dataset: {err}") from err
        else:
            yield "cloning dataset...\n"
            try:
                await rt.storage.clone(snapshot, dataset)
            except StorageError as err:
                raise CreateFailed(f"error cloning image dataset: {err}") from err
        async for line in _complete(rt, config, dataset, image_id, nametag, out):
            yield line
        # A clone's origin must stay (it is destroyed with the image); a copy's
        # transfer snapshot is not needed any more.
        keep_snapshot = config.method == "zfs-clone"
    finally:
        if not keep_snapshot:
            with contextlib.suppress(StorageError):
                await rt.storage.destroy_snapshot(snapshot)


async def run(rt: Runtime, config: ImageCreateConfig, out: Created) -> AsyncIterator[str]:
    """Progress text; `out.image` is set on success. Failures raise EngineError."""
    if config.update and not rt.settings.is_freebsd:
        raise CreateFailed("'update' runs freebsd-update and is only available on FreeBSD")
    nametag = config.tag
    try:
        images.parse_nametag(nametag)
        if config.method == "fetch":
            if not config.url:
                raise CreateFailed("no url given for the 'fetch' method")
            async for line in _from_archive(rt, config, config.url, nametag, out):
                yield line
        elif config.method == "fetch-auto":
            if not rt.settings.is_freebsd:
                raise CreateFailed(
                    "'fetch-auto' derives the URL from this host's FreeBSD "
                    "version and is only available on FreeBSD"
                )
            uname = " ".join(os.uname()[i] for i in (0, 2, 4))
            url, version = fetch_auto_url(uname)
            if config.autotag:
                nametag = f"FreeBSD-{version}"
            async for line in _from_archive(rt, config, url, nametag, out):
                yield line
            yield (
                f"Created image from the automatically detected version: "
                f"FreeBSD-{version} {os.uname().machine}.\n"
            )
        else:
            async for line in _from_dataset(rt, config, nametag, out):
                yield line
    except InvalidInput as err:
        raise CreateFailed(err.message) from err
    except HostError as err:
        raise HostFailure(str(err)) from err
