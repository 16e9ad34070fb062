"""The service as deployed: `python -m app` in a real process, settings, migrations."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.settings import settings
from tests.helpers import ROOT, clean_env, serve


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/api/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_python_m_app_serves_docs_on_a_fresh_sqlite(tmp_path: Path) -> None:
    su = {"FIRST_SUPERUSER_EMAIL": "root@example.com", "FIRST_SUPERUSER_PASSWORD": "root password"}
    login = {"username": "root@example.com", "password": "root password"}
    for _ in range(2):  # the second start finds the schema and the superuser in place
        with serve(tmp_path, **su) as base:
            assert httpx.get(f"{base}/docs").status_code == 200
            assert "/api/auth/token" in httpx.get(f"{base}/openapi.json").text
            r = httpx.post(f"{base}/api/auth/token", data=login)
            assert r.status_code == 200, r.text
            assert r.json()["scope"] == "regular admin superuser"
            r = httpx.post(
                f"{base}/api/auth/signup",
                json={"email": "new@example.com", "password": "password", "full_name": "N"},
            )
            assert r.status_code in (201, 409)
    assert (tmp_path / "app.db").exists()


@pytest.mark.parametrize("key", [None, "dev-secret-key-change-me", "change-me"])
def test_production_refuses_a_sample_secret_key(tmp_path: Path, key: str | None) -> None:
    env = clean_env(ENVIRONMENT="production")
    env.pop("SECRET_KEY", None)
    if key is not None:
        env["SECRET_KEY"] = key
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, timeout=30
    )
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "SECRET_KEY" in lines[0], lines


def test_production_starts_with_a_real_key(tmp_path: Path) -> None:
    with serve(tmp_path, ENVIRONMENT="production", SECRET_KEY=uuid4().hex * 2) as base:
        assert httpx.get(f"{base}/api/health/ready").status_code == 200


@contextmanager
def scratch_database() -> Iterator[str]:
    """An empty database of the kind the suite runs on."""
    if settings.is_sqlite:
        path = Path(make_url(settings.async_database_url).database or "").with_name("scratch.db")
        path.unlink(missing_ok=True)
        yield f"sqlite+aiosqlite:///{path}"
        return
    import asyncio

    url = make_url(settings.async_database_url)
    name = f"scratch_{uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


def test_migrations_up_down_up(tmp_path: Path) -> None:
    with scratch_database() as url:

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
