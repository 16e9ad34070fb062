"""Threads: creating one, its title and owner, the caller's list of them by activity,
unread counts and the read marker, and deleting one while others write to it."""

import asyncio
from typing import Any

from httpx import AsyncClient
from sqlalchemy import text

from app.core.db import engine
from tests.helpers import (
    API1,
    API3,
    API4,
    MakeUser,
    User,
    fetch,
    mass_assignment,
    new_thread,
    page,
    pg_only,
    send,
)

THREAD = {
    "id", "title", "owner_id", "members", "created_at", "updated_at", "last_message_at",
    "unread_count", "unread_mention_count", "version",
}  # fmt: skip


async def test_create_thread(client: AsyncClient, make_user: MakeUser) -> None:
    me, bob = await make_user(), await make_user()
    r = await client.post(
        "/api/threads",
        json={"title": "Plans", "member_ids": [bob["id"], bob["id"], me["id"]]},
        headers=me.headers,
    )
    assert r.status_code == 201
    thread = r.json()
    assert set(thread) == THREAD
    assert thread["owner_id"] == me["id"] and thread["title"] == "Plans"
    assert thread["last_message_at"] is None and thread["unread_count"] == 0
    assert sorted(m["id"] for m in thread["members"]) == sorted([me["id"], bob["id"]])
    assert all(set(m) == {"id", "full_name"} for m in thread["members"])
    r = await client.post("/api/threads", json={"member_ids": []}, headers=me.headers)
    assert r.status_code == 201 and r.json()["title"] is None


@API4
async def test_create_thread_with_bad_members_is_422(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, inactive, gone, ok = (
        await make_user(),
        await make_user(),
        await make_user(),
        await make_user(),
    )
    admin = await make_user(scopes=["regular", "admin"])
    await client.patch(
        f"/api/users/{inactive['id']}", json={"is_active": False}, headers=admin.headers
    )
    await client.delete("/api/users/me", headers=gone.headers)
    for bad in (999999, inactive["id"], gone["id"]):
        r = await client.post(
            "/api/threads", json={"member_ids": [ok["id"], bad]}, headers=me.headers
        )
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "member_ids"]
    for body in (
        {"member_ids": ["x"]},
        {"member_ids": [ok["id"]] * 1001},  # more than any thread needs, even if valid
        {"title": "x" * 201, "member_ids": []},
        {},
    ):
        assert (await client.post("/api/threads", json=body, headers=me.headers)).status_code == 422
    # Nothing was half-created.
    assert (await client.get("/api/threads", headers=me.headers)).json()["items"] == []
    assert await fetch("SELECT id FROM thread") == []


async def test_rename_and_delete_are_owner_only(client: AsyncClient, make_user: MakeUser) -> None:
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    message = await send(client, member, thread["id"])
    url = f"/api/threads/{thread['id']}"
    assert (await client.patch(url, json={"title": "x"}, headers=member.headers)).status_code == 403
    assert (await client.delete(url, headers=member.headers)).status_code == 403
    r = await client.patch(url, json={"title": "Renamed"}, headers=owner.headers)
    assert r.status_code == 200 and r.json()["title"] == "Renamed"
    assert (await client.get(url, headers=member.headers)).json()["title"] == "Renamed"
    assert (await client.delete(url, headers=owner.headers)).status_code == 204
    for user in (owner, member):  # its messages too: the memberships stay behind it
        for seen in (url, f"{url}/messages", f"{url}/messages/{message['id']}"):
            assert (await client.get(seen, headers=user.headers)).status_code == 404, seen
        assert (await client.get("/api/threads", headers=user.headers)).json()["items"] == []
    [(deleted,)] = await fetch("SELECT deleted FROM thread WHERE id = :id", id=thread["id"])
    assert deleted


