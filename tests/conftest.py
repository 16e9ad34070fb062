"""Tests talk to the real app over HTTP (httpx's ASGI transport) and to a real database:
an SQLite file by default, PostgreSQL when DATABASE_URL says so. Each test starts from
empty tables."""

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import count
from typing import Any

_scratch = tempfile.mkdtemp(prefix="fab-tests-")
os.environ.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{_scratch}/test.db")
os.environ["ENVIRONMENT"] = "development"
os.environ.pop("FIRST_SUPERUSER_EMAIL", None)

import asyncio  # noqa: E402
import json  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

from app.db import engine, migrate_to_head  # noqa: E402
from app.main import app  # noqa: E402
from app.settings import settings  # noqa: E402

PASSWORD = "correct horse battery"
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
    async with engine.begin() as conn:
        if settings.is_sqlite:
            for name in tables:
                await conn.execute(text(f'DELETE FROM "{name}"'))
        else:
            names = ", ".join(f'"{n}"' for n in tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


class User(dict[str, Any]):
    """A signed-up user: its UserPrivate fields, plus `headers` and `token` of a login."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self['token']['access_token']}"}


MakeUser = Callable[..., Awaitable[User]]


async def login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, scope: str | None = None
) -> httpx.Response:
    form = {"username": email, "password": password}
    if scope is not None:
        form["scope"] = scope
    return await client.post("/api/auth/token", data=form)


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
        if scopes:
            await set_scopes(user["id"], scopes)
            user["scopes"] = scopes
        token = await login(client, email)
        assert token.status_code == 200, token.text
        user["token"] = token.json()
        return user

    return make


async def set_scopes(user_id: int, scopes: list[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text('UPDATE "user" SET scopes = :s WHERE id = :id'),
            {"s": json.dumps(scopes), "id": user_id},
        )


async def fetch(sql: str, **params: Any) -> list[Any]:
    """Read the database directly, to check what a request stored."""
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


@pytest.fixture(scope="session")
async def live_server() -> AsyncIterator[str]:
    """A real uvicorn on a free port, in this event loop (same engine, same hub)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    await task
