"""Resolving identifiers the way users type them (reference §2.6, §14.1.4).

Containers: exact id, then exact name, then a unique id prefix. Images:
`<id>[@<snapshot>]` or `<name>[:<tag>][@<snapshot>]` (tag `latest` by
default), then a unique id prefix. An ambiguous prefix is an error, never a
guess, and an empty identifier matches nothing.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kleened.engine.errors import InvalidInput, NotFound
from kleened.store.models import Container, Image, Network

SNAPSHOT_PATTERN = re.compile(r"^@?[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class Ambiguous(NotFound):
    """A prefix matches several objects. Reported like not-found (klee parses 404)."""


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _by_prefix(session: AsyncSession, model, column, ident: str, kind: str):  # type: ignore[no-untyped-def]
    rows = list(
        await session.scalars(
            select(model).where(column.like(_escape_like(ident) + "%", escape="\\")).limit(2)
        )
    )
    if len(rows) > 1:
        raise Ambiguous(f"{kind} identifier '{ident}' is ambiguous: it is a prefix of several ids")
    return rows[0] if rows else None


async def find_container(session: AsyncSession, ident: str) -> Container | None:
    if not ident:
        return None
    found = await session.get(Container, ident)
    if found is None:
        found = await session.scalar(select(Container).where(Container.name == ident))
    if found is None:
        found = await _by_prefix(session, Container, Container.id, ident, "container")
    return found


async def container(session: AsyncSession, ident: str, message: str) -> Container:
    found = await find_container(session, ident)
    if found is None:
        raise NotFound(message)
    return found


def split_nametag(nametag: str) -> tuple[str, str]:
    """`name[:tag]` -> (name, tag); no colon means `latest`; "" means untagged."""
    if nametag == "":
        return "", ""
    name, sep, tag = nametag.partition(":")
    if ":" in tag:
        raise InvalidInput(f"invalid name:tag '{nametag}': more than one ':'")
    return name, (tag if sep else "latest")


def split_snapshot(ident: str) -> tuple[str, str | None]:
    """`image@snap` -> ("image", "snap"); more than one `@` is refused."""
    base, sep, snap = ident.partition("@")
    if not sep:
        return ident, None
    if "@" in snap or not snap or not SNAPSHOT_PATTERN.match(snap):
        raise InvalidInput(f"invalid snapshot in image identifier '{ident}'")
    return base, snap


async def find_image(session: AsyncSession, ident: str) -> Image | None:
    """An image by exact id, by name[:tag], or by a unique id prefix (no '@' here)."""
    if not ident:
        return None
    found = await session.get(Image, ident)
    if found is not None:
        return found
    try:
        name, tag = split_nametag(ident)
    except InvalidInput:
        return None
    if name:
        found = await session.scalar(
            select(Image).where(Image.name == name, Image.tag == tag).order_by(Image.created.desc())
        )
        if found is not None:
            return found
    if ":" in ident:
        return None
    return await _by_prefix(session, Image, Image.id, ident, "image")


async def find_network(session: AsyncSession, ident: str) -> Network | None:
    if not ident:
        return None
    found = await session.get(Network, ident)
    if found is None:
        found = await session.scalar(select(Network).where(Network.name == ident))
    if found is None:
        found = await _by_prefix(session, Network, Network.id, ident, "network")
    return found