@API4
async def test_list_is_ordered_by_activity_and_pages(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, other = await make_user(), await make_user()
    threads = [await new_thread(client, me, other, title=f"t{n}") for n in range(5)]
    await send(client, other, threads[1]["id"])
    await send(client, me, threads[3]["id"])
    expected = [threads[i]["title"] for i in (3, 1, 4, 2, 0)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/threads", params=params, headers=me.headers)
        assert r.status_code == 200
        seen += [t["title"] for t in r.json()["items"]]
        assert all(set(t) == THREAD for t in r.json()["items"])
        if (cursor := r.json()["next_cursor"]) is None:
            break
    assert seen == expected
    top = (await client.get("/api/threads", headers=me.headers)).json()["items"][0]
    assert top["last_message_at"] is not None and top["last_message_at"].endswith(("Z", "+00:00"))
    for bad in ({"limit": 0}, {"limit": 201}, {"limit": 10**6}):
        assert (await client.get("/api/threads", params=bad, headers=me.headers)).status_code == 422
    for cursor in ("x", "W10", "WzEsMl0", "WyJub3QgYSBkYXRlIiwgMV0"):
        r = await client.get("/api/threads", params={"cursor": cursor}, headers=me.headers)
        assert r.status_code == 400, cursor


@pg_only
async def test_a_send_that_waited_never_moves_its_thread_back(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """A send that waits (here on its sender's other send, held up by a busy thread) while
    another lands in the same thread is stamped after it: the thread keeps its place in the
    list (a client paging through it sees it once), and its messages stay oldest first."""
    me, other = await make_user(), await make_user()
    busy, shared = await new_thread(client, me), await new_thread(client, me, other)
    later = await new_thread(client, other)

    def sending(thread: Any) -> "asyncio.Task[Any]":
        url = f"/api/threads/{thread['id']}/messages"
        return asyncio.create_task(client.post(url, json={"body": "b"}, headers=me.headers))

    async with engine.connect() as slow:  # a long write holds the busy thread's lock
        await slow.execute(text("UPDATE thread SET version = version WHERE id = :id"), busy)
        held = sending(busy)
        await asyncio.sleep(0.3)
        waiting = sending(shared)  # waits for `held`, which counts its sender's sends
        await asyncio.sleep(0.3)
        await send(client, other, later["id"])
        await send(client, other, shared["id"])
        r = await client.get("/api/threads", params={"limit": 1}, headers=other.headers)
        first = r.json()
        await slow.commit()
    assert {(await held).status_code, (await waiting).status_code} == {201}
    assert [t["id"] for t in first["items"]] == [shared["id"]]
    params = {"cursor": first["next_cursor"]}
    r = await client.get("/api/threads", params=params, headers=other.headers)
    assert [t["id"] for t in r.json()["items"]] == [later["id"]]
    items = (await page(client, other, shared))["items"]
    assert [m["created_at"] for m in items] == sorted(m["created_at"] for m in items)
    r = await client.get(f"/api/threads/{shared['id']}", headers=other.headers)
    assert r.json()["last_message_at"] == items[-1]["created_at"]


async def test_unread_counts_and_read_marker(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, me, other)
    tid = thread["id"]
    sent = [await send(client, other, tid, f"m{n}") for n in range(4)]
    mine = await send(client, me, tid, "mine")  # moves my own marker past all of them

    async def unread(user: User) -> int:
        r = await client.get(f"/api/threads/{tid}", headers=user.headers)
        listed = (await client.get("/api/threads", headers=user.headers)).json()["items"][0]
        assert listed["unread_count"] == r.json()["unread_count"]
        return int(r.json()["unread_count"])

    assert await unread(me) == 0
    assert await unread(other) == 1  # their own four do not count
    await send(client, other, tid, "later")
    assert await unread(me) == 1
    later = (await client.get(f"/api/threads/{tid}/messages", headers=me.headers)).json()["items"][
        -1
    ]
    url = f"/api/threads/{tid}/read"
    r = await client.post(url, json={"message_id": sent[1]["id"]}, headers=me.headers)
    assert r.status_code == 204
    assert await unread(me) == 1  # the marker never moves backwards
    r = await client.post(url, json={"message_id": later["id"]}, headers=me.headers)
    assert r.status_code == 204
    assert await unread(me) == 0
    assert mine["id"] < later["id"]
    # Deleted messages are not unread.
    extra = await send(client, other, tid, "oops")
    assert await unread(me) == 1
    await client.delete(f"/api/threads/{tid}/messages/{extra['id']}", headers=other.headers)
    assert await unread(me) == 0


async def test_read_marker_needs_a_message_of_this_thread(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me = await make_user()
    a, b = await new_thread(client, me), await new_thread(client, me)
    elsewhere = await send(client, me, b["id"])
    url = f"/api/threads/{a['id']}/read"
    for body in ({"message_id": elsewhere["id"]}, {"message_id": 10**9}, {"message_id": -1}, {}):
        assert (await client.post(url, json=body, headers=me.headers)).status_code == 422, body


@API3
async def test_mass_assignment_changes_nothing(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    extra = mass_assignment(other["id"])
    r = await client.post("/api/threads", json={"member_ids": [], **extra}, headers=me.headers)
    thread = r.json()
    assert r.status_code == 201 and thread["owner_id"] == me["id"] and thread["id"] != 99999
    assert [m["id"] for m in thread["members"]] == [me["id"]]
    r = await client.patch(
        f"/api/threads/{thread['id']}", json={"title": "x", **extra}, headers=me.headers
    )
    assert r.status_code == 200 and r.json()["owner_id"] == me["id"]
    r = await client.post(
        f"/api/threads/{thread['id']}/messages", json={"body": "b", **extra}, headers=me.headers
    )
    message = r.json()
    assert r.status_code == 201 and message["author_id"] == me["id"]
    assert message["thread_id"] == thread["id"] and message["edited_at"] is None
    r = await client.patch(
        f"/api/threads/{thread['id']}/messages/{message['id']}",
        json={"body": "c", **extra},
        headers=me.headers,
    )
    assert r.status_code == 200 and r.json()["author_id"] == me["id"]


@API1
async def test_writes_racing_a_thread_deletion_land_before_it_or_404(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, friend = await make_user(), await make_user()
    newcomers = [await make_user() for _ in range(4)]
    thread = await new_thread(client, owner, friend)
    tid = thread["id"]
    sends = [
        client.post(f"/api/threads/{tid}/messages", json={"body": f"m{i}"}, headers=friend.headers)
        for i in range(16)
    ]
    adds = [
        client.post(
            f"/api/threads/{tid}/members", json={"user_id": u["id"]}, headers=friend.headers
        )
        for u in newcomers
    ]
    delete = client.delete(f"/api/threads/{tid}", headers=owner.headers)
    replies = await asyncio.gather(*sends[:8], *adds[:2], delete, *sends[8:], *adds[2:])
    assert replies[10].status_code == 204
    assert {r.status_code for r in replies[:10] + replies[11:]} <= {201, 404}
    # The sends are replies[:8] and [11:19]; the others are member adds, whose ids are users'.
    sent = {r.json()["id"] for r in replies[:8] + replies[11:19] if r.status_code == 201}
    [(version, deleted_at)] = await fetch(
        "SELECT version, updated_at FROM thread WHERE id = :id", id=tid
    )
    rows = await fetch("SELECT id, version FROM message WHERE thread_id = :id", id=tid)
    assert {r.id for r in rows} == sent  # every 201 is stored, nothing else
    # The deletion is the thread's last change: nothing was written after it.
    assert all(r.version < version for r in rows), (version, rows)
    assert deleted_at is not None
