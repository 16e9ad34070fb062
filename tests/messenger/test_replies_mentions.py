"""Replies, reading one message, mentions: on every Message, in the thread list's
`unread_mention_count`, and in the mentions feed."""

from typing import Any

from httpx import AsyncClient

from tests.helpers import (
    MakeUser,
    User,
    count_statements,
    listen,
    new_thread,
    next_event,
    page,
    send,
)


def url(thread_id: int, message_id: int | None = None) -> str:
    base = f"/api/threads/{thread_id}/messages"
    return base if message_id is None else f"{base}/{message_id}"


async def one(client: AsyncClient, user: User, thread_id: int, message_id: int) -> Any:
    r = await client.get(url(thread_id, message_id), headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def listed(client: AsyncClient, user: User) -> dict[int, Any]:
    r = await client.get("/api/threads", headers=user.headers)
    assert r.status_code == 200, r.text
    return {t["id"]: t for t in r.json()["items"]}


async def mentions(client: AsyncClient, user: User, **params: Any) -> Any:
    r = await client.get("/api/mentions", params=params, headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


def invalid(r: Any, field: str) -> None:
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", field]]


# ------------------------------------------------------------------ replies, one message


async def test_a_reply_names_its_message_everywhere(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, other = await make_user(), await make_user()
    thread = await new_thread(client, me, other)
    first = await send(client, other, thread["id"], "Lunch?")
    assert first["reply_to_id"] is None and first["mention_ids"] == []
    reply = await send(client, me, thread["id"], "Yes", reply_to_id=first["id"])
    assert reply["reply_to_id"] == first["id"]
    assert (await page(client, other, thread))["items"][-1] == reply
    assert await one(client, other, thread["id"], reply["id"]) == reply
    # The answered message goes; the reply still names it.
    r = await client.delete(url(thread["id"], first["id"]), headers=other.headers)
    assert r.status_code == 204
    assert (await one(client, me, thread["id"], reply["id"]))["reply_to_id"] == first["id"]
    assert [m["reply_to_id"] for m in (await page(client, me, thread))["items"]] == [first["id"]]


async def test_a_reply_answers_a_live_message_of_its_thread(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me = await make_user()
    thread, elsewhere = await new_thread(client, me), await new_thread(client, me)
    gone = await send(client, me, thread["id"], "soon gone")
    await client.delete(url(thread["id"], gone["id"]), headers=me.headers)
    foreign = await send(client, me, elsewhere["id"], "another thread")
    # Nor itself: the id it is about to take, guessed, names no message yet.
    body = {"body": "re", "reply_to_id": foreign["id"] + 1}
    invalid(await client.post(url(thread["id"]), json=body, headers=me.headers), "reply_to_id")
    for target in (gone["id"], foreign["id"], 10**6):
        body = {"body": "re", "reply_to_id": target}
        invalid(await client.post(url(thread["id"]), json=body, headers=me.headers), "reply_to_id")
    for target in (0, -1, 2**31, "1", 1.5):  # not an id at all
        body = {"body": "re", "reply_to_id": target}
        assert (
            await client.post(url(thread["id"]), json=body, headers=me.headers)
        ).status_code == 422
    assert (await page(client, me, thread))["items"] == []  # nothing was stored


async def test_one_message(client: AsyncClient, make_user: MakeUser) -> None:
    me, other, stranger = await make_user(), await make_user(), await make_user()
    thread, mine = await new_thread(client, me, other), await new_thread(client, me)
    message = await send(client, me, thread["id"], "hello", mention_ids=[other["id"]])
    r = await client.put(f"{url(thread['id'], message['id'])}/reactions/👍", headers=other.headers)
    assert r.status_code == 201
    got = await one(client, other, thread["id"], message["id"])
    assert got["mention_ids"] == [other["id"]]
    assert got["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    assert (await one(client, me, thread["id"], message["id"]))["reactions"][0]["me"] is False
    assert got == (await page(client, other, thread))["items"][0]
    # Not a member, not in this thread (though the caller sees both), deleted: 404 alike.
    assert (
        await client.get(url(thread["id"], message["id"]), headers=stranger.headers)
    ).status_code == 404
    assert (await client.get(url(mine["id"], message["id"]), headers=me.headers)).status_code == 404
    assert (await client.get(url(thread["id"], 10**6), headers=me.headers)).status_code == 404
    await client.delete(url(thread["id"], message["id"]), headers=me.headers)
    r = await client.get(url(thread["id"], message["id"]), headers=me.headers)
    assert r.status_code == 404 and r.json() == {"detail": "Message not found"}


# ------------------------------------------------------------------ mentions on messages


async def test_mentions_are_members_ascending_without_duplicates_or_the_author(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, b, c, outsider, leaver = [await make_user() for _ in range(5)]
    thread = await new_thread(client, me, b, c, leaver)
    ids = [c["id"], b["id"], c["id"], me["id"], b["id"]]
    message = await send(client, me, thread["id"], "you two", mention_ids=ids)
    assert message["mention_ids"] == sorted([b["id"], c["id"]])
    alone = await send(client, me, thread["id"], "me, me", mention_ids=[me["id"]])
    assert alone["mention_ids"] == []
    r = await client.delete(
        f"/api/threads/{thread['id']}/members/{leaver['id']}", headers=leaver.headers
    )
    assert r.status_code == 204
    for wrong in ([outsider["id"]], [b["id"], outsider["id"]], [leaver["id"]], [10**6]):
        body = {"body": "hey", "mention_ids": wrong}
        invalid(await client.post(url(thread["id"]), json=body, headers=me.headers), "mention_ids")
    # At most 50 entries as sent, duplicates included.
    body = {"body": "many", "mention_ids": [b["id"]] * 51}
    assert (await client.post(url(thread["id"]), json=body, headers=me.headers)).status_code == 422
    body = {"body": "many", "mention_ids": [b["id"]] * 50}
    assert (await client.post(url(thread["id"]), json=body, headers=me.headers)).status_code == 201
    bad: Any
    for bad in (None, [0], ["2"], 2, [2**31]):
        body = {"body": "hey", "mention_ids": bad}
        assert (
            await client.post(url(thread["id"]), json=body, headers=me.headers)
        ).status_code == 422
    assert len((await page(client, me, thread))["items"]) == 3


async def test_a_mention_of_a_user_who_blocks_the_author_is_dropped(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, b, blocker = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, me, b, blocker)
    r = await client.put(f"/api/users/me/blocks/{me['id']}", headers=blocker.headers)
    assert r.status_code == 204
    message = await send(client, me, thread["id"], "hi", mention_ids=[blocker["id"], b["id"]])
    assert message["mention_ids"] == [b["id"]]
    assert (await mentions(client, blocker))["items"] == []
    assert (await listed(client, blocker))[thread["id"]]["unread_mention_count"] == 0
    # The other way round is no block: the blocker may mention whom it blocks.
    message = await send(client, blocker, thread["id"], "hi", mention_ids=[me["id"]])
    assert message["mention_ids"] == [me["id"]]


async def test_mentions_travel_with_the_message(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, b = await make_user(), await make_user()
    thread = await new_thread(client, me, b)
    ws = await listen(live_server, b)
    sent = await send(client, me, thread["id"], "lunch with b", mention_ids=[b["id"]])
    event = await next_event(ws, since=thread["version"])
    assert event["type"] == "message.created" and event["data"]["mention_ids"] == [b["id"]]
    r = await client.get(f"/api/threads/{thread['id']}/changes", headers=b.headers)
    assert [m["mention_ids"] for m in r.json()["items"]] == [[b["id"]]]
    r = await client.get("/api/messages/search", params={"q": "lunch"}, headers=b.headers)
    assert [m["mention_ids"] for m in r.json()["items"]] == [[b["id"]]]
    r = await client.patch(
        url(thread["id"], sent["id"]), json={"body": "dinner"}, headers=me.headers
    )
    assert r.json()["mention_ids"] == [b["id"]]
    assert (await next_event(ws))["data"]["mention_ids"] == [b["id"]]
    await ws.close()


# ------------------------------------------------------------------ unread mention counts


async def test_unread_mention_count(client: AsyncClient, make_user: MakeUser) -> None:
    me, b, c = await make_user(), await make_user(), await make_user()
    thread, quiet = await new_thread(client, me, b, c), await new_thread(client, me, b)
    await send(client, me, quiet["id"], "no mention")
    first = await send(client, me, thread["id"], "b?", mention_ids=[b["id"]])
    await send(client, me, thread["id"], "everyone", mention_ids=[b["id"], c["id"]])
    gone = await send(client, me, thread["id"], "soon deleted", mention_ids=[b["id"]])
    await client.delete(url(thread["id"], gone["id"]), headers=me.headers)
    seen = await listed(client, b)
    assert seen[thread["id"]]["unread_mention_count"] == 2  # the deleted one not
    assert seen[quiet["id"]]["unread_mention_count"] == 0
    assert (await listed(client, c))[thread["id"]]["unread_mention_count"] == 1
    assert (await listed(client, me))[thread["id"]]["unread_mention_count"] == 0
    r = await client.get(f"/api/threads/{thread['id']}", headers=b.headers)
    assert r.json()["unread_mention_count"] == 2
    # Sending moves one's own marker: c's mentions are read, the one of me is not.
    await send(client, c, thread["id"], "me?", mention_ids=[me["id"]])
    assert (await listed(client, c))[thread["id"]]["unread_mention_count"] == 0
    assert (await listed(client, me))[thread["id"]]["unread_mention_count"] == 1
    # Read up to the first: one left; read all: none.
    body = {"message_id": first["id"]}
    await client.post(f"/api/threads/{thread['id']}/read", json=body, headers=b.headers)
    assert (await listed(client, b))[thread["id"]]["unread_mention_count"] == 1
    last = (await page(client, b, thread))["items"][-1]["id"]
    await client.post(
        f"/api/threads/{thread['id']}/read", json={"message_id": last}, headers=b.headers
    )
    assert (await listed(client, b))[thread["id"]]["unread_mention_count"] == 0


async def test_thread_events_carry_no_counts(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    b, me = await make_user(), await make_user()
    thread = await new_thread(client, b, me)
    ws = await listen(live_server, b)
    await send(client, me, thread["id"], "b!", mention_ids=[b["id"]])
    assert (await next_event(ws, since=thread["version"]))["type"] == "message.created"
    r = await client.patch(f"/api/threads/{thread['id']}", json={"title": "x"}, headers=b.headers)
    assert r.json()["unread_mention_count"] == 1  # b's own view
    event = await next_event(ws)
    assert event["type"] == "thread.updated"  # every member's alike
    assert event["data"]["unread_count"] == 0 and event["data"]["unread_mention_count"] == 0
    await ws.close()


# ------------------------------------------------------------------ the mentions feed


async def test_the_mentions_feed(client: AsyncClient, make_user: MakeUser) -> None:
    me, b, c = await make_user(), await make_user(), await make_user()
    kept, left, deleted = [await new_thread(client, me, b, c) for _ in range(3)]
    sent = []
    for n in range(5):
        sent.append(await send(client, me, kept["id"], f"m{n}", mention_ids=[b["id"]]))
    await send(client, me, kept["id"], "for c only", mention_ids=[c["id"]])
    await send(client, me, kept["id"], "no one")
    gone = await send(client, me, kept["id"], "deleted", mention_ids=[b["id"]])
    await client.delete(url(kept["id"], gone["id"]), headers=me.headers)
    await send(client, me, left["id"], "in a thread b left", mention_ids=[b["id"]])
    await client.delete(f"/api/threads/{left['id']}/members/{b['id']}", headers=b.headers)
    await send(client, me, deleted["id"], "in a deleted thread", mention_ids=[b["id"]])
    await client.delete(f"/api/threads/{deleted['id']}", headers=me.headers)
    # Newest first, in keyset pages, each a full Message.
    got, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        feed = await mentions(client, b, **params)
        assert set(feed) == {"items", "next_cursor"} and len(feed["items"]) <= 2
        got += feed["items"]
        if (cursor := feed["next_cursor"]) is None:
            break
    assert got == sent[::-1]
    assert [m["body"] for m in (await mentions(client, c))["items"]] == ["for c only"]
    assert (await mentions(client, me))["items"] == []
    r = await client.get("/api/mentions", params={"cursor": "bogus"}, headers=b.headers)
    assert r.status_code == 400
    assert (
        await client.get("/api/mentions", params={"limit": 0}, headers=b.headers)
    ).status_code == 422
    assert (await client.get("/api/mentions")).status_code == 401


# ------------------------------------------------------------------ statements per page


async def test_pages_do_not_cost_a_statement_per_row(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, b = await make_user(), await make_user()
    threads = [await new_thread(client, b, me) for _ in range(20)]
    for thread in threads:
        await send(client, b, thread["id"], "hey", mention_ids=[me["id"]])
    for _ in range(19):
        await send(client, b, threads[0]["id"], "again", mention_ids=[me["id"]])
    requests = {
        "threads": "/api/threads",
        "messages": url(threads[0]["id"]),
        "mentions": "/api/mentions",
    }
    counts = {}
    await client.get("/api/users/me", headers=me.headers)  # the caller is remembered
    for limit in (2, 20):
        for name, path in requests.items():
            with count_statements() as statements:
                r = await client.get(path, params={"limit": limit}, headers=me.headers)
            assert len(r.json()["items"]) == limit
            assert all(m["mention_ids"] == [me["id"]] for m in r.json()["items"] if "body" in m)
            counts[name, limit] = len(statements)
    for name in requests:
        assert counts[name, 2] == counts[name, 20], counts
    assert all(t["unread_mention_count"] >= 1 for t in (await listed(client, me)).values())
