"""Schema migrations: Alembic builds the schema; a current database skips it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from kleened.store import db

ROOT = Path(__file__).resolve().parents[2]


def test_the_head_is_read_from_the_migration_files():
    versions = ROOT / "migrations" / "versions"
    newest = sorted(p.stem.split("_")[0] for p in versions.glob("[0-9]*.py"))[-1]
    assert db.head_revisions() == {newest}


def test_a_fresh_or_stale_database_is_migrated_and_a_current_one_is_left_alone(tmp_path):
    path = tmp_path / "kleened.db"
    assert not db.at_head(path)
    db.migrate(path)
    assert db.at_head(path)
    with sqlite3.connect(path) as conn:
        assert "containers" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    assert not db.at_head(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (*db.head_revisions(),))
    assert db.at_head(path)


def test_a_current_database_is_opened_without_loading_alembic(tmp_path):
    path = tmp_path / "kleened.db"
    db.migrate(path)
    probe = (
        "import sys; from pathlib import Path; from kleened.store import db; "
        "db.migrate(Path(sys.argv[1])); print('alembic' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert run.stdout.strip() == "False", run.stderr
    assert path.stat().st_mode & 0o777 == 0o600
