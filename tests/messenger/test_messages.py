import asyncio
from datetime import datetime
from typing import Any

import httpx
from httpx import AsyncClient

from app.core.settings import settings
from app.main import app
from tests.helpers import (
    API1,
    API3,
    API4,
    MakeUser,
    assert_silent,
    count_statements,
    fetch,
    listen,
    new_thread,
    page,
    pg_only,
    send,
)

MESSAGE = {
    "id", "thread_id", "author_id", "body", "client_id", "created_at", "updated_at", "edited_at",
    "reactions", "version", "reply_to_id", "mention_ids", "attachments",
}  # fmt: skip


def messages_url(thread: Any) -> str:
    return f"/api/threads/{thread['id']}/messages"


async def test_send(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, me, other)
    r = await client.post(messages_url(thread), json={"body": "  hello  "}, headers=me.headers)
    assert r.status_code == 201
    message = r.json()
    assert set(message) == MESSAGE
    assert message["body"] == "hello" and message["author_id"] == me["id"]
    assert message["thread_id"] == thread["id"]
    assert message["edited_at"] is None and message["client_id"] is None
    assert datetime.fromisoformat(message["created_at"]).utcoffset() is not None
    listed = (await client.get(f"/api/threads/{thread['id']}", headers=other.headers)).json()
    assert listed["last_message_at"] == message["created_at"]


