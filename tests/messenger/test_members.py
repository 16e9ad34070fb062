"""A thread's members: who sees it (members only: everyone else gets the same 404 as for a
thread that does not exist), adding, removing and leaving, the owner passing on, and
accounts that go."""

import asyncio
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import text

from app.core.db import engine
from app.main import app
from app.messenger.messages import Messages
from tests.helpers import (
    API1,
    API3,
    ON_SQLITE,
    MakeUser,
    User,
    fetch,
    listen,
    new_thread,
    next_event,
    pg_only,
    send,
)


def thread_routes(tid: int, mid: int, uid: int, owner_id: int) -> list[tuple[str, str, Any]]:
    """Every route that reaches a thread, its members or its messages."""
    return [
        ("GET", f"/api/threads/{tid}", None),
        ("PATCH", f"/api/threads/{tid}", {"title": "x"}),
        ("DELETE", f"/api/threads/{tid}", None),
        ("GET", f"/api/threads/{tid}/members", None),
        ("POST", f"/api/threads/{tid}/members", {"user_id": uid}),
        ("DELETE", f"/api/threads/{tid}/members/{uid}", None),
        ("DELETE", f"/api/threads/{tid}/members/{owner_id}", None),
        ("POST", f"/api/threads/{tid}/read", {"message_id": mid}),
        ("GET", f"/api/threads/{tid}/messages", None),
        ("GET", f"/api/threads/{tid}/messages/{mid}", None),
        ("POST", f"/api/threads/{tid}/messages", {"body": "x"}),
        ("PATCH", f"/api/threads/{tid}/messages/{mid}", {"body": "x"}),
        ("DELETE", f"/api/threads/{tid}/messages/{mid}", None),
    ]


@API1
async def test_outsiders_and_removed_members_get_the_same_404_as_missing(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, outsider, removed = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, owner, removed)
    message = await send(client, owner, thread["id"])
    r = await client.delete(
        f"/api/threads/{thread['id']}/members/{removed['id']}", headers=owner.headers
    )
    assert r.status_code == 204
    for user in (outsider, removed):
        real = thread_routes(thread["id"], message["id"], user["id"], owner["id"])
        fake = thread_routes(10**8, message["id"], user["id"], owner["id"])
        for (method, url, body), (_, missing_url, _) in zip(real, fake, strict=True):
            seen = await client.request(method, url, json=body, headers=user.headers)
            missing = await client.request(method, missing_url, json=body, headers=user.headers)
            assert seen.status_code == missing.status_code == 404, (method, url)
            assert seen.json() == missing.json(), (method, url)
            assert seen.headers.keys() == missing.headers.keys(), (method, url)
    # Nothing changed behind the 404s.
    r = await client.get(f"/api/threads/{thread['id']}", headers=owner.headers)
    assert r.json()["title"] == "t" and len(r.json()["members"]) == 1
    r = await client.get(f"/api/threads/{thread['id']}/messages", headers=owner.headers)
    assert len(r.json()["items"]) == 1


@pytest.mark.skipif(not ON_SQLITE, reason="about SQLite's plans")
async def test_an_outsiders_page_walks_none_of_the_thread(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """SQLite tests a condition on every row it scans: were the thread scanned before the
    404, its time would tell an outsider how big it is. Counted in SQLite's VM steps."""
    owner, outsider = await make_user(), await make_user()
    small, big = (await new_thread(client, owner))["id"], (await new_thread(client, owner))["id"]
    first = await send(client, owner, big)
    copies = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
        "INSERT INTO message (created_at, updated_at, deleted, thread_id, author_id, body, "
        "version) SELECT created_at, updated_at, deleted, thread_id, author_id, body, "
        "version + i FROM message, n WHERE message.id = :id"
    )
    ticks: list[int] = []

    def tick() -> int:  # every 100 steps; 0: go on
        ticks.append(1)
        return 0

    steps = []
    async with engine.connect() as conn:
        await conn.execute(text(copies), {"id": first["id"]})
        await conn.commit()
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.set_progress_handler(tick, 100)  # type: ignore[union-attr]
        for thread_id in (small, big):
            params = {"thread_id": thread_id, "user_id": outsider["id"], "limit": 51}
            before = len(ticks)
            assert (await conn.execute(Messages._newest, params)).all() == []
            steps.append(len(ticks) - before)
        await raw.set_progress_handler(None, 100)  # type: ignore[union-attr]
    assert steps[1] <= steps[0] + 2, steps  # 3,000 messages walked: hundreds more


