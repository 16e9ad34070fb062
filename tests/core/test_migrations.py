"""The migrations build the schema the models describe, and come down and up again."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.settings import settings
from tests.helpers import ROOT, clean_env, scratch_postgres


@contextmanager
def empty_database(tmp_path: Path) -> Iterator[str]:
    """An empty database of the kind the suite runs on."""
    if settings.is_sqlite:
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
    else:
        with scratch_postgres(settings.database_url) as url:
            yield url


def test_migrations_up_down_up(tmp_path: Path) -> None:
    with empty_database(tmp_path) as url:

        def alembic(*args: str) -> str:
            proc = subprocess.run(
                [sys.executable, "-m", "alembic", *args],
                cwd=ROOT,
                env=clean_env(DATABASE_URL=url),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            return proc.stdout + proc.stderr

        alembic("upgrade", "head")
        assert "No new upgrade operations detected" in alembic("check")
        alembic("downgrade", "base")
        alembic("upgrade", "head")
        assert "(head)" in alembic("current")