@API4
async def test_body_limits(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    url = messages_url(await new_thread(client, me))
    huge = b'{"body": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    r = await client.post(
        url, content=huge, headers={**me.headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    ok = ["x", "é" * 4000, "  " + "y" * 4000 + "\n"]
    for body in ok:
        r = await client.post(url, json={"body": body}, headers=me.headers)
        assert r.status_code == 201, len(body)
        assert r.json()["body"] == body.strip()
    for bad in ({"body": ""}, {"body": "   \n "}, {"body": "z" * 4001}, {}, {"body": 5}):
        r = await client.post(url, json=bad, headers=me.headers)
        assert r.status_code == 422, bad
        assert isinstance(r.json()["detail"], list)
    r = await client.post(url, json={"body": "x", "client_id": "c" * 101}, headers=me.headers)
    assert r.status_code == 422
    # Only the accepted ones are stored.
    assert (await fetch("SELECT count(*) FROM message"))[0][0] == len(ok)


async def test_same_client_id_returns_the_original(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, other = await make_user(), await make_user()
    thread, second = await new_thread(client, me, other), await new_thread(client, me, other)
    first = await client.post(
        messages_url(thread), json={"body": "once", "client_id": "abc"}, headers=me.headers
    )
    assert first.status_code == 201 and first.json()["client_id"] == "abc"
    again = await client.post(
        messages_url(thread), json={"body": "twice?", "client_id": "abc"}, headers=me.headers
    )
    assert again.status_code == 200 and again.json() == first.json()
    # Scoped per author and per thread.
    r = await client.post(
        messages_url(thread), json={"body": "b", "client_id": "abc"}, headers=other.headers
    )
    assert r.status_code == 201
    r = await client.post(
        messages_url(second), json={"body": "c", "client_id": "abc"}, headers=me.headers
    )
    assert r.status_code == 201
    rows = await fetch("SELECT id FROM message WHERE client_id = 'abc'")
    assert len(rows) == 3


async def test_a_repeat_changes_nothing_of_the_thread(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """A repeat is no new activity: the thread keeps its version and its place in the list."""
    me, other = await make_user(), await make_user()
    older = await new_thread(client, me, other, title="older")
    body = {"body": "once", "client_id": "abc"}
    await send(client, me, older["id"], **body)
    newer = await new_thread(client, me, other, title="newer")
    await send(client, me, newer["id"])
    url = f"/api/threads/{older['id']}"
    before = (await client.get(url, headers=me.headers)).json()
    again = await client.post(messages_url(older), json=body, headers=me.headers)
    assert again.status_code == 200
    after = (await client.get(url, headers=me.headers)).json()
    assert after["version"] == before["version"]
    assert after["last_message_at"] == before["last_message_at"]
    listed = (await client.get("/api/threads", headers=me.headers)).json()["items"]
    assert [t["title"] for t in listed] == ["newer", "older"]


@API3
async def test_resending_a_deleted_client_id_is_409_and_silent(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    url = messages_url(thread)
    body = {"body": "the secret plan", "client_id": "c-1"}
    message = (await client.post(url, json=body, headers=me.headers)).json()
    await client.delete(f"{url}/{message['id']}", headers=me.headers)
    seen = (await client.get(f"/api/threads/{thread['id']}", headers=me.headers)).json()
    ws = await listen(live_server, friend)
    r = await client.post(url, json=body, headers=me.headers)
    assert r.status_code == 409 and "secret plan" not in r.text
    await assert_silent(ws, since=seen["version"])
    await ws.close()


async def test_concurrent_repeats_make_one_row(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)

    # Separate clients: each request runs on its own database connection and transaction.
    async def post(n: int) -> httpx.Response:
        async with AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post(
                messages_url(thread),
                json={"body": f"try {n}", "client_id": "race"},
                headers=me.headers,
            )

    answers = await asyncio.gather(*(post(n) for n in range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    rows = await fetch("SELECT id FROM message WHERE client_id = 'race'")
    assert len(rows) == 1


@API4
async def test_history_pages(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    ids = [(await send(client, me, thread["id"], f"m{n}"))["id"] for n in range(7)]

    newest = await page(client, me, thread, limit=3)
    assert [m["id"] for m in newest["items"]] == ids[4:] and newest["has_more"]
    older = await page(client, me, thread, limit=3, before=ids[4])
    assert [m["id"] for m in older["items"]] == ids[1:4] and older["has_more"]
    oldest = await page(client, me, thread, limit=3, before=ids[1])
    assert [m["id"] for m in oldest["items"]] == ids[:1] and not oldest["has_more"]
    newer = await page(client, me, thread, limit=3, after=ids[0])
    assert [m["id"] for m in newer["items"]] == ids[1:4] and newer["has_more"]
    last = await page(client, me, thread, limit=3, after=ids[3])
    assert [m["id"] for m in last["items"]] == ids[4:] and not last["has_more"]
    everything = await page(client, me, thread)
    assert [m["id"] for m in everything["items"]] == ids and not everything["has_more"]
    assert (await page(client, me, thread, after=ids[-1]))["items"] == []

    # Deleted messages are left out, and pages close over the gap.
    await client.delete(f"{messages_url(thread)}/{ids[5]}", headers=me.headers)
    newest = await page(client, me, thread, limit=3)
    assert [m["id"] for m in newest["items"]] == [ids[3], ids[4], ids[6]]

    for bad in (
        {"limit": 0},
        {"limit": 201},
        {"limit": 10**6},
        {"before": "x"},
        {"before": ids[2], "after": ids[1]},
    ):
        r = await client.get(messages_url(thread), params=bad, headers=me.headers)
        assert r.status_code == 422, bad


async def test_pages_stay_inside_their_thread(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    a, b = await new_thread(client, me), await new_thread(client, me)
    await send(client, me, a["id"], "in a")
    in_b = await send(client, me, b["id"], "in b")
    await send(client, me, a["id"], "in a again")
    items = (await page(client, me, a))["items"]
    assert [m["body"] for m in items] == ["in a", "in a again"]
    assert all(m["id"] != in_b["id"] for m in (await page(client, me, a, after=0))["items"])


async def test_edit(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, me, other)
    message = await send(client, me, thread["id"], "draft")
    url = f"{messages_url(thread)}/{message['id']}"
    assert (await client.patch(url, json={"body": "x"}, headers=other.headers)).status_code == 403
    assert (await client.patch(url, json={"body": "  "}, headers=me.headers)).status_code == 422
    r = await client.patch(
        url, json={"body": " final ", "author_id": other["id"]}, headers=me.headers
    )
    assert r.status_code == 200
    edited = r.json()
    assert edited["body"] == "final" and edited["edited_at"] is not None
    assert edited["author_id"] == me["id"] and edited["created_at"] == message["created_at"]
    other_thread = await new_thread(client, me)
    wrong = f"{messages_url(other_thread)}/{message['id']}"
    assert (await client.patch(wrong, json={"body": "x"}, headers=me.headers)).status_code == 404
    await client.delete(url, headers=me.headers)
    assert (await client.patch(url, json={"body": "x"}, headers=me.headers)).status_code == 404


@API1
async def test_a_message_id_from_another_thread_is_404(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, other = await make_user(), await make_user()
    mine = await new_thread(client, me)
    theirs = await new_thread(client, other)
    their_message = await send(client, other, theirs["id"])
    url = f"{messages_url(mine)}/{their_message['id']}"
    assert (await client.patch(url, json={"body": "x"}, headers=me.headers)).status_code == 404
    assert (await client.delete(url, headers=me.headers)).status_code == 404


async def test_delete_rules(client: AsyncClient, make_user: MakeUser) -> None:
    owner, author, bystander = await make_user(), await make_user(), await make_user()
    admin = await make_user(scopes=["regular", "admin"])
    thread = await new_thread(client, owner, author, bystander, admin)
    tid = thread["id"]
    m1, m2, m3 = [await send(client, author, tid, f"m{n}") for n in range(3)]
    url = messages_url(thread)
    assert (await client.delete(f"{url}/{m1['id']}", headers=bystander.headers)).status_code == 403
    assert (await client.delete(f"{url}/{m1['id']}", headers=author.headers)).status_code == 204
    assert (await client.delete(f"{url}/{m1['id']}", headers=author.headers)).status_code == 404
    assert (await client.delete(f"{url}/{m2['id']}", headers=owner.headers)).status_code == 204
    assert (await client.delete(f"{url}/{m3['id']}", headers=admin.headers)).status_code == 204
    assert (await page(client, owner, thread))["items"] == []
    rows = await fetch("SELECT deleted FROM message WHERE thread_id = :t", t=tid)
    assert [d for (d,) in rows] == [True, True, True]


async def test_an_admin_outside_the_thread_deletes_a_message(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, author, outsider = await make_user(), await make_user(), await make_user()
    admin = await make_user(scopes=["regular", "admin"])
    thread = await new_thread(client, owner, author)
    message = await send(client, author, thread["id"])
    url = f"{messages_url(thread)}/{message['id']}"
    assert (await client.delete(url, headers=outsider.headers)).status_code == 404
    assert (await client.delete(url, headers=admin.headers)).status_code == 204
    assert (await page(client, owner, thread))["items"] == []
    assert (await client.delete(url, headers=admin.headers)).status_code == 404
    gone = f"/api/threads/999999/messages/{message['id']}"
    assert (await client.delete(gone, headers=admin.headers)).status_code == 404


async def test_statement_counts_do_not_grow_with_page_size(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, *others = [await make_user() for _ in range(4)]
    threads = [await new_thread(client, me, *others) for _ in range(12)]
    for t in threads:
        await send(client, others[0], t["id"])
    for _ in range(12):
        await send(client, others[1], threads[0]["id"])
    counts = {}
    for limit in (2, 12):
        with count_statements() as statements:
            r = await client.get("/api/threads", params={"limit": limit}, headers=me.headers)
        assert len(r.json()["items"]) == limit
        counts[("threads", limit)] = len(statements)
        with count_statements() as statements:
            items = (await page(client, me, threads[0], limit=limit))["items"]
        counts[("messages", limit)] = len(statements)
        assert len(items) == limit
    assert counts[("threads", 2)] == counts[("threads", 12)], counts
    assert counts[("messages", 2)] == counts[("messages", 12)], counts
    assert counts[("threads", 12)] <= 6, counts  # user, threads + unread, members, and BEGIN/COMMIT


@pg_only
async def test_a_plain_send_is_one_statement_and_its_event(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """A plain send on PostgreSQL counts against the limit, writes and commits in one
    statement; the event's NOTIFY is the only other one (none when Redis carries it)."""
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, me, other)
    await send(client, me, thread["id"])  # from here on the caller is remembered
    with count_statements() as statements:
        await send(client, me, thread["id"])
    assert len(statements) == (1 if settings.events_url else 2), statements
    assert "login_counter" in statements[0] and "INSERT INTO message" in statements[0]
