"""Attachments: uploads named in a send, on every Message in the order given, each carried
by one message at most, even when two sends race for it."""

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient

from tests.helpers import (
    MakeUser,
    User,
    count_statements,
    fetch,
    listen,
    new_thread,
    next_event,
    page,
    send,
    upload,
)
from tests.messenger.conftest import Backend


def messages_url(thread: Any) -> str:
    return f"/api/threads/{thread['id']}/messages"


async def send_with(
    client: AsyncClient, user: User, thread: Any, ids: list[Any], body: str = ""
) -> Any:
    return await client.post(
        messages_url(thread), json={"body": body, "attachment_ids": ids}, headers=user.headers
    )


async def test_attachments_in_the_order_given_on_every_message(
    client: AsyncClient, live_server: str, make_user: MakeUser, backend: Backend
) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    ws = await listen(live_server, friend)
    a, b, c = [await upload(client, me, f"file {n}".encode(), f"{n}.txt") for n in "abc"]
    r = await send_with(client, me, thread, [c["id"], a["id"], b["id"]], "  ")
    assert r.status_code == 201, r.text
    message = r.json()
    assert message["body"] == ""  # with an attachment, a body may be empty
    assert message["attachments"] == [c, a, b]

    event = await next_event(ws, since=thread["version"])
    assert event["type"] == "message.created" and event["data"]["attachments"] == [c, a, b]
    plain = await send(client, me, thread["id"], "no files")
    assert plain["attachments"] == []
    assert (await next_event(ws))["data"]["attachments"] == []

    items = (await page(client, friend, thread))["items"]
    assert [m["attachments"] for m in items] == [[c, a, b], []]
    url = f"{messages_url(thread)}/{message['id']}"
    r = await client.patch(url, json={"body": "edited"}, headers=me.headers)
    assert r.json()["attachments"] == [c, a, b]
    assert (await next_event(ws))["data"]["attachments"] == [c, a, b]
    r = await client.put(f"{url}/reactions/👍", headers=friend.headers)
    assert r.json()["attachments"] == [c, a, b]
    assert (await next_event(ws))["data"]["attachments"] == [c, a, b]
    changes = await client.get(f"/api/threads/{thread['id']}/changes", headers=friend.headers)
    assert [m["attachments"] for m in changes.json()["items"]] == [[], [c, a, b]]
    found = await client.get("/api/messages/search", params={"q": "edited"}, headers=friend.headers)
    assert [m["attachments"] for m in found.json()["items"]] == [[c, a, b]]

    # Deleted: a tombstone without them, and every one of them gone.
    assert (await client.delete(url, headers=me.headers)).status_code == 204
    assert (await next_event(ws))["data"]["attachments"] == []
    changes = await client.get(f"/api/threads/{thread['id']}/changes", headers=friend.headers)
    assert [m["attachments"] for m in changes.json()["items"]] == [[], []]
    for up in (a, b, c):
        r = await client.get(f"/api/uploads/{up['id']}", headers=me.headers)
        assert r.status_code == 404
    await ws.close()


async def test_a_repeated_client_id_returns_the_original_with_its_attachments(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    up = await upload(client, me)
    body = {"body": "x", "client_id": "c-1", "attachment_ids": [up["id"]]}
    first = await client.post(messages_url(thread), json=body, headers=me.headers)
    again = await client.post(messages_url(thread), json=body, headers=me.headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json() and again.json()["attachments"] == [up]


async def test_what_may_be_attached(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, me, other)
    ups = [await upload(client, me) for _ in range(11)]
    theirs = await upload(client, other)
    ids = [u["id"] for u in ups]

    async def refused(attachment_ids: list[Any], body: str = "hi") -> None:
        r = await send_with(client, me, thread, attachment_ids, body)
        assert r.status_code == 422, r.text

    await refused([], "")  # nothing to say
    await refused([], "   ")
    await refused(ids)  # 11
    await refused([theirs["id"]])  # another user's
    await refused([ids[0], ids[0]])  # the same twice
    await refused([ids[0], 2_000_000])  # one that does not exist
    await refused([ids[0], 2**31])  # past what an id can be
    await refused(["1"])  # strict JSON types
    await refused([ids[0]], "x" * 4001)
    assert await fetch("SELECT id FROM message") == []
    assert (await send_with(client, me, thread, ids[:10], "x" * 4000)).status_code == 201
    await refused([ids[0]])  # carried by a message already
    r = await send_with(client, me, thread, [ids[10]])
    assert r.status_code == 201 and r.json()["body"] == ""


async def test_racing_sends_attach_an_upload_once(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    threads = [await new_thread(client, me) for _ in range(2)]
    for _ in range(5):
        ups = [await upload(client, me) for _ in range(2)]
        ids = [u["id"] for u in ups]
        results = await asyncio.gather(
            send_with(client, me, threads[0], ids, "one"),
            send_with(client, me, threads[1], ids[::-1], "two"),
        )
        assert sorted(r.status_code for r in results) == [201, 422], [r.text for r in results]
        [won] = [r.json() for r in results if r.status_code == 201]
        rows = await fetch("SELECT message_id FROM upload WHERE id IN (:a, :b)", a=ids[0], b=ids[1])
        assert {r.message_id for r in rows} == {won["id"]}
    assert len(await fetch("SELECT id FROM message")) == 5


@pytest.mark.parametrize("attached", [0, 1, 3])
async def test_a_page_fills_attachments_in_one_statement(
    client: AsyncClient, make_user: MakeUser, backend: Backend, attached: int
) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    for n in range(12):
        ids = [(await upload(client, me))["id"] for _ in range(attached if n % 2 else 0)]
        assert (await send_with(client, me, thread, ids, f"m{n}")).status_code == 201
    await page(client, me, thread)  # the caller remembered
    counts = []
    for limit in (2, 12):
        with count_statements() as statements:
            items = (await page(client, me, thread, limit=limit))["items"]
        assert [len(m["attachments"]) for m in items][-2:] == [0, attached]
        counts.append(len([s for s in statements if "FROM upload" in s]))
    assert counts == [1, 1]
