"""Tests talk to the real app over HTTP (httpx's ASGI transport) and to a real database:
an SQLite file by default, PostgreSQL when DATABASE_URL says so. Each test starts from
empty tables. Shared helpers live in tests/helpers.py, the servers a test starts in
tests/servers.py; the fixtures live here."""

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from itertools import count
from typing import Any

_scratch = tempfile.mkdtemp(prefix="fab-tests-")
os.environ.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{_scratch}/test.db")
os.environ["UPLOAD_DIR"] = f"{_scratch}/uploads"  # never the working folder's
os.environ.pop("S3_BUCKET", None)
os.environ["ENVIRONMENT"] = "development"
os.environ.pop("FIRST_SUPERUSER_EMAIL", None)

import asyncio  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

from app.core.accounts.tokens import callers  # noqa: E402
from app.core.db import engine, migrate_to_head  # noqa: E402
from app.core.http import SERVER_OPTIONS  # noqa: E402
from app.core.settings import settings  # noqa: E402
from app.main import app  # noqa: E402
from tests.helpers import (  # noqa: E402
    PASSWORD,
    S3_BUCKET,
    S3_CREDENTIALS,
    MakeUser,
    User,
    login,
    set_scopes,
)
from tests.servers import MAIL_FRONTEND, Inbox, free_port  # noqa: E402

_ids = count(1)


@pytest.fixture(scope="session", autouse=True)
async def schema() -> AsyncIterator[None]:
    """The schema as the migrations build it, on an empty database."""
    if not settings.is_sqlite:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    await asyncio.to_thread(migrate_to_head)
    async with app.router.lifespan_context(app):  # the realtime hub runs as in production
        yield


@pytest.fixture(autouse=True)
async def clean_tables() -> AsyncIterator[None]:
    yield
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    for attempt in range(5):
        try:
            async with engine.begin() as conn:
                if settings.is_sqlite:
                    for name in tables:
                        await conn.execute(text(f'DELETE FROM "{name}"'))
                else:
                    names = ", ".join(f'"{n}"' for n in tables)
                    await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            break
        except DBAPIError:  # the job runner, mid-round on rows a test's server left: again
            if attempt == 4:
                raise
            await asyncio.sleep(0.2)
    callers.forget()  # the rows it remembers were removed behind its back


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
def make_user(client: httpx.AsyncClient) -> MakeUser:
    """Sign up (and log in) a new user; `scopes` are granted straight in the database."""

    async def make(
        scopes: list[str] | None = None, email: str | None = None, full_name: str | None = None
    ) -> User:
        n = next(_ids)
        email = email or f"user{n}@example.com"
        body = {"email": email, "password": PASSWORD, "full_name": full_name or f"User {n}"}
        r = await client.post("/api/auth/signup", json=body)
        assert r.status_code == 201, r.text
        user = User(r.json())
        if scopes:  # before the login, so that its token carries them
            await set_scopes(user["id"], scopes)
            user["scopes"] = scopes
        token = await login(client, email)
        assert token.status_code == 200, token.text
        user["token"] = token.json()
        return user

    return make


@pytest.fixture(scope="session")
async def live_server() -> AsyncIterator[str]:
    """A real uvicorn on a free port, in this event loop (same engine, same hub)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            **SERVER_OPTIONS,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    """The in-process sender pointed at a fresh SMTP server (it reads settings per round)."""
    box = Inbox()
    box.controller.start()
    for name, value in {
        "smtp_host": "127.0.0.1",
        "smtp_port": box.port,
        "smtp_security": "none",
        "frontend_url": MAIL_FRONTEND,
        "mail_retry_max_seconds": 1,
    }.items():
        monkeypatch.setattr(settings, name, value)
    yield box
    box.controller.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 as a real HTTP server, in this process, on a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
async def s3_client(s3_endpoint: str) -> AsyncIterator[Any]:
    """A raw client with the bucket S3_BUCKET created, to look behind the app's storage."""
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS
    ) as client:
        await client.create_bucket(Bucket=S3_BUCKET)
        yield client
