"""Typing indicators: to the thread's other members' sockets on every process, never to
the typist's own nor to members who block it; nothing stored; one per user and thread
every 3 seconds."""

import asyncio
from collections.abc import Iterator

import pytest
from httpx import AsyncClient
from websockets.asyncio.client import ClientConnection

from app.messenger import indicators
from tests.helpers import (
    MakeUser,
    assert_silent,
    listen,
    new_thread,
    next_event,
    sign_up,
)


@pytest.fixture(autouse=True)
def forget_typists() -> Iterator[None]:
    """Ids start again at 1 in each test: what an earlier test's typists did must not count."""
    indicators.throttle.passed.clear()
    yield


async def created(*sockets: ClientConnection) -> None:
    """Each socket's next event is a new thread (sockets opened first miss nothing)."""
    for ws in sockets:
        assert (await next_event(ws))["type"] == "thread.created"


def typing(thread: dict[str, int] | int) -> str:
    thread_id = thread if isinstance(thread, int) else thread["id"]
    return f"/api/threads/{thread_id}/typing"


async def test_typing_reaches_the_other_members_only(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, b, stranger = await make_user(), await make_user(), await make_user()
    mine, theirs, strangers = [await listen(live_server, u) for u in (me, b, stranger)]
    thread = await new_thread(client, me, b)
    await created(mine, theirs)
    version = (await client.get(f"/api/threads/{thread['id']}", headers=me.headers)).json()[
        "version"
    ]
    r = await client.post(typing(thread), headers=me.headers)
    assert r.status_code == 204 and r.content == b""
    assert await next_event(theirs) == {
        "type": "typing", "thread_id": thread["id"], "data": {"user_id": me["id"]},
    }  # fmt: skip
    await assert_silent(mine)
    await assert_silent(strangers)
    # Nothing stored: no new version, no change to catch up on.
    r = await client.get(f"/api/threads/{thread['id']}", headers=me.headers)
    assert r.json()["version"] == version
    r = await client.get(f"/api/threads/{thread['id']}/changes", headers=b.headers)
    assert r.json()["items"] == []
    for ws in (mine, theirs, strangers):
        await ws.close()


async def test_only_members_may_type(client: AsyncClient, make_user: MakeUser) -> None:
    me, stranger = await make_user(), await make_user()
    thread = await new_thread(client, me)
    assert (await client.post(typing(thread), headers=stranger.headers)).status_code == 404
    assert (await client.post(typing(10**6), headers=me.headers)).status_code == 404
    assert (await client.post(typing(thread))).status_code == 401
    await client.delete(f"/api/threads/{thread['id']}", headers=me.headers)
    assert (await client.post(typing(thread), headers=me.headers)).status_code == 404


async def test_members_who_block_the_typist_hear_nothing(
    client: AsyncClient, live_server: str, make_user: MakeUser
) -> None:
    me, b, blocker = await make_user(), await make_user(), await make_user()
    mine, theirs, blockers = [await listen(live_server, u) for u in (me, b, blocker)]
    thread = await new_thread(client, me, b, blocker)
    await created(mine, theirs, blockers)
    assert (
        await client.put(f"/api/users/me/blocks/{me['id']}", headers=blocker.headers)
    ).status_code == 204
    assert (await client.post(typing(thread), headers=me.headers)).status_code == 204
    assert (await next_event(theirs))["data"] == {"user_id": me["id"]}
    await assert_silent(blockers)
    # The blocker's own typing still reaches the one it blocks.
    assert (await client.post(typing(thread), headers=blocker.headers)).status_code == 204
    assert (await next_event(mine))["data"] == {"user_id": blocker["id"]}
    for ws in (theirs, blockers, mine):
        await ws.close()


@pytest.mark.timing
async def test_one_event_per_user_and_thread_every_few_seconds(
    client: AsyncClient, live_server: str, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indicators.throttle, "seconds", 1.0)
    me, b, c = await make_user(), await make_user(), await make_user()
    ws = await listen(live_server, b)
    thread, other = await new_thread(client, me, b, c), await new_thread(client, me, b)
    await created(ws, ws)
    for _ in range(3):
        assert (await client.post(typing(thread), headers=me.headers)).status_code == 204
    assert (await next_event(ws))["data"] == {"user_id": me["id"]}
    await assert_silent(ws)
    # Another thread, another user: each has its own turn.
    assert (await client.post(typing(other), headers=me.headers)).status_code == 204
    assert (await next_event(ws))["thread_id"] == other["id"]
    assert (await client.post(typing(thread), headers=c.headers)).status_code == 204
    assert (await next_event(ws))["data"] == {"user_id": c["id"]}
    await asyncio.sleep(1.0)
    assert (await client.post(typing(thread), headers=me.headers)).status_code == 204
    assert (await next_event(ws))["data"] == {"user_id": me["id"]}
    await ws.close()


def test_the_throttle_remembers_little() -> None:
    throttle = indicators.Throttle(seconds=60, size=3)
    assert [throttle.allow((n, 1)) for n in range(5)] == [True] * 5
    assert len(throttle.passed) == 3  # the oldest went first
    assert not throttle.allow((4, 1)) and throttle.allow((0, 1))
    throttle = indicators.Throttle(seconds=0, size=3)
    assert all(throttle.allow((1, 1)) for _ in range(3)) and len(throttle.passed) == 1


async def test_typing_reaches_other_processes(processes: list[str]) -> None:
    one, two = (AsyncClient(base_url=base) for base in processes)
    async with one, two:
        me = await sign_up(one, "typist@example.com", "Typist")
        b = await sign_up(one, "reader@example.com", "Reader")
        blocker = await sign_up(one, "blocker@example.com", "Blocker")
        there = processes[1].removeprefix("http://")
        theirs, blockers, mine = [await listen(there, u) for u in (b, blocker, me)]
        thread = await new_thread(one, me, b, blocker)
        await created(theirs, blockers, mine)
        r = await one.put(f"/api/users/me/blocks/{me['id']}", headers=blocker.headers)
        assert r.status_code == 204
        assert (await one.post(typing(thread), headers=me.headers)).status_code == 204
        assert await next_event(theirs) == {
            "type": "typing", "thread_id": thread["id"], "data": {"user_id": me["id"]},
        }  # fmt: skip
        await assert_silent(blockers)
        await assert_silent(mine)
        for ws in (theirs, blockers, mine):
            await ws.close()
