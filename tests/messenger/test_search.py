"""Message search: every word, any case (non-ASCII too), the caller's live threads only,
deleted messages never, keyset pages newest first, and the full-text index on each database."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from httpx import AsyncClient
from sqlalchemy import event

from app.core.db import engine
from app.core.settings import settings
from tests.helpers import API1, MakeUser, User, new_thread, send

SEARCH = "/api/messages/search"


async def search(client: AsyncClient, user: User, q: str, **params: Any) -> Any:
    r = await client.get(SEARCH, params={"q": q, **params}, headers=user.headers)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"items", "next_cursor"}
    return r.json()


async def bodies(client: AsyncClient, user: User, q: str, **params: Any) -> list[str]:
    return [m["body"] for m in (await search(client, user, q, **params))["items"]]


async def test_every_word_must_match_in_any_case(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    for body in ("Red apple pie", "green APPLE", "a red car", "École ouverte", "ÜBER straße"):
        await send(client, me, thread["id"], body)
    assert await bodies(client, me, "apple") == ["green APPLE", "Red apple pie"]  # newest first
    assert await bodies(client, me, "pie RED apple") == ["Red apple pie"]
    assert await bodies(client, me, "red, car!") == ["a red car"]  # punctuation is no word
    assert await bodies(client, me, "apple car") == []
    assert await bodies(client, me, "ÉCOLE") == ["École ouverte"]
    assert await bodies(client, me, "école") == ["École ouverte"]
    assert await bodies(client, me, "über") == ["ÜBER straße"]
    assert await bodies(client, me, "app") == []  # whole words


async def test_a_word_is_a_run_of_letters_and_digits(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """Whatever else a body holds parts its words, in the index as in the query: a number,
    an address, a path or a version is found whole and by each of its words."""
    me = await make_user()
    thread = await new_thread(client, me)
    body = "pi is 3.14, mail ada@example.com, see example.com/docs and /usr/bin, v2.0-beta"
    other = "Привет—мир «école» 東京、大阪 straße/über"
    for sent in (body, other):
        await send(client, me, thread["id"], sent)
    for q in ("3.14", "3", "14", "ada", "ada@example.com", "example", "example.com", "docs"):
        assert await bodies(client, me, q) == [body], q
    for q in ("usr", "/usr/bin", "bin", "v2", "beta", "v2.0-beta", "v2.0", "mail ada"):
        assert await bodies(client, me, q) == [body], q
    for q in ("привет", "МИР", "école", "東京", "大阪", "über", "straße/über", "мир 東京"):
        assert await bodies(client, me, q) == [other], q
    for q in ("3.1", "2"):  # no word "1", and "v2" is one
        assert await bodies(client, me, q) == [], q


@API1
async def test_only_the_callers_live_threads(client: AsyncClient, make_user: MakeUser) -> None:
    me, friend, stranger = await make_user(), await make_user(), await make_user()
    ours = await new_thread(client, me, friend)
    theirs = await new_thread(client, stranger)
    left = await new_thread(client, friend, me)
    gone = await new_thread(client, me)
    await send(client, me, ours["id"], "secret plan")
    await send(client, stranger, theirs["id"], "secret plan of theirs")
    await send(client, friend, left["id"], "secret plan before I left")
    await send(client, me, gone["id"], "secret plan, thread deleted")
    await client.delete(f"/api/threads/{left['id']}/members/{me['id']}", headers=me.headers)
    await client.delete(f"/api/threads/{gone['id']}", headers=me.headers)

    assert await bodies(client, me, "secret") == ["secret plan"]
    assert await bodies(client, stranger, "secret") == ["secret plan of theirs"]
    assert await bodies(client, friend, "secret") == ["secret plan before I left", "secret plan"]
    assert await bodies(client, friend, "secret", thread_id=ours["id"]) == ["secret plan"]
    # A thread that is not the caller's (any more), or not at all: 404, not an empty page.
    for tid in (theirs["id"], left["id"], gone["id"], 99999):
        r = await client.get(SEARCH, params={"q": "secret", "thread_id": tid}, headers=me.headers)
        assert r.status_code == 404, tid


async def test_deleted_and_edited_messages(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    kept = await send(client, me, thread["id"], "keep this note")
    dropped = await send(client, me, thread["id"], "drop this note")
    base = f"/api/threads/{thread['id']}/messages"
    await client.delete(f"{base}/{dropped['id']}", headers=me.headers)
    assert await bodies(client, me, "note") == ["keep this note"]
    assert await bodies(client, me, "drop") == []
    await client.patch(f"{base}/{kept['id']}", json={"body": "a memo now"}, headers=me.headers)
    assert await bodies(client, me, "note") == []
    found = (await search(client, me, "MEMO"))["items"]
    assert [m["id"] for m in found] == [kept["id"]] and found[0]["edited_at"] is not None


async def test_pages_newest_first(client: AsyncClient, make_user: MakeUser) -> None:
    me, friend = await make_user(), await make_user()
    one, two = await new_thread(client, me, friend), await new_thread(client, friend, me)
    ids = []
    for n in range(7):
        ids.append((await send(client, friend, (one, two)[n % 2]["id"], f"ping {n}"))["id"])
        await send(client, friend, one["id"], f"other {n}")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        result = await search(client, me, "ping", **params)
        seen += [m["id"] for m in result["items"]]
        pages += 1
        if (cursor := result["next_cursor"]) is None:
            break
    assert seen == ids[::-1] and pages == 3
    # A full last page says so: no cursor to an empty one.
    assert (await search(client, me, "ping", limit=7))["next_cursor"] is None


async def test_bad_input(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    await send(client, me, thread["id"], "x" * 10)
    for q in ("", " ", "!!!", "-- _ *", "\x00", "a" * 201, '"', "()"):
        r = await client.get(SEARCH, params={"q": q}, headers=me.headers)
        assert r.status_code == 422, repr(q)
    bad: list[dict[str, str | int]] = [
        {},
        {"q": "a", "limit": 0},
        {"q": "a", "limit": 201},
        {"q": "a", "thread_id": 0},
    ]
    for params in bad:
        assert (await client.get(SEARCH, params=params, headers=me.headers)).status_code == 422
    for cursor in ("garbage", "W10", "WyJ4Il0"):
        r = await client.get(SEARCH, params={"q": "a", "cursor": cursor}, headers=me.headers)
        assert r.status_code == 400
    # FTS5 and tsquery syntax is plain text here.
    for q in ("x" * 10 + " OR", 'NEAR("a b")', "a & !b | c:*", "a" * 200, "x* AND NOT"):
        assert (await client.get(SEARCH, params={"q": q}, headers=me.headers)).status_code == 200
    assert (await client.get(SEARCH, params={"q": "a"})).status_code == 401


@contextmanager
def record_statements() -> Iterator[list[tuple[str, Any]]]:
    """The statements run meanwhile, with their parameters as the driver got them."""
    statements: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        statements.append((args[2], args[3]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_search_uses_the_full_text_index(client: AsyncClient, make_user: MakeUser) -> None:
    """The plan of the very statement the app runs: through the index, never a scan of
    the message table (on PostgreSQL with scans made dearest, as a big table makes them)."""
    me = await make_user()
    thread = await new_thread(client, me)
    for n in range(30):
        await send(client, me, thread["id"], f"word{n % 5} filler")
    with record_statements() as statements:
        assert len(await bodies(client, me, "word3 filler")) == 6
    sql, args = next(s for s in statements if "message_fts" in s[0] or "tsvector" in s[0])
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        if settings.is_sqlite:
            cursor = await driver.execute(f"EXPLAIN QUERY PLAN {sql}", args)
            plan = "\n".join(row[3] for row in await cursor.fetchall())
            assert "VIRTUAL TABLE INDEX" in plan, plan
            assert not re.search(r"SCAN message\b(?! USING INTEGER PRIMARY KEY)", plan), plan
        else:
            await driver.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in await driver.fetch(f"EXPLAIN {sql}", *args))
            await driver.execute("RESET enable_seqscan")
            assert "ix_message_body_fts" in plan and "Seq Scan on message" not in plan, plan
        print(plan)
