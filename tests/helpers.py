"""What the tests (and bench/) share: a real server process, users, threads, messages,
WebSocket events, direct reads of the database.

Nothing from app/ is imported at module level: conftest sets DATABASE_URL before the app
is first imported, and bench/ drives servers it starts itself, with their own settings.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# The bucket the s3_client fixture creates on moto's server, and the keys moto takes.
S3_BUCKET = "uploads"
S3_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
APP = (sys.executable, "-m", "app")

# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the suite's database and mode, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "ENVIRONMENT"}}
    return {**env, **extra}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def start(
    cwd: Path,
    env: dict[str, str],
    *,
    argv: Sequence[str] = APP,
    log: Path | None = None,
    ready: str = "/api/health",
    timeout: float = 30,
) -> Iterator[Server]:
    """`argv` (`python -m app` by default) on a free port (given to it as PORT), run in
    `cwd` with exactly `env`, its output in `log`; yielded once `ready` answers 200,
    stopped on exit."""
    port = free_port()
    log = log or cwd / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it in order
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(server.base + ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, server.log_tail()
            assert time.monotonic() < deadline, f"server did not start:\n{server.log_tail()}"
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def serve(cwd: Path, **env: str) -> Iterator[str]:
    """`python -m app` in `cwd` (so its default SQLite file lands there), its output in
    `cwd / "server.log"`; yields its base URL."""
    with start(cwd, clean_env(**env)) as server:
        yield server.base


# --------------------------------------------------------------------------- HTTP


class User(dict[str, Any]):
    """A signed-up user: its UserPrivate fields, plus `headers` and `token` of a login."""

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self["token"]["access_token"])


MakeUser = Callable[..., Awaitable[User]]  # the make_user fixture


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, scope: str | None = None
) -> httpx.Response:
    form = {"username": email, "password": password}
    if scope is not None:
        form["scope"] = scope
    return await client.post("/api/auth/token", data=form)


async def sign_up(
    client: httpx.AsyncClient, email: str, full_name: str, password: str = PASSWORD
) -> User:
    """A new user, logged in."""
    body = {"email": email, "password": password, "full_name": full_name}
    r = await client.post("/api/auth/signup", json=body)
    assert r.status_code == 201, r.text
    token = await login(client, email, password)
    assert token.status_code == 200, token.text
    return User(r.json(), token=token.json())


async def new_thread(
    client: httpx.AsyncClient, owner: User, *members: User, title: str = "t"
) -> Any:
    body = {"title": title, "member_ids": [m["id"] for m in members]}
    r = await client.post("/api/threads", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def send(client: httpx.AsyncClient, user: User, thread_id: int, body: str = "hi") -> Any:
    r = await client.post(
        f"/api/threads/{thread_id}/messages", json={"body": body}, headers=user.headers
    )
    assert r.status_code == 201, r.text
    return r.json()


def multipart(
    data: bytes,
    filename: bytes | str | None = "a.bin",
    field: str = "file",
    content_type: str = "application/octet-stream",
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of one part, and its Content-Type header. Built by hand,
    so a file name's bytes go as they are (httpx would escape control characters)."""
    boundary = "----test" + os.urandom(8).hex()
    name = filename.encode() if isinstance(filename, str) else filename
    disposition = f'form-data; name="{field}"'.encode()
    if name is not None:
        disposition += b'; filename="' + name + b'"'
    head = f"--{boundary}\r\nContent-Disposition: ".encode() + disposition
    head += f"\r\nContent-Type: {content_type}\r\n\r\n".encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def upload(
    client: httpx.AsyncClient, user: User, data: bytes = b"hello", filename: str = "a.txt"
) -> Any:
    """POST /api/uploads: the Upload."""
    body, headers = multipart(data, filename)
    r = await client.post("/api/uploads", content=body, headers={**user.headers, **headers})
    assert r.status_code == 201, r.text
    return r.json()


async def page(client: httpx.AsyncClient, user: User, thread: Any, **params: Any) -> Any:
    """A page of a thread's messages."""
    url = f"/api/threads/{thread['id']}/messages"
    r = await client.get(url, params=params, headers=user.headers)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"items", "has_more"}
    return r.json()


# --------------------------------------------------------------------------- WebSocket


# The first frame on a subscribed socket: from here on every committed change arrives.
READY: dict[str, Any] = {"type": "ready", "thread_id": None, "data": {}}


def ws_url(server: str, token: str) -> str:
    """`server` is host:port."""
    return f"ws://{server}/api/ws?token={token}"


async def listen(server: str, user: User, **kwargs: Any) -> ClientConnection:
    """A socket of `user`, once subscribed."""
    ws = await connect(ws_url(server, user["token"]["access_token"]), **kwargs)
    # Subscribed: everything committed from here on will arrive.
    assert await next_event(ws) == READY
    return ws


async def next_event(ws: ClientConnection, timeout: float = 5) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_silent(ws: ClientConnection, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), wait)


async def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


# --------------------------------------------------------------------------- database


async def set_scopes(user_id: int, scopes: list[str]) -> None:
    from sqlalchemy import text

    from app.core.db import engine

    async with engine.begin() as conn:
        await conn.execute(
            text('UPDATE "user" SET scopes = :s WHERE id = :id'),
            {"s": json.dumps(scopes), "id": user_id},
        )


async def fetch(sql: str, **params: Any) -> list[Any]:
    """Read the database directly, to check what a request stored."""
    from sqlalchemy import text

    from app.core.db import engine

    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


@contextmanager
def count_statements() -> Iterator[list[str]]:
    """The SQL statements sent while the block runs (this process's engine)."""
    from sqlalchemy import event

    from app.core.db import engine

    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
