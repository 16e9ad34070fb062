"""Realtime events over a real WebSocket to a real uvicorn, in this process (or in a
`python -m app` of its own, for its settings and its log)."""

import asyncio
import json
import random
import socket
from pathlib import Path

import httpx
import pytest
from httpx import AsyncClient
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from app.core.db import begin
from app.core.settings import settings
from app.messenger import realtime
from app.messenger.settings import messenger_settings
from app.messenger.threads import Threads
from tests.helpers import (
    API1,
    API2,
    API4,
    API8,
    PASSWORD,
    READY,
    ROOT,
    MakeUser,
    assert_silent,
    close_code,
    in_order_or_1012,
    listen,
    new_thread,
    next_event,
    send,
    sign_up,
    ws_url,
)
from tests.servers import PLAIN_UVICORN, clean_env, serve, serve_suite_db, start


@API2
async def test_bad_tokens_are_closed_with_4401(live_server: str, make_user: MakeUser) -> None:
    user = await make_user()
    for token in ("", "garbage", user["token"]["refresh_token"]):
        async with connect(ws_url(live_server, token)) as ws:
            assert await close_code(ws) == 4401


@API1
async def test_members_receive_events_and_others_do_not(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, friend, stranger = await make_user(), await make_user(), await make_user()
    ws_friend, ws_stranger = await listen(live_server, friend), await listen(live_server, stranger)
    thread = await new_thread(client, me, friend)
    created = await next_event(ws_friend)
    assert created["type"] == "thread.created" and created["thread_id"] == thread["id"]
    assert created["data"]["id"] == thread["id"]
    message = await send(client, me, thread["id"], "hello")
    event = await next_event(ws_friend)
    assert event == {
        "type": "message.created", "thread_id": thread["id"], "data": message,
        "version": message["version"],
    }  # fmt: skip
    edited = await client.patch(
        f"/api/threads/{thread['id']}/messages/{message['id']}",
        json={"body": "hello!"},
        headers=me.headers,
    )
    event = await next_event(ws_friend)
    assert event["type"] == "message.updated" and event["data"] == edited.json()
    await client.delete(f"/api/threads/{thread['id']}/messages/{message['id']}", headers=me.headers)
    assert (await next_event(ws_friend))["type"] == "message.deleted"
    await client.patch(f"/api/threads/{thread['id']}", json={"title": "new"}, headers=me.headers)
    event = await next_event(ws_friend)
    assert event["type"] == "thread.updated" and event["data"]["title"] == "new"
    await assert_silent(ws_stranger)
    await ws_friend.close()
    await ws_stranger.close()


@API1
async def test_membership_changes_take_effect_live(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    owner, newcomer = await make_user(), await make_user()
    thread = await new_thread(client, owner)
    ws = await listen(live_server, newcomer)
    await send(client, owner, thread["id"], "before")
    await assert_silent(ws)
    await client.post(
        f"/api/threads/{thread['id']}/members",
        json={"user_id": newcomer["id"]},
        headers=owner.headers,
    )
    added = await next_event(ws)
    assert added == {
        "type": "member.added", "thread_id": thread["id"], "data": {"user_id": newcomer["id"]},
        "version": added["version"],
    }  # fmt: skip
    now = await send(client, owner, thread["id"], "now")
    assert (await next_event(ws))["data"] == now
    await client.delete(
        f"/api/threads/{thread['id']}/members/{newcomer['id']}", headers=owner.headers
    )
    assert (await next_event(ws))["type"] == "member.removed"
    await send(client, owner, thread["id"], "after")
    await assert_silent(ws)
    await ws.close()


async def test_deleted_thread_sends_thread_deleted_and_nothing_more(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    ws = await listen(live_server, member)
    assert (
        await client.delete(f"/api/threads/{thread['id']}", headers=owner.headers)
    ).status_code == 204
    event = await next_event(ws, since=thread["version"])
    assert event["type"] == "thread.deleted" and event["thread_id"] == thread["id"]
    await assert_silent(ws)
    await ws.close()


async def test_a_transaction_that_rolls_back_tells_no_socket(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    ws = await listen(live_server, member)
    with pytest.raises(RuntimeError):
        async with begin() as conn:  # the rename publishes its event, then the write fails
            await Threads(conn).rename(thread["id"], owner["id"], title="rolled back")
            raise RuntimeError("after the write, before the commit")
    path = f"/api/threads/{thread['id']}"
    r = await client.patch(path, json={"title": "kept"}, headers=owner.headers)
    assert r.status_code == 200, r.text
    event = await next_event(ws, since=thread["version"])
    assert event["type"] == "thread.updated" and event["data"]["title"] == "kept"
    assert event["version"] == thread["version"] + 1
    await assert_silent(ws)
    await ws.close()


@API2
async def test_revoked_token_closes_the_socket(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    user = await make_user()
    ws = await listen(live_server, user)
    assert (await client.post("/api/auth/logout", headers=user.headers)).status_code == 204
    assert await close_code(ws, timeout=3) == 4401


@API2
async def test_expired_token_closes_the_socket(live_server: str, make_user: MakeUser) -> None:
    from datetime import UTC, datetime, timedelta

    from jose import jwt

    from app.core.settings import settings

    user = await make_user()
    exp = datetime.now(UTC) + timedelta(seconds=2)
    sid = jwt.get_unverified_claims(user["token"]["access_token"])["sid"]
    claims = {
        "sub": str(user["id"]),
        "ver": 0,
        "sid": sid,
        "type": "access",
        "scope": "regular",
        "exp": exp,
    }
    token = jwt.encode(claims, settings.secret_key, algorithm="HS256")
    async with connect(ws_url(live_server, token)) as ws:
        assert await next_event(ws) == READY
        await assert_silent(ws, 0.3)  # accepted and open while the token is live
        assert await close_code(ws, timeout=4) == 4401


async def test_a_4000_character_multibyte_message_arrives_whole(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    ws = await listen(live_server, friend)
    body = ("漢字🙂" * 1400)[:4000]  # 4000 characters, 13,336 bytes of UTF-8: over NOTIFY's limit
    message = await send(client, me, thread["id"], body)
    event = await next_event(ws, since=thread["version"])
    assert event["data"] == message and event["data"]["body"] == body
    await ws.close()


async def test_order_holds_under_concurrent_sends(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    """In version order; or, over Redis on a busy machine, a 1012 and the changes feed."""
    users = [await make_user() for _ in range(4)]
    thread = await new_thread(client, users[0], *users[1:])
    ws = await listen(live_server, users[0])
    sent = await asyncio.gather(
        *(send(client, users[n % 4], thread["id"], f"m{n}") for n in range(24))
    )
    versions, unbroken = await in_order_or_1012(ws, 24, thread["version"])
    if ws.close_code is None:
        assert versions == sorted(m["version"] for m in sent)
    caught_up = await client.get(
        f"/api/threads/{thread['id']}/changes",
        params={"since": unbroken, "limit": 100},
        headers=users[0].headers,
    )
    by_version = {m["version"]: m["id"] for m in sent}
    got = {by_version[v] for v in versions} | {m["id"] for m in caught_up.json()["items"]}
    assert got == set(by_version.values())
    await ws.close()


@API4
async def test_a_slow_client_is_closed_with_1013(
    client: AsyncClient, live_server: str, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(realtime, "QUEUE_SIZE", 4)
    monkeypatch.setattr(messenger_settings, "messages_per_minute", 10_000)  # hundreds of sends
    me, slow = await make_user(), await make_user()
    thread = await new_thread(client, me, slow)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads slowly
    host, port = live_server.split(":")
    sock.connect((host, int(port)))
    ws = await connect(ws_url(live_server, slow["token"]["access_token"]), sock=sock, max_queue=1)
    await asyncio.sleep(0.1)
    # More than the kernel buffers between us hold (a few MB), while this client reads
    # nothing; random text, so that compression does not shrink it.
    for _ in range(60):
        if any(c.close_code for c in realtime.hub.users.get(slow["id"], ())):
            break
        bodies = [
            "".join(chr(random.randint(0x4E00, 0x9FFF)) for _ in range(3990)) for _ in range(10)
        ]
        await asyncio.gather(*(send(client, me, thread["id"], body) for body in bodies))
    # Before reading (which drains the client), let the hub catch up with the sends: events
    # too big for NOTIFY are read back one by one, behind the sends.
    for _ in range(100):
        if realtime.hub.incoming.empty():
            break
        await asyncio.sleep(0.1)
    assert await close_code(ws, timeout=10) == 1013


@API4
async def test_sockets_per_user_are_capped(make_user: MakeUser, tmp_path: Path) -> None:
    user = await make_user()
    with serve_suite_db(tmp_path, WS_MAX_PER_USER="2") as base:
        server = base.removeprefix("http://")
        first, second = await listen(server, user), await listen(server, user)
        async with connect(ws_url(server, user["token"]["access_token"])) as third:
            assert await close_code(third) == 4429
        await first.close()
        await asyncio.sleep(0.2)  # the server notices the close and unregisters it
        again = await listen(server, user)  # READY: there is room again
        await again.close()
        await second.close()


@API8
async def test_the_server_log_keeps_no_socket_token(tmp_path: Path) -> None:
    with serve(tmp_path) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            user = await sign_up(http, "log@example.com", "L")
        token = user["token"]["access_token"]
        async with connect(ws_url(base.removeprefix("http://"), token)) as ws:
            assert json.loads(await ws.recv()) == READY
    output = (tmp_path / "server.log").read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # all JSON
    [logged] = [r for r in lines if r.get("msg") == "request" and r["method"] == "WS"]
    assert logged["path"] == "/api/ws" and logged["request_id"]
    assert token not in output and user["token"]["refresh_token"] not in output


@API8
def test_plain_uvicorn_logs_no_socket_token(tmp_path: Path) -> None:
    log = tmp_path / "uvicorn.log"
    env = clean_env(DATABASE_URL=settings.database_url)
    with start(ROOT, env, argv=PLAIN_UVICORN, log=log) as server:
        body = {"email": "logs@example.com", "password": PASSWORD, "full_name": "L"}
        assert (
            httpx.post(f"{server.base}/api/auth/signup", json=body, timeout=30).status_code == 201
        )
        form = {"username": body["email"], "password": PASSWORD}
        token = httpx.post(f"{server.base}/api/auth/token", data=form, timeout=30).json()[
            "access_token"
        ]
        host = server.base.removeprefix("http://")
        for query in (f"token={token}", f"%74oken={token}", f"x=1&token={token}"):
            with sync_connect(f"ws://{host}/api/ws?{query}") as ws:
                assert json.loads(ws.recv(5)) == READY
    output = log.read_text()
    assert "Logging error" not in output
    assert token not in output and token.split(".")[2] not in output
