"""The SQLite database: one file, WAL, synchronous=FULL, foreign keys on.

Schema changes happen only through Alembic (`migrate` below runs them, at
start-up and from `kleened migrate`). Sessions are async (aiosqlite); writes
are serialised by SQLite itself, with a busy timeout instead of failures.
"""

from __future__ import annotations

import os
import re
import sqlite3
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

_REVISION = re.compile(r"^(down_)?revision\s*(?::[^=]*)?=\s*(?:\"([^\"]*)\"|None)", re.MULTILINE)


def _set_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def ensure_db_file(path: Path) -> None:
    """Create the database file (and its directory) private to root: mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def alembic_config(db_path: Path) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("kleened.migrations")))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{db_path}")
    return cfg


def sync_engine(db_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{db_path}")
    event.listen(engine, "connect", _set_pragmas)
    return engine


def head_revisions() -> set[str]:
    """The revisions no other revision builds on, read from the migration files."""
    revisions, parents = set(), set()
    for script in (resources.files("kleened.migrations") / "versions").iterdir():
        if not script.name.endswith(".py") or script.name.startswith("__"):
            continue
        for down, value in _REVISION.findall(script.read_text()):
            (parents if down else revisions).add(value)
    return revisions - parents


def at_head(db_path: Path) -> bool:
    """Whether the database already has the newest schema (read without Alembic)."""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return False
    return {row[0] for row in rows} == head_revisions()


def migrate(db_path: Path) -> None:
    """Bring the schema to the newest revision; a no-op when it is already there.

    Alembic (~10 MB resident once imported) is loaded only when there is
    something to migrate, so a daemon restarting on a current database stays
    small.
    """
    ensure_db_file(db_path)
    if at_head(db_path):
        _private_side_files(db_path)
        return
    from alembic import command

    engine = sync_engine(db_path)
    try:
        with engine.begin() as connection:
            cfg = alembic_config(db_path)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    _private_side_files(db_path)


def _private_side_files(db_path: Path) -> None:
    # WAL side files inherit the umask; keep them private too.
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db_path}{suffix}")
        if side.exists():
            os.chmod(side, 0o600)


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def async_engine(db_path: Path) -> AsyncEngine:
    # JSON columns (cmd, env, jail parameters) are decoded for every listed row.
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{db_path}", json_serializer=_json_text, json_deserializer=orjson.loads
    )
    event.listen(engine.sync_engine, "connect", _set_pragmas)
    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)
