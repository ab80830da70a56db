"""The mount points of this mount namespace, from /proc/self/mountinfo (Linux).

Read on every container stop and every overlay clone, and one line per mount
(a busy host has hundreds), so it stays plain strings: no Path per line, and
octal unescaping only for the rare field that has a backslash.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as `\\040` style escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def mount_points() -> list[str]:
    """Every mount point, in mount order; empty where there is no /proc (FreeBSD)."""
    try:
        text = MOUNTINFO.read_text()
    except OSError:
        return []
    return [unescape(line.split(" ", 5)[4]) for line in text.splitlines() if line.count(" ") > 4]


def points_under(root: str) -> list[str]:
    """Mount points at or below the absolute path `root`, in mount order."""
    prefix = root.rstrip("/") + "/"
    return [p for p in mount_points() if p == root or p.startswith(prefix)]


def mounts_under(path: Path | str) -> list[str]:
    """Mount points at or below `path` (symlinks resolved), sorted."""
    return sorted(points_under(os.path.realpath(path)))