@API1
async def test_an_outsider_adding_anyone_gets_the_404_first(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """Nothing the body names is checked for an outsider: not whether the user exists, nor
    whether it blocks the outsider."""
    owner, outsider = await make_user(), await make_user()
    thread = await new_thread(client, owner)
    blocks = f"/api/users/me/blocks/{outsider['id']}"
    assert (await client.put(blocks, headers=owner.headers)).status_code == 204
    for user_id in (10**8, owner["id"], outsider["id"]):
        for tid in (thread["id"], 10**8):
            url = f"/api/threads/{tid}/members"
            r = await client.post(url, json={"user_id": user_id}, headers=outsider.headers)
            assert r.status_code == 404 and r.json() == {"detail": "Thread not found"}, user_id


async def test_add_members(client: AsyncClient, make_user: MakeUser) -> None:
    owner, member, newcomer = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    url = f"/api/threads/{thread['id']}/members"
    assert (
        await client.get(f"/api/threads/{thread['id']}", headers=newcomer.headers)
    ).status_code == 404
    r = await client.post(url, json={"user_id": newcomer["id"]}, headers=member.headers)
    assert r.status_code == 201 and r.json() == {
        "id": newcomer["id"],
        "full_name": newcomer["full_name"],
    }
    r = await client.post(url, json={"user_id": newcomer["id"]}, headers=owner.headers)
    assert r.status_code == 200
    members = (await client.get(url, headers=newcomer.headers)).json()
    assert [m["id"] for m in members] == [owner["id"], member["id"], newcomer["id"]]
    for bad in ({"user_id": 999999}, {"user_id": "x"}, {}):
        assert (await client.post(url, json=bad, headers=owner.headers)).status_code == 422
    [(n,)] = await fetch("SELECT count(*) FROM membership WHERE thread_id = :t", t=thread["id"])
    assert n == 3


async def test_remove_and_leave(client: AsyncClient, make_user: MakeUser) -> None:
    owner, a, b = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, owner, a, b)
    base = f"/api/threads/{thread['id']}"
    assert (await client.delete(f"{base}/members/{b['id']}", headers=a.headers)).status_code == 403
    assert (
        await client.delete(f"{base}/members/{b['id']}", headers=owner.headers)
    ).status_code == 204
    assert (await client.get(base, headers=b.headers)).status_code == 404
    assert (
        await client.delete(f"{base}/members/{b['id']}", headers=owner.headers)
    ).status_code == 404
    assert (await client.delete(f"{base}/members/{a['id']}", headers=a.headers)).status_code == 204
    assert (await client.get(base, headers=a.headers)).status_code == 404
    # Re-adding a removed member works, and they see the thread again.
    assert (
        await client.post(f"{base}/members", json={"user_id": a["id"]}, headers=owner.headers)
    ).status_code == 201
    assert (await client.get(base, headers=a.headers)).status_code == 200


async def test_owner_leaving_passes_ownership_to_earliest_joined(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, first, second = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, owner, first)
    base = f"/api/threads/{thread['id']}"
    await client.post(f"{base}/members", json={"user_id": second["id"]}, headers=owner.headers)
    assert (
        await client.delete(f"{base}/members/{owner['id']}", headers=owner.headers)
    ).status_code == 204
    r = await client.get(base, headers=second.headers)
    assert r.json()["owner_id"] == first["id"]
    assert (
        await client.patch(base, json={"title": "mine"}, headers=first.headers)
    ).status_code == 200
    # The last ones out: the thread is soft-deleted.
    assert (
        await client.delete(f"{base}/members/{second['id']}", headers=first.headers)
    ).status_code == 204
    assert (
        await client.delete(f"{base}/members/{first['id']}", headers=first.headers)
    ).status_code == 204
    [(deleted,)] = await fetch("SELECT deleted FROM thread WHERE id = :id", id=thread["id"])
    assert deleted


async def test_concurrent_adds_make_one_membership(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, newcomer = await make_user(), await make_user()
    thread = await new_thread(client, owner)

    async def add() -> httpx.Response:
        async with AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post(
                f"/api/threads/{thread['id']}/members",
                json={"user_id": newcomer["id"]},
                headers=owner.headers,
            )

    answers = await asyncio.gather(*(add() for _ in range(6)))
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201]
    rows = await fetch(
        "SELECT id FROM membership WHERE thread_id = :t AND user_id = :u AND NOT deleted",
        t=thread["id"],
        u=newcomer["id"],
    )
    assert len(rows) == 1


