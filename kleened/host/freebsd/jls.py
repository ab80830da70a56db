"""jls(8): which jails are running, read from its libxo JSON output.

`jls -v --libxo json` prints, per jail, the fields `jid`, `hostname`, `path`,
`name`, `state`, `cpusetid`, `ipv4_addrs` and `ipv6_addrs` under
`jail-information.jail[]` (format version "2"). The `-v` matters: plain
`jls --libxo json` emits only jid, IPv4 address, hostname and path, and no
`name`, and kleened finds containers by jail *name* (reference §6.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kleened.host.base import JailError, RunningJail
from kleened.host.freebsd.libxo import libxo_list

JLS = "/usr/sbin/jls"


def jls_list_argv() -> list[str]:
    """Every running (non-dying) jail, one call (reference §6.2, list endpoint)."""
    return [JLS, "-v", "--libxo", "json"]


def jls_check_argv(name: str) -> list[str]:
    """Exit status 0 when jail `name` exists, 1 when it does not (reference §6.2)."""
    return [JLS, "--libxo", "json", "-j", name]


def _malformed(reason: str) -> JailError:
    return JailError(f"could not parse the output of {JLS}: {reason}")


def _jid(value: Any) -> int:
    # libxo emits `%d` fields as JSON numbers; accept a digit string as well,
    # but not a bool (which Python would otherwise take for an int).
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise _malformed(f"invalid jid {value!r}")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def parse_jls(json_text: str) -> dict[str, RunningJail]:
    """Running jails by name from `jls -v --libxo json` output.

    No jails at all may come out as an empty list or with the list left out;
    both give `{}`. Anything that is not the documented shape raises JailError
    naming the problem, never a KeyError/TypeError from deep inside.
    """
    entries = libxo_list(json_text, "jail-information", "jail", _malformed)
    jails: dict[str, RunningJail] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise _malformed("a jail entry is not an object")
        if "jid" not in entry:
            raise _malformed("a jail entry has no jid")
        jid = _jid(entry["jid"])
        # A jail created without a name is named after its jid (jail(8)).
        name = entry.get("name") or str(jid)
        if not isinstance(name, str):
            raise _malformed(f"invalid name {name!r}")
        path = entry.get("path")
        extra = {
            key: _text(value)
            for key, value in entry.items()
            if key not in ("jid", "name", "path") and value is not None
        }
        jails[name] = RunningJail(
            name=name,
            jid=jid,
            path=Path(path) if isinstance(path, str) and path else None,
            extra=extra,
        )
    return jails
