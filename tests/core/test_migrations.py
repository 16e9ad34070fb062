"""The migrations build the schema the models describe, and come down and up again."""

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.settings import async_url, settings
from tests.helpers import ROOT, new_thread, send, sign_up
from tests.servers import clean_env, scratch_postgres, serve


@contextmanager
def empty_database(tmp_path: Path) -> Iterator[str]:
    """An empty database of the kind the suite runs on."""
    if settings.is_sqlite:
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
    else:
        with scratch_postgres(settings.database_url) as url:
            yield url


def alembic(url: str, *args: str) -> str:
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


def test_migrations_up_down_up(tmp_path: Path) -> None:
    with empty_database(tmp_path) as url:
        alembic(url, "upgrade", "head")
        assert "No new upgrade operations detected" in alembic(url, "check")
        alembic(url, "downgrade", "base")
        alembic(url, "upgrade", "head")
        assert "(head)" in alembic(url, "current")


def test_mentions_made_before_they_carried_their_thread_are_given_it(tmp_path: Path) -> None:
    with empty_database(tmp_path) as url:
        alembic(url, "upgrade", "head")
        with serve(tmp_path, DATABASE_URL=url) as base:
            asyncio.run(mention_in_two_threads(base))
        alembic(url, "downgrade", "e146dc5bffa5")  # mentions without their thread
        alembic(url, "upgrade", "head")
        rows = asyncio.run(mention_threads(url))
        assert len(rows) == 2 and len({mention for mention, _ in rows}) == 2
        assert all(mention == message for mention, message in rows)


async def mention_in_two_threads(base: str) -> None:
    async with AsyncClient(base_url=base) as client:
        ada = await sign_up(client, "ada@example.com", "Ada")
        bob = await sign_up(client, "bob@example.com", "Bob")
        for _ in range(2):
            thread = await new_thread(client, ada, bob)
            await send(client, ada, thread["id"], "Bob?", mention_ids=[bob["id"]])


async def mention_threads(url: str) -> list[tuple[int, int]]:
    """(the mention's thread, its message's thread) of every mention."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            sql = text(
                "SELECT mention.thread_id, message.thread_id FROM mention "
                "JOIN message ON message.id = mention.message_id"
            )
            return [(a, b) for a, b in await conn.execute(sql)]
    finally:
        await engine.dispose()