async def test_concurrent_leaves_keep_an_owner(client: AsyncClient, make_user: MakeUser) -> None:
    users = [await make_user() for _ in range(6)]
    for rounds in range(2):
        thread = await new_thread(client, users[0], *users[1:])
        leaving = users[:4] if rounds == 0 else users  # some, then everyone

        async def leave(user: User, thread: Any = thread) -> int:
            async with AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as c:
                r = await c.delete(
                    f"/api/threads/{thread['id']}/members/{user['id']}", headers=user.headers
                )
                return r.status_code

        assert set(await asyncio.gather(*(leave(u) for u in leaving))) == {204}
        members = await fetch(
            "SELECT user_id FROM membership WHERE thread_id = :t AND NOT deleted", t=thread["id"]
        )
        [(owner_id, deleted)] = await fetch(
            "SELECT owner_id, deleted FROM thread WHERE id = :t", t=thread["id"]
        )
        if members:
            assert not deleted and owner_id in {m for (m,) in members}
        else:
            assert deleted


@pg_only
@API1
@pytest.mark.parametrize("write", ["send", "edit", "delete"])
async def test_a_write_waiting_on_its_removal_is_404(
    client: AsyncClient, make_user: MakeUser, write: str
) -> None:
    """A member's write that waits for the thread's lock while a removal commits (made as
    Threads.leave makes it: the thread locked and counted, then the membership soft-deleted)
    is no member's write: 404, and nothing lands."""
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    mine = await send(client, member, thread["id"], "before")
    url = f"/api/threads/{thread['id']}/messages"
    method, url, body = {
        "send": ("POST", url, {"body": "after"}),
        "edit": ("PATCH", f"{url}/{mine['id']}", {"body": "after"}),
        "delete": ("DELETE", f"{url}/{mine['id']}", None),
    }[write]
    ids = {"t": thread["id"], "u": member["id"]}
    async with engine.connect() as removal:
        await removal.execute(text("UPDATE thread SET version = version + 1 WHERE id = :t"), ids)
        waiting = asyncio.create_task(
            client.request(method, url, json=body, headers=member.headers)
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits for the thread's lock
        sql = "UPDATE membership SET deleted = true WHERE thread_id = :t AND user_id = :u"
        await removal.execute(text(sql), ids)
        await removal.commit()
    assert (await waiting).status_code == 404
    left = await fetch("SELECT id, body, deleted, version FROM message WHERE thread_id = :t", **ids)
    assert left == [(mine["id"], "before", False, mine["version"])]


@API3
async def test_thread_responses_leak_no_private_fields(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, other = await make_user(), await make_user(scopes=["regular", "admin"])
    thread = await new_thread(client, me, other)
    await send(client, other, thread["id"])
    seen = [
        await client.get(f"/api/threads/{thread['id']}", headers=me.headers),
        await client.get(f"/api/threads/{thread['id']}/members", headers=me.headers),
        await client.get("/api/threads", headers=me.headers),
        await client.get(f"/api/threads/{thread['id']}/messages", headers=me.headers),
    ]
    for r in seen:
        assert r.status_code == 200
        assert "hashed_password" not in r.text and "$argon2" not in r.text
        assert other["email"] not in r.text  # no one else's email
        assert "admin" not in r.text  # nor their scopes
        assert "token_version" not in r.text


@API1
@pytest.mark.parametrize("by_admin", [False, True])
async def test_deleting_an_account_leaves_its_threads(
    client: AsyncClient, live_server: str, make_user: MakeUser, by_admin: bool
) -> None:
    owner, second, third = await make_user(), await make_user(), await make_user()
    shared = await new_thread(client, owner, second, third)
    alone = await new_thread(client, owner)
    ws = await listen(live_server, third)
    if by_admin:
        admin = await make_user(scopes=["regular", "admin"])
        r = await client.delete(f"/api/users/{owner['id']}", headers=admin.headers)
    else:
        r = await client.delete("/api/users/me", headers=owner.headers)
    assert r.status_code == 204
    removed = await next_event(ws, since=shared["version"])
    assert removed["type"] == "member.removed" and removed["thread_id"] == shared["id"]
    assert removed["data"] == {"user_id": owner["id"]}
    assert (await next_event(ws))["type"] == "thread.updated"
    thread = (await client.get(f"/api/threads/{shared['id']}", headers=third.headers)).json()
    assert thread["owner_id"] == second["id"]  # joined earliest of those who remain
    assert [m["id"] for m in thread["members"]] == [second["id"], third["id"]]
    # The thread left empty is gone.
    assert await fetch("SELECT id FROM thread WHERE id = :id AND NOT deleted", id=alone["id"]) == []
    await ws.close()
