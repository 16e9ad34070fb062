"""Two real `python -m app` processes on one PostgreSQL: events cross between them through
LISTEN/NOTIFY."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from app.settings import settings
from tests.conftest import PASSWORD, fetch
from tests.test_realtime import assert_silent, close_code, next_event
from tests.test_service import free_port

pytestmark = pytest.mark.skipif(
    settings.is_sqlite, reason="fan-out across processes needs PostgreSQL"
)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[str]]:
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app"],
            env={**os.environ, "PORT": str(port), "DATABASE_URL": settings.database_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    bases = [f"127.0.0.1:{port}" for port in ports]
    try:
        for base, proc in zip(bases, procs, strict=True):
            for _ in range(300):
                try:
                    if httpx.get(f"http://{base}/api/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, "server exited"
                import time

                time.sleep(0.1)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


class Peer:
    """A user with an HTTP client on one server."""

    def __init__(self, base: str, user: dict[str, Any]) -> None:
        self.base, self.user = base, user
        token = user["token"]["access_token"]
        self.http = httpx.AsyncClient(
            base_url=f"http://{base}", headers={"Authorization": f"Bearer {token}"}
        )

    @property
    def token(self) -> str:
        return str(self.user["token"]["access_token"])

    def listen(self, base: str | None = None) -> Any:
        return connect(f"ws://{base or self.base}/api/ws?token={self.token}")

    async def send(self, thread_id: int, body: str) -> Any:
        r = await self.http.post(f"/api/threads/{thread_id}/messages", json={"body": body})
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
async def peers(servers: list[str]) -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    async with httpx.AsyncClient(base_url=f"http://{servers[0]}") as c:
        for n in range(4):
            email = f"peer{n}@example.com"
            r = await c.post(
                "/api/auth/signup",
                json={"email": email, "password": PASSWORD, "full_name": f"P{n}"},
            )
            assert r.status_code == 201
            token = await c.post("/api/auth/token", data={"username": email, "password": PASSWORD})
            made.append(Peer(servers[n % 2], {**r.json(), "token": token.json()}))
    yield made
    for peer in made:
        await peer.http.aclose()


async def new_thread(owner: Peer, *members: Peer) -> int:
    r = await owner.http.post("/api/threads", json={"member_ids": [m.user["id"] for m in members]})
    assert r.status_code == 201
    return int(r.json()["id"])


async def ready(*sockets: Any) -> None:
    for ws in sockets:  # subscribed: what is committed from now on arrives
        assert (await next_event(ws))["type"] == "ready"


async def test_events_cross_processes(servers: list[str], peers: list[Peer]) -> None:
    a, b, stranger, _ = peers  # a and stranger talk to server 0, b to server 1
    async with b.listen(servers[1]) as ws_b, stranger.listen(servers[1]) as ws_stranger:
        await ready(ws_b, ws_stranger)
        thread_id = await new_thread(a, b)
        assert (await next_event(ws_b))["type"] == "thread.created"
        message = await a.send(thread_id, "across")  # posted on server 0 ...
        event = await next_event(ws_b)  # ... received on server 1
        assert event == {
            "type": "message.created", "thread_id": thread_id, "data": message,
            "version": message["version"],
        }  # fmt: skip
        message = await b.send(thread_id, "back")  # posted on server 1, seen on server 1 too
        assert (await next_event(ws_b))["data"] == message
        await assert_silent(ws_stranger)


async def test_order_holds_across_processes(servers: list[str], peers: list[Peer]) -> None:
    a, b, c, d = peers
    thread_id = await new_thread(a, b, c, d)
    async with a.listen(servers[0]) as ws0, a.listen(servers[1]) as ws1:
        await ready(ws0, ws1)
        sent = await asyncio.gather(*(p.send(thread_id, f"m{n}") for n in range(10) for p in peers))
        expected = sorted(m["id"] for m in sent)
        for ws in (ws0, ws1):
            got = [(await next_event(ws))["data"]["id"] for _ in range(len(sent))]
            assert got == expected


async def test_removed_member_stops_receiving(servers: list[str], peers: list[Peer]) -> None:
    a, b, *_ = peers
    thread_id = await new_thread(a, b)
    async with b.listen(servers[1]) as ws:
        await ready(ws)
        r = await a.http.delete(f"/api/threads/{thread_id}/members/{b.user['id']}")
        assert r.status_code == 204
        assert (await next_event(ws))["type"] == "member.removed"
        await a.send(thread_id, "not for b")
        await assert_silent(ws)


async def test_bad_and_revoked_tokens_get_4401(servers: list[str], peers: list[Peer]) -> None:
    _, b, *_ = peers
    async with connect(f"ws://{servers[1]}/api/ws?token=nonsense") as ws:
        assert await close_code(ws) == 4401
    async with b.listen(servers[0]) as ws:
        await ready(ws)
        logout = await httpx.AsyncClient(base_url=f"http://{servers[1]}").post(
            "/api/auth/logout", headers={"Authorization": f"Bearer {b.token}"}
        )
        assert logout.status_code == 204
        assert await close_code(ws, timeout=3) == 4401


async def test_listener_reconnects_and_sockets_are_told(
    servers: list[str], peers: list[Peer]
) -> None:
    a, b, *_ = peers
    thread_id = await new_thread(a, b)
    async with b.listen(servers[0]) as ws:
        await ready(ws)
        await fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'app-events'"
        )
        # It may have missed events: it is closed with 1012 so the client catches up.
        assert await close_code(ws, timeout=10) == 1012
    for _ in range(50):  # both processes listen again within a few seconds
        rows = await fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'app-events'"
        )
        if rows[0][0] >= 2:
            break
        await asyncio.sleep(0.2)
    async with b.listen(servers[0]) as ws:
        await ready(ws)
        message = await a.send(thread_id, "after the outage")
        assert (await next_event(ws))["data"] == message
