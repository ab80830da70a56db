"""`kleened init` on Linux: check what the Linux host drivers use, then create the state.

Each check prints `Verifying <thing>... OK` or `... missing`. What is missing is
summed up as one `apt-get install` line of Debian packages. A missing
requirement fails the run before anything is created; an optional one (named
with what it is for) only informs, like the rctl hint on FreeBSD.

Then, when everything required is there: `data_root` (mode 0700) and, with
`zfs` storage, the datasets under `kleene_root`, printed as on FreeBSD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kleened.hostinit import Init, InitError, ensure_data_root, ensure_datasets

NAMESPACES = ("mnt", "pid", "uts", "ipc", "net")
NS_DIR = Path("/proc/self/ns")
# What kleened-reaper (host/linux/reaper.c) includes, from libc6-dev and linux-libc-dev.
C_HEADERS = (Path("/usr/include/stdio.h"), Path("/usr/include/linux/capability.h"))
MOUNTINFO = Path("/proc/self/mountinfo")
CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Requirement:
    what: str  # printed as "Verifying <what>..."
    package: str | None  # the Debian package that provides it
    present: Callable[[Init], bool]
    optional_for: str | None = None  # set: only informs when missing


def _program(*names: str) -> Callable[[Init], bool]:
    return lambda init: any(init.host.which(name) for name in names)


def _namespaces(init: Init) -> bool:
    return all((NS_DIR / kind).exists() for kind in NAMESPACES)


def _c_headers(init: Init) -> bool:
    return all(path.is_file() for path in C_HEADERS)


def _cgroups(init: Init) -> bool:
    """A cgroup (v1 or v2) hierarchy mounted under /sys/fs/cgroup."""
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        fstype = fields[fields.index("-") + 1]
        mountpoint = fields[4]
        if fstype in ("cgroup", "cgroup2") and mountpoint.startswith(CGROUP_ROOT):
            return True
    return False


def requirements(storage: str) -> list[Requirement]:
    found = [
        Requirement("mount", "mount", _program("mount")),  # bind mounts (host/linux/mount.py)
        Requirement("umount", "mount", _program("umount")),
        Requirement("ip", "iproute2", _program("ip")),  # bridges, veth pairs, namespaces
        Requirement("nft", "nftables", _program("nft")),  # the firewall and published ports
        # kleened-reaper, the jails' pid 1, is compiled on first use
        Requirement("C compiler (cc)", "gcc", _program("cc", "gcc", "clang")),
        Requirement("C library headers", "libc6-dev", _c_headers),
        Requirement(f"kernel namespaces ({', '.join(NAMESPACES)})", None, _namespaces),
        # The reaper enters namespaces itself; these are how a person does.
        Requirement("unshare", "util-linux", _program("unshare"), "entering jails by hand"),
        Requirement("nsenter", "util-linux", _program("nsenter"), "entering jails by hand"),
        Requirement(
            f"cgroup mounts under {CGROUP_ROOT}", None, _cgroups, "container resource limits"
        ),
    ]
    if storage == "zfs":
        # Debian main has zfs-fuse; OpenZFS (zfsutils-linux, contrib) works as well.
        found.append(Requirement("zfs", "zfs-fuse", _program("zfs")))
        found.append(Requirement("zpool", "zfs-fuse", _program("zpool")))
    return found


async def check_pool(init: Init) -> bool:
    """The pool that holds kleene_root answers (zfs-fuse running, pool imported)."""
    pool = init.settings.kleene_root.split("/", 1)[0]
    init.write(f"Verifying zfs pool {pool}... ")
    if (await init.run(["zpool", "list", "-H", "-o", "name", pool])).ok:
        init.line("OK")
        return True
    init.line("missing (is zfs-fuse running and the pool imported?)")
    return False


async def initialize(init: Init) -> None:
    missing: list[Requirement] = []
    for need in requirements(init.settings.storage):
        init.write(f"Verifying {need.what}... ")
        if need.present(init):
            init.line("OK")
            continue
        init.line(f"missing (optional: {need.optional_for})" if need.optional_for else "missing")
        missing.append(need)
    required_missing = [need.what for need in missing if need.optional_for is None]
    have_zfs = init.settings.storage == "zfs" and not {"zfs", "zpool"} & set(required_missing)
    if have_zfs and not await check_pool(init):
        required_missing.append(f"zfs pool of {init.settings.kleene_root}")

    packages = list(dict.fromkeys(need.package for need in missing if need.package))
    if packages:
        init.line(f"Install what is missing with: apt-get install {' '.join(packages)}")
    if required_missing:
        raise InitError(f"missing {', '.join(required_missing)}")

    ensure_data_root(init)
    if init.settings.storage == "zfs":
        await ensure_datasets(init, "zfs")
