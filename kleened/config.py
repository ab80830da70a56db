"""One Settings object: the YAML file of the original plus what Linux needs.

The file is optional. Without one, on Linux, the daemon runs with `dir`
storage under /var/lib/kleened and a UNIX socket at /var/run/kleened.sock, so a
newcomer can start it with no preparation. Every problem in a file is reported
as a `ConfigError` naming the key, before anything on the host is touched.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

ENV_CONFIG = "KLEENED_CONFIG"
# Looked for, in order, when neither --config nor KLEENED_CONFIG names a file.
DEFAULT_CONFIG_PATHS = (
    Path("/usr/local/etc/kleened/kleened.yaml"),
    Path("/etc/kleened/kleened.yaml"),
)
DEFAULT_SOCKET = "http:///var/run/kleened.sock"
LOG_FILE = Path("/var/log/kleened.log")

# The original's level names (Erlang's logger) mapped onto Python's.
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}

KNOWN_KEYS = {
    "kleene_root",
    "pf_config_template_path",
    "pf_config_path",
    "api_listening_sockets",
    "enable_logging",
    "log_level",
    "storage",
    "data_root",
    "metadata_db",
}
LISTENER_KEYS = {"address", "tlscert", "tlskey", "tlscacert", "tlsverify", "tlsdh"}


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class Listener:
    """One entry of `api_listening_sockets`, parsed."""

    address: str
    kind: Literal["unix", "tcp"]
    tls: bool
    path: Path | None = None  # unix
    host: str | None = None  # tcp: a literal IP address
    port: int | None = None
    tlscert: Path | None = None
    tlskey: Path | None = None
    tlscacert: Path | None = None
    tlsverify: bool = False
    tlsdh: Path | None = None

    @property
    def verifies_clients(self) -> bool:
        return self.tls and self.tlsverify


@dataclass(frozen=True)
class Settings:
    kleene_root: str
    pf_config_template_path: Path
    pf_config_path: Path
    api_listening_sockets: tuple[Listener, ...]
    enable_logging: bool
    log_level: str
    storage: Literal["zfs", "dir", "overlay"]
    data_root: Path
    metadata_db: Path | None  # None: derived once the storage root is known
    platform: str = field(default_factory=lambda: platform.system())
    source: Path | None = None  # the file the settings came from, if any

    # Derived dataset names, as the original computes them (§12.1).
    @property
    def image_root(self) -> str:
        return f"{self.kleene_root}/image"

    @property
    def container_root(self) -> str:
        return f"{self.kleene_root}/container"

    @property
    def volume_root(self) -> str:
        return f"{self.kleene_root}/volumes"

    @property
    def state_dir(self) -> Path:
        """Runtime state that must not survive a reboot (jail pids, exec state)."""
        return Path("/var/run/kleened")

    @property
    def dir_storage_base(self) -> Path:
        return self.data_root / "datasets"

    @property
    def log_level_number(self) -> int:
        return LOG_LEVELS[self.log_level]

    @property
    def is_freebsd(self) -> bool:
        return self.platform == "FreeBSD"


def _default_storage(system: str) -> Literal["zfs", "dir"]:
    return "zfs" if system == "FreeBSD" else "dir"


def parse_listener(item: Any, index: int) -> Listener:
    where = f"api_listening_sockets[{index}]"
    if isinstance(item, str):
        item = {"address": item}
    if not isinstance(item, dict):
        raise ConfigError(f"'{where}' must be a mapping with an 'address'")
    unknown = set(item) - LISTENER_KEYS
    if unknown:
        raise ConfigError(f"'{where}': unknown key '{sorted(unknown)[0]}'")
    address = item.get("address")
    if not isinstance(address, str) or not address:
        raise ConfigError(f"'{where}.address' must be a non-empty string")
    url = urlsplit(address)
    if url.scheme not in ("http", "https"):
        raise ConfigError(
            f"'{where}.address': Failed to extract correct information from socket URI: "
            f"{address!r} (use http://IP:PORT, https://IP:PORT or http:///absolute/path.sock)"
        )
    if url.username or url.password or url.query or url.fragment:
        raise ConfigError(
            f"'{where}.address': userinfo, query and fragment are not allowed in {address!r}"
        )
    tls = url.scheme == "https"
    tlsverify = item.get("tlsverify", False)
    if tlsverify not in (True, False, None):
        raise ConfigError(f"'{where}.tlsverify': 'verify' options value not understood.")
    files: dict[str, Path | None] = {}
    for key in ("tlscert", "tlskey", "tlscacert", "tlsdh"):
        value = item.get(key)
        if value is None:
            files[key] = None
            continue
        if not isinstance(value, str):
            raise ConfigError(f"'{where}.{key}' must be a file path")
        if not Path(value).is_file():
            raise ConfigError(f"'{where}.{key}': file in '{key}' does not exist: {value}")
        files[key] = Path(value)
    if tls and (files["tlscert"] is None or files["tlskey"] is None):
        raise ConfigError(f"'{where}': an https listener needs both 'tlscert' and 'tlskey'")
    if tlsverify and files["tlscacert"] is None:
        raise ConfigError(f"'{where}': 'tlsverify: true' needs 'tlscacert' to verify clients")
    if not tls and any(files.values()):
        raise ConfigError(f"'{where}': TLS files are only used with an https:// address")

    common = dict(address=address, tls=tls, tlsverify=bool(tlsverify), **files)
    if not url.netloc:
        path = url.path
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"'{where}.address': a UNIX socket needs an absolute path")
        p = Path(path)
        if p.exists() and not (p.is_socket() or p.is_file()):
            raise ConfigError(f"'{where}.address': {path} exists and is not a socket or file")
        return Listener(kind="unix", path=p, **common)
    if url.path not in ("", "/"):
        raise ConfigError(f"'{where}.address': a TCP address takes no path: {address!r}")
    try:
        host = url.hostname or ""
        ipaddress.ip_address(host)
        port = url.port or (443 if tls else 80)
    except ValueError as err:
        raise ConfigError(
            f"'{where}.address': Error parsing ip-address in 'api_socket': {address!r} "
            "(a literal IPv4 or [IPv6] address is required)"
        ) from err
    return Listener(kind="tcp", host=host, port=port, **common)


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    return value


def _path(raw: dict[str, Any], key: str, default: str | None) -> Path | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"'{key}' must be an absolute path, got {value!r}")
    return Path(value)


def settings_from_mapping(
    raw: dict[str, Any], *, system: str | None = None, source: Path | None = None
) -> Settings:
    system = system or platform.system()
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"unknown configuration key '{sorted(unknown)[0]}'")

    storage = raw.get("storage", _default_storage(system))
    if storage not in ("zfs", "dir", "overlay"):
        raise ConfigError(f"'storage' must be 'zfs', 'dir' or 'overlay', got {storage!r}")
    if storage == "overlay" and system != "Linux":
        raise ConfigError("'storage: overlay' needs Linux (overlayfs); use 'zfs' or 'dir'")

    root = raw.get("kleene_root", "zroot/kleene" if storage == "zfs" else "kleene")
    if not isinstance(root, str) or not root or root.startswith("/") or ".." in root.split("/"):
        raise ConfigError(f"'kleene_root' must be a dataset name like zroot/kleene, got {root!r}")

    sockets = raw.get("api_listening_sockets", [DEFAULT_SOCKET])
    if not isinstance(sockets, list) or not sockets:
        raise ConfigError("'api_listening_sockets' must be a non-empty list")
    listeners = tuple(parse_listener(item, i) for i, item in enumerate(sockets))

    log_level = raw.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"'log_level' must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    data_root = _path(raw, "data_root", "/var/lib/kleened")
    assert data_root is not None
    return Settings(
        kleene_root=root,
        pf_config_template_path=_path(
            raw, "pf_config_template_path", "/usr/local/etc/kleened/pf.conf.kleene"
        ),  # type: ignore[arg-type]
        pf_config_path=_path(raw, "pf_config_path", "/etc/pf.conf"),  # type: ignore[arg-type]
        api_listening_sockets=listeners,
        enable_logging=_bool(raw, "enable_logging", False),
        log_level=log_level,
        storage=storage,
        data_root=data_root,
        metadata_db=_path(raw, "metadata_db", None),
        platform=system,
        source=source,
    )


def config_path(explicit: str | None) -> Path | None:
    """The file to read: --config, then $KLEENED_CONFIG, then the default locations."""
    named = explicit or os.environ.get(ENV_CONFIG)
    if named:
        return Path(named)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_settings(explicit: str | None = None, *, system: str | None = None) -> Settings:
    path = config_path(explicit)
    if path is None:
        return settings_from_mapping({}, system=system)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read configuration file {path}: {err.strerror}") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"configuration file {path} is not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of keys")
    return settings_from_mapping(raw, system=system, source=path)
