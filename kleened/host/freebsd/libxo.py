"""Reading the `--libxo json` output of FreeBSD tools (jls, mount)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def libxo_list(
    json_text: str, container: str, key: str, malformed: Callable[[str], Exception]
) -> list[Any]:
    """The list at `document[container][key]`; a missing one is empty.

    Tools leave out empty lists, so absence is not an error; anything that is
    not the documented shape raises `malformed(reason)`, never a KeyError or
    TypeError from deep inside.
    """
    try:
        document = json.loads(json_text)
    except json.JSONDecodeError as err:
        raise malformed(f"not JSON ({err.msg} at offset {err.pos})") from err
    if not isinstance(document, dict):
        raise malformed("the top level is not an object")
    table = document.get(container, {})
    if not isinstance(table, dict):
        raise malformed(f"'{container}' is not an object")
    items = table.get(key, [])
    if not isinstance(items, list):
        raise malformed(f"'{container}.{key}' is not a list")
    return items
