"""`kleened init [--dry-run]`: prepare this host for kleened, or only check it.

`run_init` picks the platform's steps (`hostinit_freebsd`, `hostinit_linux`)
and prints each one as it goes, in the original's words where the original
had the step (reference §12.4): `Verifying ...` then `OK`, or what was
missing and what is being done about it, on one line. A failed step ends the
run with `initialization error: <reason>` and exit code 1.

With `dry_run` only read-only commands run (kldstat, sysrc without an
assignment, `zfs list`/`zfs get`, `zpool list`) and nothing on the host
changes; the lines printed are the same as for a real run, so a dry run shows
exactly what `init` would do.

All commands go through one injectable runner with `kleened.host.cmd.run`'s
signature, `runner(argv, *, timeout) -> CommandResult`, returning the result
directly or as an awaitable, so the FreeBSD steps can be checked on any host
by their exact argument vectors.

From the settings only `kleene_root`, `storage`, `data_root` and
`pf_config_template_path` are read.
"""

from __future__ import annotations

import asyncio
import inspect
import platform
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from kleened.host import cmd
from kleened.host.base import HostError

COMMAND_TIMEOUT = 60.0  # zfs create on a busy pool is the slowest step
DATASET_CHILDREN = ("image", "container", "volumes")
# `zfs get mountpoint` values that give the daemon no path to work under.
NO_MOUNTPOINT = ("", "-", "none", "legacy")
PF_TEMPLATE_NAME = "pf.conf.kleene"

Runner = Callable[..., cmd.CommandResult | Awaitable[cmd.CommandResult]]


class InitSettings(Protocol):
    """What `init` reads from `kleened.config.Settings`."""

    @property
    def kleene_root(self) -> str: ...

    @property
    def storage(self) -> str: ...

    @property
    def data_root(self) -> Path: ...

    @property
    def pf_config_template_path(self) -> Path: ...


class InitError(Exception):
    """A step failed; printed as `initialization error: <message>` (the original's words)."""


def _which(name: str) -> str | None:
    # init may run from rc.d or cron with a PATH lacking the sbin directories.
    return shutil.which(name, path=cmd.SAFE_PATH)


@dataclass(frozen=True)
class HostPaths:
    """Where init looks on the host; tests point these at their own files."""

    loader_conf: Path = Path("/boot/loader.conf")
    which: Callable[[str], str | None] = _which
    # Copies of the pf template to install from; None: the usual places.
    pf_template_sources: tuple[Path, ...] | None = None


@dataclass
class Init:
    """One run: the settings, the mode, the output and the command runner."""

    settings: InitSettings
    dry_run: bool
    out: TextIO
    runner: Runner
    host: HostPaths = field(default_factory=HostPaths)
    mid_line: bool = False

    def write(self, text: str) -> None:
        """Part of a line; flushed so a slow step shows what it is waiting for."""
        self.out.write(text)
        self.out.flush()
        self.mid_line = not text.endswith("\n")

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    async def run(
        self, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT
    ) -> cmd.CommandResult:
        try:
            result = self.runner(list(argv), timeout=timeout)
            if inspect.isawaitable(result):
                result = await result
        except (HostError, OSError) as err:
            raise InitError(str(err)) from err
        return result


async def ensure_dataset(init: Init, zfs: str, dataset: str) -> bool:
    """Create `dataset` if it is missing (not in a dry run); True if it existed."""
    init.write(f"Verifying if zfs dataset {dataset} exists...")
    if (await init.run([zfs, "list", "-H", "-o", "name", dataset])).ok:
        init.line("OK")
        return True
    init.write("does not exist, creating...")
    if not init.dry_run:
        created = await init.run([zfs, "create", dataset])
        if not created.ok:
            reason = cmd.failure_message(created)
            raise InitError(f"could not create ZFS dataset {dataset}: {reason}")
    init.line("OK")
    return False


async def check_mountpoint(init: Init, zfs: str, root: str) -> None:
    # The daemon finds containers, volumes and (by default) its database under
    # the root's mountpoint. The original meant to check this but never did (§14.7).
    result = await init.run([zfs, "get", "-H", "-o", "value", "mountpoint", root])
    if not result.ok:
        raise InitError(f"could not read the mountpoint of {root}: {cmd.failure_message(result)}")
    if result.out.strip() in NO_MOUNTPOINT:
        raise InitError(
            f"kleened's root zfs filesystem {root} does not have any mountpoint. "
            "Please set it manually."
        )


async def ensure_datasets(init: Init, zfs: str) -> None:
    """`<root>` (with a mountpoint), `<root>/image`, `<root>/container`, `<root>/volumes`."""
    root = init.settings.kleene_root
    existed = await ensure_dataset(init, zfs, root)
    # A dry run did not create a missing root, so there is no mountpoint to read yet.
    if existed or not init.dry_run:
        await check_mountpoint(init, zfs, root)
    for child in DATASET_CHILDREN:
        await ensure_dataset(init, zfs, f"{root}/{child}")


def ensure_data_root(init: Init) -> None:
    """The daemon's state directory, created private (it holds the metadata database)."""
    data_root = Path(init.settings.data_root)
    init.write(f"Verifying if directory {data_root} exists...")
    if data_root.is_dir():
        init.line("OK")
        return
    if data_root.exists():
        raise InitError(f"{data_root} exists and is not a directory")
    init.write("does not exist, creating...")
    if not init.dry_run:
        try:
            data_root.mkdir(mode=0o700, parents=True)
            data_root.chmod(0o700)  # mkdir's mode is filtered by the umask
        except OSError as err:
            raise InitError(f"could not create {data_root}: {err.strerror}") from err
    init.line("OK")


async def _run_platform(init: Init, system: str) -> None:
    if system == "FreeBSD":
        from kleened.hostinit_freebsd import initialize
    elif system == "Linux":
        from kleened.hostinit_linux import initialize
    else:
        raise InitError(f"kleened does not run on {system}")
    await initialize(init)


async def initialize_host(init: Init, system: str) -> int:
    try:
        await _run_platform(init, system)
    except InitError as err:
        if init.mid_line:
            init.line("failed")
        init.line(f"initialization error: {err}")
        return 1
    return 0


def run_init(
    settings: InitSettings,
    *,
    dry_run: bool,
    out: TextIO | None = None,
    system: str | None = None,
    runner: Runner | None = None,
    host: HostPaths | None = None,
) -> int:
    """Prepare the host (or with `dry_run` only check it); the process exit code.

    `out` defaults to the current `sys.stdout`, `system` to `platform.system()`,
    `runner` to `kleened.host.cmd.run` (argument vectors, a minimal
    environment, a timeout).
    """
    init = Init(
        settings=settings,
        dry_run=dry_run,
        out=out or sys.stdout,
        runner=runner or cmd.run,
        host=host or HostPaths(),
    )
    return asyncio.run(initialize_host(init, system or platform.system()))
