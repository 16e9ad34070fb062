"""What an attacker tries against the messenger: races against an account's deletion,
sockets that send, a stolen login's socket, values past the columns, costly searches."""

import asyncio
import json
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.pool import QueuePool
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.core.db import engine
from app.core.settings import settings
from app.messenger.settings import messenger_settings
from tests.helpers import (
    API1,
    API2,
    API4,
    PASSWORD,
    MakeUser,
    User,
    assert_silent,
    close_code,
    fetch,
    listen,
    login,
    new_thread,
    send,
    ws_url,
)
from tests.servers import clean_env, start

pg_only = pytest.mark.skipif(settings.is_sqlite, reason="needs PostgreSQL")
MEMBERSHIP = "SELECT 1 FROM membership WHERE thread_id = :t AND user_id = :u"


@API1
async def test_a_deletion_racing_adds_leaves_the_user_in_no_thread(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, friend = await make_user(), await make_user()
    for round in range(12):
        victim = await make_user()
        thread = await new_thread(client, owner, friend)
        add = {"user_id": victim["id"]}
        await asyncio.gather(
            client.delete("/api/users/me", headers=victim.headers),
            client.post(f"/api/threads/{thread['id']}/members", json=add, headers=owner.headers),
            client.post("/api/threads", json={"member_ids": [victim["id"]]}, headers=owner.headers),
        )
        live = await fetch(
            "SELECT m.thread_id FROM membership m JOIN thread t ON t.id = m.thread_id "
            "WHERE m.user_id = :id AND NOT m.deleted AND NOT t.deleted",
            id=victim["id"],
        )
        assert live == [], round


@API1
async def test_a_deletion_racing_its_own_new_thread_leaves_the_user_in_no_thread(
    client: AsyncClient, make_user: MakeUser
) -> None:
    friend = await make_user()
    for round in range(15):  # under the signups an address may make in an hour
        victim = await make_user()
        started, gone = await asyncio.gather(
            client.post(
                "/api/threads", json={"member_ids": [friend["id"]]}, headers=victim.headers
            ),
            client.delete("/api/users/me", headers=victim.headers),
        )
        assert gone.status_code == 204, gone.text
        # Before the deletion (then left by it), or after it: the user is gone.
        assert started.status_code in (201, 401, 404), started.text
        live = await fetch(
            "SELECT t.id FROM thread t LEFT JOIN membership m ON m.thread_id = t.id"
            " AND m.user_id = :id AND NOT m.deleted"
            " WHERE NOT t.deleted AND (t.owner_id = :id OR m.id IS NOT NULL)",
            id=victim["id"],
        )
        assert live == [], round


@pg_only
@API1
async def test_a_send_and_its_authors_deletion_do_not_deadlock(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """The send holds its thread's lock, then names its author (a foreign key); the deletion
    holds the author, then asks for each of its threads' locks."""
    owner, author = await make_user(), await make_user()
    thread = await new_thread(client, owner, author)
    ids = {"t": thread["id"], "u": author["id"]}
    async with engine.connect() as hold:
        # The send takes the thread's lock, then waits for the author's membership here.
        await hold.execute(text(f"{MEMBERSHIP} FOR UPDATE"), ids)
        url = f"/api/threads/{thread['id']}/messages"
        sending = asyncio.create_task(client.post(url, json={"body": "."}, headers=author.headers))
        await asyncio.sleep(0.3)
        deleting = asyncio.create_task(client.delete("/api/users/me", headers=author.headers))
        await asyncio.sleep(0.3)  # it holds the author and waits for the thread's lock
        assert not sending.done() and not deleting.done()
        await hold.rollback()
    sent, gone = await sending, await deleting
    assert (sent.status_code, gone.status_code) == (201, 204), (sent.text, gone.text)


@API4
async def test_a_socket_that_sends_more_than_4_kib_is_closed_unread(tmp_path: Path) -> None:
    """No compression is offered (no small frame inflates into a big one), and a message over
    4 KiB closes the socket with 1009 before it is read whole: the server's memory stays."""
    database = {} if settings.is_sqlite else {"DATABASE_URL": settings.database_url}
    with start(tmp_path, clean_env(**database)) as server:
        host = server.base.removeprefix("http://")
        async with AsyncClient(base_url=server.base) as http:
            body = {"email": "bomb@example.com", "password": PASSWORD, "full_name": "B"}
            assert (await http.post("/api/auth/signup", json=body)).status_code == 201
            token = (await login(http, "bomb@example.com")).json()["access_token"]
        before = rss(server.proc.pid)
        sockets = [await connect(ws_url(host, token), compression="deflate") for _ in range(4)]
        for ws in sockets:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers  # no deflate
            assert json.loads(await ws.recv())["type"] == "ready"
        small = await connect(ws_url(host, token))
        await small.recv()
        await small.send("ping" * 100)  # 400 bytes: read and ignored
        await assert_silent(small)

        async def bomb(ws: ClientConnection) -> int | None:
            with pytest.raises(ConnectionClosed):  # the server goes away mid-send
                async with asyncio.timeout(10):  # or reads it all and stays: TimeoutError
                    await ws.send("x" * 16 * 1024 * 1024)
                    await ws.recv()
            return ws.close_code

        codes = await asyncio.gather(*(bomb(ws) for ws in sockets))
        assert set(codes) == {1009}, codes
        assert rss(server.proc.pid) - before < 30 * 1024 * 1024
        await small.close()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@API2
async def test_a_reused_refresh_token_closes_that_logins_sockets(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    user = await make_user()
    second = User(user, token=(await login(client, user["email"])).json())
    stolen = await listen(live_server, user)
    other_login = await listen(live_server, second)
    refresh = user["token"]["refresh_token"]
    assert (
        await client.post("/api/auth/refresh", json={"refresh_token": refresh})
    ).status_code == 200
    assert (
        await client.post("/api/auth/refresh", json={"refresh_token": refresh})
    ).status_code == 401
    assert await close_code(stolen) == 4401
    await assert_silent(other_login)  # the user's other login goes on
    await other_login.close()


@API2
async def test_a_revoked_token_is_4401_even_when_its_user_has_no_socket_to_spare(
    client: AsyncClient, live_server: str, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messenger_settings, "ws_max_per_user", 1)
    user = await make_user()
    second = User(user, token=(await login(client, user["email"])).json())
    other_login = await listen(live_server, second)  # the one socket the user may hold
    refresh = {"refresh_token": user["token"]["refresh_token"]}
    for expected in (200, 401):  # the second use is a reuse: the first login ends
        assert (await client.post("/api/auth/refresh", json=refresh)).status_code == expected
    async with connect(ws_url(live_server, user["token"]["access_token"])) as revoked:
        assert await close_code(revoked) == 4401
    await assert_silent(other_login)
    await other_login.close()


@pg_only
@API2
async def test_a_reused_refresh_token_closes_sockets_on_every_process(
    client: AsyncClient, make_user: MakeUser, tmp_path: Path
) -> None:
    user = await make_user()
    with start(tmp_path, clean_env(DATABASE_URL=settings.database_url)) as server:
        socket = await listen(server.base.removeprefix("http://"), user)
        refresh = {"refresh_token": user["token"]["refresh_token"]}
        for expected in (200, 401):  # the second use is a reuse: the login ends
            assert (await client.post("/api/auth/refresh", json=refresh)).status_code == expected
        assert await close_code(socket) == 4401


async def test_values_past_the_columns_are_4xx(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    thread = await new_thread(client, user)
    base = f"/api/threads/{thread['id']}"
    assert (
        await client.get(f"{base}/changes", params={"since": 2**31}, headers=user.headers)
    ).status_code == 422
    assert (
        await client.get(f"{base}/changes", params={"since": 2**31 - 1}, headers=user.headers)
    ).status_code == 200
    for body in ("\u200b", " \u2060\u200b ", "\u00ad"):  # shows nothing: empty
        r = await client.post(f"{base}/messages", json={"body": body}, headers=user.headers)
        assert r.status_code == 422, body


async def test_tombstones_keep_no_client_id(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    thread = await new_thread(client, user)
    base = f"/api/threads/{thread['id']}"
    body = {"body": "secret plans", "client_id": "phone-7f3a"}
    sent = (await client.post(f"{base}/messages", json=body, headers=user.headers)).json()
    assert (
        await client.delete(f"{base}/messages/{sent['id']}", headers=user.headers)
    ).status_code == 204
    [tombstone] = (await client.get(f"{base}/changes", headers=user.headers)).json()["items"]
    assert tombstone["deleted"] and tombstone["body"] == "" and tombstone["client_id"] is None


@pytest.mark.timing
@pg_only
@API4
async def test_a_search_past_its_time_limit_is_503(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    thread = await new_thread(client, user)
    for i in range(3):
        await send(client, user, thread["id"], f"common word {i}")
    search = {"q": "common"}
    assert (
        await client.get("/api/messages/search", params=search, headers=user.headers)
    ).status_code == 200
    monkeypatch.setattr(messenger_settings, "search_seconds", 0.3)
    async with engine.connect() as other:  # a statement that cannot finish in time
        await other.exec_driver_sql("BEGIN")
        await other.exec_driver_sql("LOCK TABLE message IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        waiting = client.get("/api/messages/search", params=search, headers=user.headers)
        r = await asyncio.wait_for(waiting, 5)  # without a limit it waits for the lock
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
        assert time.monotonic() - started < 2
        await other.exec_driver_sql("ROLLBACK")
    # The connection went back to the pool without the limit.
    async with AsyncExitStack() as stack:
        pool = engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        # Every idle connection, the searcher's among them.
        idle = [await stack.enter_async_context(engine.connect()) for _ in range(pool.checkedin())]
        limits = [(await c.exec_driver_sql("SHOW statement_timeout")).scalar() for c in idle]
    assert set(limits) == {"0"}, limits
    monkeypatch.setattr(messenger_settings, "search_seconds", 2.0)
    assert (
        await client.get("/api/messages/search", params=search, headers=user.headers)
    ).status_code == 200
    assert (
        await client.get(f"/api/threads/{thread['id']}/messages", headers=user.headers)
    ).status_code == 200


@pg_only
@API4
async def test_a_search_whose_connection_is_ended_is_503(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """PostgreSQL ends the connection under a search (a restart, a failover): its time limit
    is not reset on a connection that is gone, and the loss answers 503, not 500."""
    user = await make_user()
    search = {"q": "common"}
    async with engine.connect() as other:
        await other.exec_driver_sql("BEGIN")
        await other.exec_driver_sql("LOCK TABLE message IN ACCESS EXCLUSIVE MODE")
        waiting = asyncio.create_task(
            client.get("/api/messages/search", params=search, headers=user.headers)
        )
        await asyncio.sleep(0.5)  # the search waits for the lock
        await other.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        await other.exec_driver_sql("ROLLBACK")
    r = await waiting
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
    r = await client.get("/api/messages/search", params=search, headers=user.headers)
    assert r.status_code == 200
