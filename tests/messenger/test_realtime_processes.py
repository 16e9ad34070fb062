"""Two real `python -m app` processes (or one with two workers) on one PostgreSQL: events
cross between them through LISTEN/NOTIFY."""

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.core.events import bus
from app.core.settings import settings
from app.messenger import realtime
from tests.helpers import (
    API1,
    API2,
    assert_silent,
    bearer,
    close_code,
    in_order_or_1012,
    next_event,
    pg_only,
    sign_up,
    ws_url,
)
from tests.servers import cut_listeners, listening_again, serve_suite_db, start

pytestmark = pg_only


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    with ExitStack() as stack:
        started = [
            stack.enter_context(
                start(tmp_path_factory.mktemp("server"), env, ready="/api/health/ready")
            )
            for _ in range(2)
        ]
        yield [s.base.removeprefix("http://") for s in started]


class Peer:
    """A user with an HTTP client on one server."""

    def __init__(self, base: str, user: dict[str, Any]) -> None:
        self.base, self.user = base, user
        token = user["token"]["access_token"]
        self.http = httpx.AsyncClient(base_url=f"http://{base}", headers=bearer(token))

    @property
    def token(self) -> str:
        return str(self.user["token"]["access_token"])

    def listen(self, base: str | None = None) -> Any:
        return connect(ws_url(base or self.base, self.token))

    async def send(self, thread_id: int, body: str) -> Any:
        r = await self.http.post(f"/api/threads/{thread_id}/messages", json={"body": body})
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
async def peers(servers: list[str]) -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    async with httpx.AsyncClient(base_url=f"http://{servers[0]}") as c:
        for n in range(4):
            made.append(Peer(servers[n % 2], await sign_up(c, f"peer{n}@example.com", f"P{n}")))
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


def everyone(servers: list[str]) -> int:
    """The listeners there are once all are connected: the servers', and this process's."""
    return len(servers) + 1


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
    """What a socket receives is in version order; an event that came more than the hold
    late (a busy machine) closes the socket with 1012, and the changes feed from the last
    version without a gap brings the client the rest."""
    a, b, c, d = peers
    thread_id = await new_thread(a, b, c, d)
    async with a.listen(servers[0]) as ws0, a.listen(servers[1]) as ws1:
        await ready(ws0, ws1)
        sent = await asyncio.gather(*(p.send(thread_id, f"m{n}") for n in range(10) for p in peers))
        by_version = {m["version"]: m["id"] for m in sent}
        for ws in (ws0, ws1):
            versions, unbroken = await in_order_or_1012(ws, len(sent), min(by_version) - 1)
            caught_up = await a.http.get(
                f"/api/threads/{thread_id}/changes", params={"since": unbroken, "limit": 100}
            )
            assert caught_up.status_code == 200, caught_up.text
            seen = {by_version[v] for v in versions} | {m["id"] for m in caught_up.json()["items"]}
            assert seen == set(by_version.values())
            if ws.close_code is None:
                assert versions == sorted(by_version)


@API1
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


@API2
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
        await cut_listeners()
        # It may have missed events: it is closed with 1012 so the client catches up.
        assert await close_code(ws, timeout=10) == 1012
    await listening_again(everyone(servers))
    async with b.listen(servers[0]) as ws:
        await ready(ws)
        message = await a.send(thread_id, "after the outage")
        assert (await next_event(ws))["data"] == message


async def cut_and_noticed() -> None:
    """Cut every listener and wait until this process knows it cannot hear."""
    await cut_listeners()
    for _ in range(100):
        if not bus.connected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("this process did not notice its listener drop")


async def test_no_ready_while_this_process_cannot_hear(
    servers: list[str], peers: list[Peer], live_server: str
) -> None:
    """A client back right after its 1012, while this process's listener is still away,
    is told `ready` only once the process hears again: then what another process commits
    reaches it."""
    a, b, *_ = peers
    thread_id = await new_thread(a, b)
    await cut_and_noticed()
    async with b.listen(live_server) as ws:
        assert (await next_event(ws, timeout=10))["type"] == "ready"
        assert bus.connected, "`ready` came while this process could not hear"
        message = await a.send(thread_id, "from the other process")
        assert (await next_event(ws))["data"] == message
    await listening_again(everyone(servers))


async def test_a_socket_that_waited_too_long_for_the_listener_gets_1012(
    servers: list[str], live_server: str, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(realtime, "HEARING_SECONDS", 0.2)
    await cut_and_noticed()
    async with peers[1].listen(live_server) as ws:
        with pytest.raises(ConnectionClosed):  # closed, with nothing before: no `ready`
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1012
    await listening_again(everyone(servers))


async def test_two_workers_share_events(tmp_path: Path) -> None:
    with serve_suite_db(tmp_path, WORKERS="2") as base:
        server = base.removeprefix("http://")
        async with httpx.AsyncClient(base_url=base) as http:
            ada = Peer(server, await sign_up(http, "ada@w.example", "ada"))
            bob = Peer(server, await sign_up(http, "bob@w.example", "bob"))
        try:
            thread_id = await new_thread(ada, bob)
            async with bob.listen() as ws:
                await ready(ws)

                async def send(n: int) -> None:  # a connection each: spread over the workers
                    async with httpx.AsyncClient(base_url=base, headers=bearer(ada.token)) as own:
                        path = f"/api/threads/{thread_id}/messages"
                        assert (await own.post(path, json={"body": f"m{n}"})).status_code == 201

                await asyncio.gather(*(send(n) for n in range(10)))
                got = [await next_event(ws) for _ in range(10)]
        finally:
            await ada.http.aclose()
            await bob.http.aclose()
    assert sorted(e["data"]["body"] for e in got) == sorted(f"m{n}" for n in range(10))


async def test_a_listener_cut_mid_traffic_costs_nothing_the_changes_feed_cannot_fill(
    servers: list[str], peers: list[Peer]
) -> None:
    """Sends go on in one process while the other's listener is cut: its socket is told to
    catch up (1012), it listens again, and the versions it missed come from the feed."""
    a, b, *_ = peers
    thread_id = await new_thread(a, b)
    seen = 0
    async with b.listen(servers[1]) as ws:
        await ready(ws)
        for n in range(3):
            await a.send(thread_id, f"before {n}")
        while seen < 3:  # each event carries the thread's version after it
            event = await next_event(ws)
            seen = event.get("version", seen)
        sending = asyncio.gather(*(a.send(thread_id, f"during {n}") for n in range(20)))
        await cut_listeners()
        assert await close_code(ws, timeout=10) == 1012
        sent = await sending
    await listening_again(everyone(servers))
    async with b.listen(servers[1]) as ws:
        await ready(ws)
        after = await a.send(thread_id, "after")
        event = await next_event(ws)
        assert event["data"] == after  # heard again, live
    changes = (await b.http.get(f"/api/threads/{thread_id}/changes", params={"since": seen})).json()
    bodies = [m["body"] for m in changes["items"]]
    assert {m["body"] for m in sent} <= set(bodies) and bodies[-1] == "after"
    assert changes["version"] == event["version"]
