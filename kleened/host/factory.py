"""Pick the platform's host drivers once, at start-up.

This is the only place that looks at the platform; engine code sees the
Protocols of host.base.
"""

from __future__ import annotations

from kleened.config import Settings
from kleened.host.base import Jails, Mounts, Storage


def build_storage(settings: Settings) -> Storage:
    if settings.storage == "zfs":
        from kleened.host.zfs import ZfsStorage

        return ZfsStorage()
    if settings.storage == "overlay":
        from kleened.host.overlaystore import OverlayStorage

        return OverlayStorage(settings.dir_storage_base)
    from kleened.host.dirstore import DirStorage

    return DirStorage(settings.dir_storage_base)


def build_jails(settings: Settings) -> Jails:
    if settings.is_freebsd:
        from kleened.host.freebsd.jail import FreeBSDJails

        return FreeBSDJails()
    from kleened.host.linux.jail import LinuxJails

    return LinuxJails(
        state_dir=settings.state_dir / "jails", libexec_dir=settings.data_root / "libexec"
    )


def build_mounts(settings: Settings) -> Mounts:
    if settings.is_freebsd:
        from kleened.host.freebsd.mount import FreeBSDMounts

        return FreeBSDMounts()
    from kleened.host.linux.mount import LinuxMounts

    return LinuxMounts()


def build_network(settings: Settings, jails: Jails | None) -> object | None:
    """The network driver (host/netdriver.py) for this platform."""
    if settings.is_freebsd:
        from kleened.host.freebsd.network import FreeBSDNetwork

        return FreeBSDNetwork(settings.pf_config_template_path, settings.pf_config_path)
    from kleened.host.linux.network import LinuxNetwork

    jail_pid = getattr(jails, "jail_pid", lambda name: None)
    # Per daemon (data_root), not the shared /var/run/kleened: the saved
    # ruleset is how a daemon knows the nft table is its own to remove.
    return LinuxNetwork(settings.data_root / "network", jail_pid)
