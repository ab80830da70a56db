"""Identifiers and timestamps in the original's formats (reference §2.5, §2.7)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

# Container (and volume) names: the original's regex; at least two characters.
NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
NAME_RULE = "/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$"
# Volume names become dataset and directory names: no leading slash.
VOLUME_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def new_id() -> str:
    """12 lowercase hex digits, never all decimal digits.

    jail(8) and jexec(8) would read an all-digit name as a numeric jail id.
    """
    while True:
        candidate = uuid.uuid4().hex[:12]
        if not candidate.isdigit():
            return candidate


def now_iso() -> str:
    """ISO-8601 UTC with microseconds and a Z: fixed width, so it sorts as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
