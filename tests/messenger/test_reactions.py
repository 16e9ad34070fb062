"""Reactions: PUT/DELETE statuses, the emoji rule, the 20-emoji cap (under a race too),
first-use order and `me` on every Message, versions and events."""

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
from httpx import AsyncClient

from app.main import app
from tests.helpers import (
    MakeUser,
    User,
    assert_silent,
    count_statements,
    fetch,
    listen,
    new_thread,
    next_event,
    page,
    send,
)


def url(message: Any, emoji: str) -> str:
    return f"/api/threads/{message['thread_id']}/messages/{message['id']}/reactions/{quote(emoji)}"


async def react(client: AsyncClient, user: User, message: Any, emoji: str) -> httpx.Response:
    return await client.put(url(message, emoji), headers=user.headers)


async def unreact(client: AsyncClient, user: User, message: Any, emoji: str) -> httpx.Response:
    return await client.delete(url(message, emoji), headers=user.headers)


async def reactions_seen_by(client: AsyncClient, user: User, message: Any) -> Any:
    thread = {"id": message["thread_id"]}
    items = (await page(client, user, thread))["items"]
    return next(m for m in items if m["id"] == message["id"])["reactions"]


async def thread_version(client: AsyncClient, user: User, thread_id: int) -> int:
    r = await client.get(f"/api/threads/{thread_id}", headers=user.headers)
    version: int = r.json()["version"]
    return version


