"""Sync: per-thread versions, the changes feed, read receipts, and the versions
events carry. A client that has seen version N of a thread has seen every change up to N."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text

from app.core.db import engine
from app.core.settings import settings
from tests.helpers import (
    MakeUser,
    User,
    assert_silent,
    count_statements,
    fetch,
    listen,
    new_thread,
    next_event,
    send,
)
from tests.servers import serve

pg_only = pytest.mark.skipif(settings.is_sqlite, reason="needs PostgreSQL")


async def changes(
    client: AsyncClient, user: User, thread_id: int, since: int = 0, limit: int = 3
) -> tuple[list[Any], int]:
    """Every page of the feed from `since`, passing `version` back; (items, last version)."""
    items: list[Any] = []
    while True:
        r = await client.get(
            f"/api/threads/{thread_id}/changes",
            params={"since": since, "limit": limit},
            headers=user.headers,
        )
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        since = page["version"]
        if not page["has_more"]:
            return items, since


async def churn(clients: list[AsyncClient], users: list[User], thread_id: int) -> list[int]:
    """Sends, edits and deletes from every user at once, spread over `clients`; the
    versions the writes answered with."""
    seeded = [await send(clients[0], u, thread_id, f"seed {u['id']}") for u in users]
    url = f"/api/threads/{thread_id}/messages"

    def via(i: int) -> AsyncClient:
        return clients[i % len(clients)]

    writes = [
        *(
            via(i).post(url, json={"body": f"new {i}"}, headers=users[i % len(users)].headers)
            for i in range(12)
        ),
        *(
            via(i).patch(f"{url}/{m['id']}", json={"body": "edited"}, headers=u.headers)
            for i, (m, u) in enumerate(zip(seeded[:2], users, strict=False))
        ),
        *(
            via(i).delete(f"{url}/{m['id']}", headers=u.headers)
            for i, (m, u) in enumerate(zip(seeded[2:], users[2:], strict=False))
        ),
    ]
    replies = await asyncio.gather(*writes)
    assert all(r.status_code in (200, 201, 204) for r in replies), [r.text for r in replies]
    return [m["version"] for m in seeded] + [r.json()["version"] for r in replies if r.content]


async def assert_feed_is_complete(client: AsyncClient, user: User, thread_id: int) -> None:
    items, version = await changes(client, user, thread_id)
    versions = [m["version"] for m in items]
    assert versions == sorted(set(versions)), versions  # strictly increasing
    stored = await fetch("SELECT id FROM message WHERE thread_id = :id", id=thread_id)
    assert sorted(m["id"] for m in items) == sorted(r.id for r in stored)  # each exactly once
    thread = (await client.get(f"/api/threads/{thread_id}", headers=user.headers)).json()
    assert version == versions[-1] == thread["version"]


async def test_versions_grow_under_concurrent_writes_and_the_feed_has_no_gap(
    client: AsyncClient, make_user: MakeUser
) -> None:
    users = [await make_user() for _ in range(4)]
    thread = await new_thread(client, *users)
    versions = await churn([client], users, thread["id"])
    assert len(set(versions)) == len(versions), versions  # each change its own version
    await assert_feed_is_complete(client, users[0], thread["id"])


@pg_only
async def test_versions_hold_across_processes(
    client: AsyncClient, make_user: MakeUser, tmp_path: Path
) -> None:
    users = [await make_user() for _ in range(4)]
    thread = await new_thread(client, *users)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    url = settings.database_url
    with serve(tmp_path / "a", DATABASE_URL=url) as a, serve(tmp_path / "b", DATABASE_URL=url) as b:
        async with AsyncClient(base_url=a) as one, AsyncClient(base_url=b) as two:
            versions = await churn([client, one, two], users, thread["id"])
    assert len(set(versions)) == len(versions), versions
    await assert_feed_is_complete(client, users[0], thread["id"])


async def test_a_client_catches_up_to_the_servers_state(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    tid = thread["id"]
    old = [await send(client, me, tid, f"old secret {i}") for i in range(4)]
    # What the client knows when its socket goes away.
    seen = {m["id"]: m for m in (await changes(client, friend, tid))[0]}
    since = max(m["version"] for m in seen.values())
    ws = await listen(live_server, friend)
    await ws.close()
    url = f"/api/threads/{tid}/messages"
    await client.patch(f"{url}/{old[0]['id']}", json={"body": "edited"}, headers=me.headers)
    await client.delete(f"{url}/{old[1]['id']}", headers=me.headers)
    for i in range(3):
        await send(client, me, tid, f"new {i}")

    r = await client.get(
        f"/api/threads/{tid}/changes", params={"since": since}, headers=friend.headers
    )
    assert "old secret 1" not in r.text  # the deleted body, nowhere in the response
    page = r.json()
    assert len(page["items"]) == 5 and not page["has_more"]
    [tombstone] = [m for m in page["items"] if m.get("deleted")]
    assert tombstone["id"] == old[1]["id"] and tombstone["body"] == ""
    for m in page["items"]:
        if m.get("deleted"):
            seen.pop(m["id"], None)
        else:
            seen[m["id"]] = m
    server = (await client.get(url, headers=friend.headers)).json()["items"]
    fields = ("id", "body", "edited_at", "version", "author_id")
    assert [{k: m[k] for k in fields} for m in sorted(seen.values(), key=lambda m: m["id"])] == [
        {k: m[k] for k in fields} for m in server
    ]
    thread = (await client.get(f"/api/threads/{tid}", headers=friend.headers)).json()
    assert page["version"] == thread["version"]


async def test_feed_statements_do_not_grow_with_page_size(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    for i in range(12):
        await send(client, me, thread["id"], f"m{i}")
    counts = []
    for limit in (2, 12):
        with count_statements() as statements:
            r = await client.get(
                f"/api/threads/{thread['id']}/changes", params={"limit": limit}, headers=me.headers
            )
        assert len(r.json()["items"]) == limit
        counts.append(len(statements))
    assert counts[0] == counts[1], counts


async def test_feed_edges(client: AsyncClient, make_user: MakeUser) -> None:
    me, stranger = await make_user(), await make_user()
    thread = await new_thread(client, me)
    await send(client, me, thread["id"])
    url = f"/api/threads/{thread['id']}/changes"
    r = await client.get(url, params={"since": 10**6}, headers=me.headers)
    assert r.status_code == 200
    assert r.json()["items"] == [] and r.json()["has_more"] is False
    assert (await client.get(url, params={"since": -1}, headers=me.headers)).status_code == 422
    hidden = await client.get(url, headers=stranger.headers)
    missing = await client.get("/api/threads/999999/changes", headers=stranger.headers)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


@pg_only
@pytest.mark.parametrize("removed", [False, True])
async def test_a_change_committed_while_the_feed_reads_is_in_its_page(
    client: AsyncClient, make_user: MakeUser, removed: bool
) -> None:
    """An edit that commits after the feed read the thread's version, before it read the
    messages: the page holds the message (created after `since`) in its latest state;
    unless the reader was removed first, who then gets nothing that came after."""
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, other, me)
    sent = await send(client, other, thread["id"], "first")
    ids = {"t": thread["id"], "m": sent["id"], "u": me["id"], "step": 2 if removed else 1}
    async with engine.connect() as edit:  # the messages wait; the thread is read at once
        await edit.execute(text("LOCK TABLE message IN ACCESS EXCLUSIVE MODE"))
        reading = asyncio.create_task(changes(client, me, thread["id"]))
        await asyncio.sleep(0.3)
        await edit.execute(text("UPDATE thread SET version = version + :step WHERE id = :t"), ids)
        if removed:
            sql = "UPDATE membership SET deleted = true WHERE thread_id = :t AND user_id = :u"
            await edit.execute(text(sql), ids)
        sql = "UPDATE message SET body = 'edited', version = version + :step WHERE id = :m"
        await edit.execute(text(sql), ids)
        await edit.commit()
    items, version = await reading
    if removed:
        assert (items, version) == ([], sent["version"])
    else:
        assert [(m["id"], m["body"]) for m in items] == [(sent["id"], "edited")]
        assert version == items[-1]["version"] == sent["version"] + 1


async def test_read_receipts(client: AsyncClient, live_server: str, make_user: MakeUser) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    tid = thread["id"]
    first, second = await send(client, me, tid, "one"), await send(client, me, tid, "two")
    members = (await client.get(f"/api/threads/{tid}/members", headers=friend.headers)).json()
    assert members == [
        {"id": me["id"], "full_name": me["full_name"], "last_read_message_id": second["id"]},
        {"id": friend["id"], "full_name": friend["full_name"], "last_read_message_id": 0},
    ]
    version = (await client.get(f"/api/threads/{tid}", headers=me.headers)).json()["version"]
    sockets = [
        await listen(live_server, me),
        await listen(live_server, friend),
        await listen(live_server, friend),  # the reader's other device hears it too
    ]
    read = f"/api/threads/{tid}/read"
    assert (
        await client.post(read, json={"message_id": second["id"]}, headers=friend.headers)
    ).status_code == 204
    for ws in sockets:
        event = await next_event(ws, since=version)
        assert event["type"] == "thread.read" and event["thread_id"] == tid
        assert event["data"] == {"user_id": friend["id"], "message_id": second["id"]}
    # Backwards: nothing changes, nothing is sent.
    r = await client.post(read, json={"message_id": first["id"]}, headers=friend.headers)
    assert r.status_code == 204
    for ws in sockets:
        await assert_silent(ws, since=version)
        await ws.close()
    members = (await client.get(f"/api/threads/{tid}/members", headers=me.headers)).json()
    assert members[1]["last_read_message_id"] == second["id"]
    # Read markers are not changes of the thread.
    assert (await client.get(f"/api/threads/{tid}", headers=me.headers)).json()[
        "version"
    ] == version


async def test_every_event_carries_the_threads_version(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, friend, third = await make_user(), await make_user(), await make_user()
    ws = await listen(live_server, me)  # listen() checks that `ready` comes first
    thread = await new_thread(client, me, friend)
    tid = thread["id"]
    url = f"/api/threads/{tid}/messages"

    async def version_now() -> int:
        rows = await fetch("SELECT version FROM thread WHERE id = :id", id=tid)
        return int(rows[0].version)

    async def check(kind: str) -> None:
        event = await next_event(ws)
        assert event["type"] == kind, event
        assert event["version"] == await version_now(), (event, await version_now())

    await check("thread.created")
    message = await send(client, me, tid)
    await check("message.created")
    await client.patch(f"{url}/{message['id']}", json={"body": "b"}, headers=me.headers)
    await check("message.updated")
    await client.delete(f"{url}/{message['id']}", headers=me.headers)
    await check("message.deleted")
    await client.patch(f"/api/threads/{tid}", json={"title": "x"}, headers=me.headers)
    await check("thread.updated")
    await client.post(
        f"/api/threads/{tid}/members", json={"user_id": third["id"]}, headers=me.headers
    )
    await check("member.added")
    await client.delete(f"/api/threads/{tid}/members/{third['id']}", headers=me.headers)
    await check("member.removed")
    await client.delete(f"/api/threads/{tid}/members/{me['id']}", headers=me.headers)
    await check("member.removed")  # the owner leaves: ownership passes on, same change
    known = await version_now()
    ws2 = await listen(live_server, friend)
    await client.delete(f"/api/threads/{tid}", headers=friend.headers)
    event = await next_event(ws2, since=known)
    assert event["type"] == "thread.deleted" and event["version"] == await version_now()
    await ws.close()
    await ws2.close()
