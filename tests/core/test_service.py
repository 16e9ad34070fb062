"""The service as deployed: `python -m app` in a real process, its health, the settings it
refuses, and its worker processes."""

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from app.core.settings import settings
from tests.helpers import API8, ROOT, login, pg_only, signup
from tests.servers import clean_env, listeners, serve, serve_suite_db


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
            assert httpx.get(f"{base}/docs", timeout=30).status_code == 200
            assert "/api/auth/token" in httpx.get(f"{base}/openapi.json", timeout=30).text
            r = httpx.post(f"{base}/api/auth/token", data=login, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["scope"] == "regular admin superuser"
            r = httpx.post(
                f"{base}/api/auth/signup",
                json={"email": "new@example.com", "password": "password", "full_name": "N"},
                timeout=30,
            )
            assert r.status_code in (201, 409)
    assert (tmp_path / "app.db").exists()


@API8
@pytest.mark.parametrize("key", [None, "dev-secret-key-change-me", "change-me", "short", "x" * 31])
def test_production_refuses_a_sample_or_short_secret_key(tmp_path: Path, key: str | None) -> None:
    env = clean_env(ENVIRONMENT="production")
    env.pop("SECRET_KEY", None)
    if key is not None:
        env["SECRET_KEY"] = key
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, timeout=30
    )
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Refusing to start"), lines
    assert "SECRET_KEY" in lines[0], lines


@API8
def test_the_image_runs_in_production_where_the_sample_settings_are_refused(
    tmp_path: Path,
) -> None:
    """A bare `docker run` must not sign tokens with a published key: the image's last
    stage sets production, and .env.sample copied as is does not start there."""
    runtime = (ROOT / "Dockerfile").read_text().rpartition("\nFROM ")[2]
    assert re.search(r"^\s*ENVIRONMENT=production\b", runtime, re.MULTILINE), runtime
    sample = (ROOT / ".env.sample").read_text()
    (tmp_path / ".env").write_text(sample.replace("ENVIRONMENT=development", ""))
    env = clean_env(ENVIRONMENT="production")
    env.pop("SECRET_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, timeout=30
    )
    assert proc.returncode != 0 and "SECRET_KEY" in proc.stderr.decode(), proc.stderr


def test_production_starts_with_a_real_key(tmp_path: Path) -> None:
    with serve(tmp_path, ENVIRONMENT="production", SECRET_KEY=uuid4().hex * 2) as base:
        assert httpx.get(f"{base}/api/health/ready", timeout=30).status_code == 200


def test_sqlite_serves_with_one_worker_and_says_why(tmp_path: Path) -> None:
    with serve(tmp_path, WORKERS="2") as base:
        assert httpx.get(f"{base}/api/health", timeout=30).status_code == 200
    log = (tmp_path / "server.log").read_text()
    assert "WORKERS=2 ignored: SQLite serves from one process" in log


@pg_only
async def test_two_workers_listen_and_share_login_limits(tmp_path: Path) -> None:
    with serve_suite_db(tmp_path, WORKERS="2") as base:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await signup(http, "ada@w.example")).status_code == 201
        # One listener per worker process, besides this test process's own.
        deadline = time.monotonic() + 10
        while await listeners() < 3:
            assert time.monotonic() < deadline, await listeners()
            await asyncio.sleep(0.1)

        async def guess() -> int:
            async with httpx.AsyncClient(base_url=base) as own:  # a connection each
                return (await login(own, "ada@w.example", "wrong password")).status_code

        codes = [await guess() for _ in range(settings.login_failures_per_email + 1)]
        assert codes[-1] == 429 and codes.count(401) == settings.login_failures_per_email