def racing_client() -> AsyncClient:
    """Its own client, so that each request runs on its own connection and transaction."""
    return AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_put_and_delete_statuses(client: AsyncClient, make_user: MakeUser) -> None:
    me, friend, stranger = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    message = await send(client, me, thread["id"])
    assert message["reactions"] == []

    r = await react(client, friend, message, "👍")
    assert r.status_code == 201, r.text
    assert r.json()["id"] == message["id"] and r.json()["body"] == message["body"]
    assert r.json()["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    again = await react(client, friend, message, "👍")
    assert again.status_code == 200 and again.json()["reactions"] == r.json()["reactions"]
    assert len(await fetch("SELECT id FROM reaction")) == 1

    assert (await unreact(client, friend, message, "👍")).status_code == 204
    assert (await unreact(client, friend, message, "👍")).status_code == 204  # never was: same
    assert (await unreact(client, me, message, "🎉")).status_code == 204
    assert await fetch("SELECT id FROM reaction") == []
    assert await reactions_seen_by(client, me, message) == []

    # Not a member, no such message, a deleted one: 404, as for a thread that is not there.
    for who, target in (
        (stranger, message),
        (me, {**message, "id": message["id"] + 100}),
        (me, {**message, "thread_id": thread["id"] + 100}),
    ):
        assert (await react(client, who, target, "👍")).status_code == 404
        assert (await unreact(client, who, target, "👍")).status_code == 404
    await client.delete(f"/api/threads/{thread['id']}/messages/{message['id']}", headers=me.headers)
    assert (await react(client, me, message, "👍")).status_code == 404
    assert (await client.put(url(message, "👍"))).status_code == 401


async def test_emoji_rule(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    message = await send(client, me, thread["id"])
    for good in ("👍", "👍🏽", "👨‍👩‍👧‍👦", "thumbs_up", "+1", "é" * 32, "🙂" * 32):
        assert (await react(client, me, message, good)).status_code == 201, good
    for bad in ("a b", "a\tb", "a\u00a0b", "\u3000", "x\ny", "a/b", "/", "é" * 33, "a\x00"):
        assert (await react(client, me, message, bad)).status_code == 422, repr(bad)
        assert (await unreact(client, me, message, bad)).status_code == 422, repr(bad)
    base = f"/api/threads/{thread['id']}/messages/{message['id']}/reactions/"
    assert (await client.put(base, headers=me.headers)).status_code == 422  # empty
    assert len(await fetch("SELECT id FROM reaction")) == 7


async def test_at_most_20_different_emoji(client: AsyncClient, make_user: MakeUser) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    message = await send(client, me, thread["id"])
    for n in range(20):
        assert (await react(client, me, message, f"e{n}")).status_code == 201
    version = await thread_version(client, me, thread["id"])
    r = await react(client, me, message, "e20")
    assert r.status_code == 409 and "20" in r.json()["detail"]
    assert await thread_version(client, me, thread["id"]) == version  # refused: no change
    # More of the same 20 are fine: the cap counts different emoji.
    assert (await react(client, friend, message, "e7")).status_code == 201
    assert (await react(client, me, message, "e7")).status_code == 200
    # One gone makes room for another.
    assert (await unreact(client, me, message, "e3")).status_code == 204
    assert (await react(client, friend, message, "e20")).status_code == 201
    assert (await react(client, friend, message, "e21")).status_code == 409
    emoji = [r["emoji"] for r in await reactions_seen_by(client, me, message)]
    assert len(emoji) == 20 and "e3" not in emoji and emoji[-1] == "e20"


async def test_the_cap_holds_under_a_race(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    message = await send(client, me, thread["id"])
    for n in range(17):
        assert (await react(client, me, message, f"e{n}")).status_code == 201

    async def put(n: int) -> httpx.Response:
        async with racing_client() as c:
            return await react(c, me, message, f"new{n}")

    answers = await asyncio.gather(*(put(n) for n in range(8)))
    assert sorted(r.status_code for r in answers) == [201] * 3 + [409] * 5
    rows = await fetch("SELECT DISTINCT emoji FROM reaction WHERE message_id = :m", m=message["id"])
    assert len(rows) == 20


async def test_identical_puts_racing_make_one_row(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    message = await send(client, me, thread["id"])
    version = await thread_version(client, me, thread["id"])

    async def put() -> httpx.Response:
        async with racing_client() as c:
            return await react(c, me, message, "🔥")

    answers = await asyncio.gather(*(put() for _ in range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
    assert all(r.json()["reactions"] == [{"emoji": "🔥", "count": 1, "me": True}] for r in answers)
    assert len(await fetch("SELECT id FROM reaction")) == 1
    assert await thread_version(client, me, thread["id"]) == version + 1  # one change


async def test_first_use_order_and_me_on_every_message(
    client: AsyncClient, make_user: MakeUser
) -> None:
    ann, bob, cy = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, ann, bob, cy)
    message = await send(client, ann, thread["id"], "lunch?")
    other = await send(client, bob, thread["id"], "no reactions here")
    await react(client, bob, message, "👍")
    await react(client, cy, message, "❤️")
    await react(client, ann, message, "🎉")
    r = await react(client, ann, message, "👍")
    assert r.json()["reactions"] == [
        {"emoji": "👍", "count": 2, "me": True},
        {"emoji": "❤️", "count": 1, "me": False},
        {"emoji": "🎉", "count": 1, "me": True},
    ]
    assert [x["me"] for x in await reactions_seen_by(client, cy, message)] == [False, True, False]
    assert await reactions_seen_by(client, cy, other) == []

    # 👍 keeps its place while ann still uses it.
    await unreact(client, bob, message, "👍")
    expected = [
        {"emoji": "👍", "count": 1, "me": True},
        {"emoji": "❤️", "count": 1, "me": False},
        {"emoji": "🎉", "count": 1, "me": True},
    ]
    assert await reactions_seen_by(client, ann, message) == expected

    # Edit, the changes feed and search show them as well.
    base = f"/api/threads/{thread['id']}"
    edited = await client.patch(
        f"{base}/messages/{message['id']}", json={"body": "lunch at one?"}, headers=ann.headers
    )
    assert edited.json()["reactions"] == expected
    changes = (await client.get(f"{base}/changes", headers=ann.headers)).json()["items"]
    assert {m["id"]: m["reactions"] for m in changes} == {message["id"]: expected, other["id"]: []}
    found = await client.get("/api/messages/search", params={"q": "lunch"}, headers=ann.headers)
    assert found.json()["items"][0]["reactions"] == expected

    # A deleted message is a tombstone in the feed, its reactions gone with its body.
    await client.delete(f"{base}/messages/{message['id']}", headers=ann.headers)
    changes = (await client.get(f"{base}/changes", headers=ann.headers)).json()["items"]
    assert changes[-1]["deleted"] and changes[-1]["reactions"] == []


async def test_an_emoji_keeps_its_place_while_anyone_uses_it(
    client: AsyncClient, make_user: MakeUser
) -> None:
    ann, bob, cy = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, ann, bob, cy)
    message = await send(client, ann, thread["id"], "lunch?")
    for user, emoji in ((ann, "👍"), (bob, "❤️"), (cy, "👍"), (cy, "🎉")):
        assert (await react(client, user, message, emoji)).status_code == 201
    # Its first user takes it back: 👍 was still first used before ❤️.
    await unreact(client, ann, message, "👍")
    seen = await reactions_seen_by(client, bob, message)
    assert [x["emoji"] for x in seen] == ["👍", "❤️", "🎉"]
    # Taken back by everyone, it is gone; used again, it is used anew, last.
    await unreact(client, cy, message, "👍")
    await react(client, ann, message, "🙂")
    await react(client, bob, message, "👍")
    seen = await reactions_seen_by(client, cy, message)
    assert [x["emoji"] for x in seen] == ["❤️", "🎉", "🙂", "👍"]


async def test_a_change_bumps_the_versions_and_is_published(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    message = await send(client, me, thread["id"])
    mine = await react(client, me, message, "👀")  # so that `me` differs between readers
    ws = await listen(live_server, friend)
    before = await thread_version(client, me, thread["id"])

    r = await react(client, friend, message, "👍")
    added = r.json()
    assert added["version"] == before + 1 == await thread_version(client, me, thread["id"])
    assert added["reactions"][1] == {"emoji": "👍", "count": 1, "me": True}
    event = await next_event(ws, since=before)
    assert event["type"] == "reaction.added" and event["thread_id"] == thread["id"]
    assert event["version"] == added["version"]
    # Events go to every member alike: no reaction is `me` in them.
    everyone = [{**x, "me": False} for x in added["reactions"]]
    assert event["data"] == {**added, "reactions": everyone}
    assert mine.json()["reactions"][0]["me"] and not event["data"]["reactions"][0]["me"]

    # Nothing changed, nothing counted, nothing sent.
    assert (await react(client, friend, message, "👍")).status_code == 200
    assert (await unreact(client, friend, message, "🙈")).status_code == 204
    await assert_silent(ws)
    assert await thread_version(client, me, thread["id"]) == added["version"]

    assert (await unreact(client, friend, message, "👍")).status_code == 204
    event = await next_event(ws)
    assert event["type"] == "reaction.removed" and event["version"] == added["version"] + 1
    assert event["data"]["reactions"] == [{"emoji": "👀", "count": 1, "me": False}]
    assert event["data"]["version"] == event["version"]
    assert await thread_version(client, me, thread["id"]) == event["version"]

    # The changes feed brings a client that saw `before` up to date with the reaction.
    r = await client.get(
        f"/api/threads/{thread['id']}/changes", params={"since": before}, headers=friend.headers
    )
    assert [(m["id"], m["version"]) for m in r.json()["items"]] == [
        (message["id"], event["version"])
    ]
    await ws.close()


async def test_reactions_of_a_page_cost_one_statement(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, friend = await make_user(), await make_user()
    thread = await new_thread(client, me, friend)
    for n in range(12):
        message = await send(client, me, thread["id"], f"m{n}")
        for emoji in ("👍", "❤️")[: n % 3]:
            await react(client, friend, message, emoji)
    counts = {}
    for limit in (2, 12):
        with count_statements() as statements:
            items = (await page(client, me, thread, limit=limit))["items"]
        assert len(items) == limit
        counts[limit] = len(statements)
    assert counts[2] == counts[12], counts
    # The caller, the membership, the page, its reactions, mentions and attachments (and
    # SQLite's BEGIN).
    assert counts[12] <= 7, counts
    assert sum(len(m["reactions"]) for m in items) == 12
