"""What a process cannot hand on in order, or heard before a socket was registered: the
sockets concerned are closed (1012: catch up; 4401: revoked), never left open and silent.
The events below arrive through the bus as from another process, in the order a race
between processes can bring them."""

import asyncio
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.core.accounts.tokens import callers
from app.core.db import begin, engine
from app.core.events import UserChanged, bus
from app.messenger.events import ThreadEvent
from app.messenger.threads import Threads
from tests.helpers import (
    MakeUser,
    close_code,
    listen,
    new_thread,
    next_event,
    pg_only,
    send,
    ws_url,
)
from tests.servers import free_port, serve


async def test_an_event_whose_message_is_gone_when_read_back_closes_with_1012(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    """An event too big to travel names its message, which each process reads back: by
    then it may be deleted."""
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    ws = await listen(live_server, friend)
    message = await send(client, me, thread["id"], "soon gone")
    assert (await next_event(ws, since=thread["version"]))["type"] == "message.created"
    path = f"/api/threads/{thread['id']}/messages/{message['id']}"
    assert (await client.delete(path, headers=me.headers)).status_code == 204
    deleted = await next_event(ws)
    assert deleted["type"] == "message.deleted"
    # An edit's event, come by reference, in order, after the deletion committed.
    late = {"id": message["id"], "ref": True}
    bus.deliver(ThreadEvent("message.updated", thread["id"], late, deleted["version"] + 1))
    assert await close_code(ws) == 1012


async def test_a_member_added_too_late_closes_the_new_members_sockets_too(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    """Its socket is in no thread's set yet: closing the thread's sockets misses it."""
    me, friend, newcomer = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    ws_friend, ws_newcomer = await listen(live_server, friend), await listen(live_server, newcomer)
    await send(client, me, thread["id"], "after the add, in commit order")
    sent = await next_event(ws_friend, since=thread["version"])
    added = {"user_id": newcomer["id"]}
    bus.deliver(ThreadEvent("member.added", thread["id"], added, sent["version"] - 1))
    assert await close_code(ws_friend) == 1012
    assert await close_code(ws_newcomer) == 1012


@pg_only
async def test_a_revocation_heard_while_the_token_is_read_closes_the_socket(
    live_server: str, make_user: MakeUser
) -> None:
    """The token's user is read while a revocation commits and is heard: the socket it
    arrives for must already be registered, else nothing closes it."""
    user = await make_user()
    callers.forget()  # the token is read from the database, not remembered
    async with engine.connect() as lock:
        await lock.execute(text('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE'))  # reads wait
        ws = await connect(ws_url(live_server, user["token"]["access_token"]))
        await asyncio.sleep(0.5)  # its read is waiting for the lock
        bus.deliver(UserChanged(user_id=user["id"], revoked=True))
        await lock.rollback()
    received = []
    with pytest.raises(ConnectionClosed):  # not `ready` first: nothing at all
        while True:
            received.append(await asyncio.wait_for(ws.recv(), 5))
    assert ws.close_code == 4401 and received == []


async def test_a_socket_opened_while_the_database_is_away_closes_with_1012(
    make_user: MakeUser, tmp_path: Path
) -> None:
    """What answers 503 over HTTP closes a socket with 1012 (reconnect, catch up), not with
    a server error and no close frame."""
    user = await make_user()
    away = f"postgresql://postgres@127.0.0.1:{free_port()}/away"  # nothing listens there
    with serve(tmp_path, DATABASE_URL=away) as base:
        server = base.removeprefix("http://")
        async with connect(ws_url(server, user["token"]["access_token"])) as ws:
            assert await close_code(ws) == 1012
    assert "Exception in ASGI application" not in (tmp_path / "server.log").read_text()


async def test_a_member_removed_by_an_event_never_heard_is_told_nothing_more(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    """A removal committed but never told (NOTIFY failed after the commit, Redis dropped
    it) leaves a gap in the thread's versions: the sockets that may have missed it are
    closed, not handed the thread's next messages, which the removed member may not read."""
    owner, removed = await make_user(), await make_user()
    thread = await new_thread(client, owner, removed)
    ws = await listen(live_server, removed)
    async with begin() as conn:
        await Threads(conn).leave(thread["id"], removed["id"], owner["id"])
        conn.info["events"].clear()  # committed, never sent
    await send(client, owner, thread["id"], "for members only")
    with pytest.raises(ConnectionClosed):
        event = await next_event(ws, since=thread["version"])
        raise AssertionError(f"the removed member was told {event}")
    assert ws.close_code == 1012
