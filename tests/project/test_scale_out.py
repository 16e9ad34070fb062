"""The scale-out recipe in deploy/, for real: nginx (deploy/nginx.conf) in front of two
`python -m app` processes, PgBouncer in transaction mode (deploy/pgbouncer.ini) in front of
PostgreSQL. Every request below goes through nginx; nginx's access log tells which process
served it, so the tests can check that the two processes really shared the work. The
recipe itself starts in scale_out.py.

Needs Debian's nginx and pgbouncer (.ci/run installs them) and PostgreSQL.
"""

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.core.settings import settings
from tests.helpers import PASSWORD, close_code, next_event
from tests.project.scale_out import (
    FAILURES,
    NGINX,
    PGBOUNCER,
    Stack,
    scale_out_stack,
    shared_folder,
    start_nginx,
)
from tests.servers import APP, clean_env, free_port

pytestmark = [
    pytest.mark.skipif(settings.is_sqlite, reason="PgBouncer and LISTEN need PostgreSQL"),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
    pytest.mark.skipif(
        PGBOUNCER is None, reason="pgbouncer is not installed (apt-get install pgbouncer)"
    ),
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with scale_out_stack() as running:
        yield running


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        yield client


async def user(http: httpx.AsyncClient) -> dict[str, Any]:
    email = f"{uuid4().hex[:12]}@example.com"
    r = await http.post(
        "/api/auth/signup", json={"email": email, "password": PASSWORD, "full_name": "S"}
    )
    assert r.status_code == 201, r.text
    r = await http.post("/api/auth/token", data={"username": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    return {**r.json(), "id": 0, "email": email, "headers": {"Authorization": f"Bearer {token}"}}


async def new_thread(http: httpx.AsyncClient, owner: dict[str, Any], *members: int) -> int:
    r = await http.post(
        "/api/threads", json={"member_ids": list(members)}, headers=owner["headers"]
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def user_id(http: httpx.AsyncClient, someone: dict[str, Any]) -> int:
    r = await http.get("/api/users/me", headers=someone["headers"])
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


# --- the plumbing: no new app behaviour needed ------------------------------------------


async def test_pgbouncer_pools_in_transaction_mode(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.pooled_url, statement_cache_size=0)
    try:
        assert (
            await conn.fetchval("SELECT current_database()")
            == make_url(settings.async_database_url).database
        )
    finally:
        await conn.close()


async def test_nginx_spreads_requests_over_both_processes(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    before = len(stack.served_by("GET", "/api/health"))
    for _ in range(4):
        assert (await http.get("/api/health")).status_code == 200
    assert set(stack.served_by("GET", "/api/health")[before:]) == set(stack.apps)


async def test_nginx_upgrades_websockets(stack: Stack) -> None:
    # The app accepts, then closes a bad token with 4401: only an upgraded socket gets that.
    async with connect(stack.base.replace("http", "ws", 1) + "/api/ws?token=bad") as ws:
        assert await close_code(ws) == 4401


# --- what the app must do behind a pooler and a proxy ----------------------------------


async def test_an_event_crosses_processes_through_nginx(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    ada, bob = await user(http), await user(http)
    thread_id = await new_thread(http, ada, await user_id(http, bob))
    ws_url = stack.base.replace("http", "ws", 1) + f"/api/ws?token={bob['access_token']}"
    path = f"/api/threads/{thread_id}/messages"
    async with connect(ws_url) as ws:
        assert (await next_event(ws))["type"] == "ready"  # subscribed
        for text in ("one", "two"):  # round robin: one of the two lands on the other process
            r = await http.post(path, json={"body": text}, headers=ada["headers"])
            assert r.status_code == 201, r.text
            event = await next_event(ws)
            assert event["type"] == "message.created" and event["data"]["body"] == text
    await asyncio.sleep(0.2)  # nginx logs a socket when it closes
    [socket_process] = stack.served_by("GET", "/api/ws")[-1:]
    assert set(stack.served_by("POST", path)) - {socket_process}, "no send crossed processes"


async def test_login_limits_hold_across_processes(stack: Stack, http: httpx.AsyncClient) -> None:
    victim = await user(http)
    wrong = {"username": victim["email"], "password": "wrong password"}
    before = len(stack.served_by("POST", "/api/auth/token"))
    for _ in range(FAILURES):
        assert (await http.post("/api/auth/token", data=wrong)).status_code == 401
    assert set(stack.served_by("POST", "/api/auth/token")[before:]) == set(stack.apps)
    right = {"username": victim["email"], "password": PASSWORD}
    r = await http.post("/api/auth/token", data=right)
    assert r.status_code == 429, r.text


async def test_an_idempotent_send_through_both_processes_at_once(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    ada = await user(http)
    thread_id = await new_thread(http, ada)
    path = f"/api/threads/{thread_id}/messages"
    body = {"body": "once", "client_id": uuid4().hex}
    responses = await asyncio.gather(
        *(http.post(path, json=body, headers=ada["headers"]) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert set(stack.served_by("POST", path)) == set(stack.apps)
    r = await http.get(path, headers=ada["headers"])
    assert [m["body"] for m in r.json()["items"]] == ["once"]


async def test_the_largest_upload_passes_nginx(stack: Stack, http: httpx.AsyncClient) -> None:
    ada = await user(http)
    largest = os.urandom(settings.max_upload_bytes)
    for data, expected in ((largest, 201), (largest + b"!", 413)):
        files = {"file": ("big.bin", data)}
        r = await http.post("/api/uploads", files=files, headers=ada["headers"])
        assert r.status_code == expected, r.text


async def test_no_socket_token_is_logged_while_the_apps_are_away() -> None:
    """nginx's error lines quote the request line, which for a socket holds its token."""
    folder = shared_folder("fab-nginx-")
    secret = uuid4().hex
    try:
        with ExitStack() as stack:
            away = [f"127.0.0.1:{free_port()}" for _ in range(2)]
            base = start_nginx(stack, folder / "nginx", away)
            url = base.replace("http", "ws", 1) + f"/api/ws?token={secret}"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 502
        logs = "".join((folder / "nginx" / log).read_text() for log in ("access.log", "error.log"))
        assert '"GET /api/ws" 502' in logs
        assert secret not in logs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_pooler_is_refused_without_a_direct_url(stack: Stack, tmp_path: Path) -> None:
    """Taken for PostgreSQL, PgBouncer would fail some statements at random and LISTEN
    through it would hear nothing: the process refuses to start instead."""
    env = clean_env(DATABASE_URL=stack.pooled_url, PORT=str(free_port()))
    env.pop("DATABASE_URL_DIRECT", None)
    done = subprocess.run(APP, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"through a pooler" in done.stdout + done.stderr, done.stderr.decode()[-2000:]
