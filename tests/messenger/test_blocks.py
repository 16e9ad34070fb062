"""Blocking users: the list, and what a block forbids the blocked user (starting a thread
with the blocker, adding it to one), even when the block races the add across processes."""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from httpx import AsyncClient

from tests.helpers import MakeUser, User, fetch, new_thread, sign_up

BLOCKS = "/api/users/me/blocks"


async def block(client: AsyncClient, user: User, target: int) -> int:
    return (await client.put(f"{BLOCKS}/{target}", headers=user.headers)).status_code


async def blocked(client: AsyncClient, user: User) -> Any:
    r = await client.get(BLOCKS, headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_block_list_unblock(client: AsyncClient, make_user: MakeUser) -> None:
    me, b, c = await make_user(), await make_user(full_name="Bea"), await make_user()
    assert await blocked(client, me) == []
    assert await block(client, me, b["id"]) == 204
    assert await block(client, me, b["id"]) == 204  # again: nothing changes
    assert await block(client, me, c["id"]) == 204
    assert await blocked(client, me) == [
        {"id": b["id"], "full_name": "Bea"},
        {"id": c["id"], "full_name": c["full_name"]},
    ]
    assert await blocked(client, b) == []  # one way only
    for _ in range(2):  # whether blocked or not
        r = await client.delete(f"{BLOCKS}/{b['id']}", headers=me.headers)
        assert r.status_code == 204
    assert [u["id"] for u in await blocked(client, me)] == [c["id"]]
    assert (await client.delete(f"{BLOCKS}/{10**6}", headers=me.headers)).status_code == 204


async def test_what_cannot_be_blocked(client: AsyncClient, make_user: MakeUser) -> None:
    me, gone = await make_user(), await make_user()
    r = await client.put(f"{BLOCKS}/{me['id']}", headers=me.headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "user_id"]
    assert await block(client, me, 10**6) == 404
    assert (await client.delete("/api/users/me", headers=gone.headers)).status_code == 204
    assert await block(client, me, gone["id"]) == 404
    for bad in ("0", "-1", str(2**31), "x"):
        assert (await client.put(f"{BLOCKS}/{bad}", headers=me.headers)).status_code == 422
    assert await blocked(client, me) == []
    assert (await client.put(f"{BLOCKS}/{gone['id']}")).status_code == 401
    assert (await client.get(BLOCKS)).status_code == 401


async def test_a_blocked_user_that_is_deleted_leaves_the_list(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, b = await make_user(), await make_user()
    assert await block(client, me, b["id"]) == 204
    assert (await client.delete("/api/users/me", headers=b.headers)).status_code == 204
    assert await blocked(client, me) == []


async def test_the_blocked_user_cannot_start_a_thread_with_the_blocker_or_add_it(
    client: AsyncClient, make_user: MakeUser
) -> None:
    blocker, me, friend = await make_user(), await make_user(), await make_user()
    assert await block(client, blocker, me["id"]) == 204
    unknown = await client.post("/api/threads", json={"member_ids": [10**6]}, headers=me.headers)
    assert unknown.status_code == 422
    for ids in ([blocker["id"]], [friend["id"], blocker["id"]]):
        r = await client.post("/api/threads", json={"member_ids": ids}, headers=me.headers)
        assert (r.status_code, r.json()) == (422, unknown.json())  # the same answer
    thread = await new_thread(client, me, friend)
    members = f"/api/threads/{thread['id']}/members"
    unknown = await client.post(members, json={"user_id": 10**6}, headers=me.headers)
    r = await client.post(members, json={"user_id": blocker["id"]}, headers=me.headers)
    assert (r.status_code, r.json()) == (422, unknown.json())
    # Others may add the blocker, and the blocker whom it blocks; an unblock lifts it all.
    assert (
        await client.post(members, json={"user_id": blocker["id"]}, headers=friend.headers)
    ).status_code == 201
    await new_thread(client, blocker, me)
    assert (await client.delete(f"{BLOCKS}/{me['id']}", headers=blocker.headers)).status_code == 204
    await new_thread(client, me, blocker)


# ------------------------------------------------------------------ across processes

# Tries to bring the blocker (by id) into threads: each resolves to the thread it joined,
# or None when refused.
Tries = Callable[[AsyncClient, int], Awaitable[list[Coroutine[Any, Any, int | None]]]]


async def assert_a_block_is_never_passed(processes: list[str], tries: Tries) -> None:
    """The blocked user tries to bring the blocker into threads on one process while the
    blocker blocks it on the other. A try may land before the block; none may land after
    it, and a refused one brings it into none. Each row's `created_at` is taken once the
    locks that order the two are held."""
    async with AsyncClient(base_url=processes[0]) as one, AsyncClient(base_url=processes[1]) as two:
        adder = await sign_up(one, "adder@example.com", "Adder")
        blocker = await sign_up(two, "blocker@example.com", "Blocker")
        one.headers.update(adder.headers)
        two.headers.update(blocker.headers)
        joined_in_all = 0
        for round in range(20):
            attempts = await tries(one, blocker["id"])
            block_, joined = await asyncio.gather(
                two.put(f"{BLOCKS}/{adder['id']}"), asyncio.gather(*attempts)
            )
            assert block_.status_code == 204, block_.text
            [[blocked_at]] = await fetch(
                "SELECT created_at FROM block WHERE user_id = :b", b=blocker["id"]
            )
            for thread_id in (t for t in joined if t is not None):
                [row] = await fetch(
                    "SELECT created_at FROM membership WHERE thread_id = :t AND user_id = :u"
                    " AND NOT deleted",
                    t=thread_id, u=blocker["id"],
                )  # fmt: skip
                assert row.created_at < blocked_at, f"joined after the block, round {round}"
            joined_in_all += sum(t is not None for t in joined)
            [[memberships]] = await fetch(
                "SELECT count(*) FROM membership WHERE user_id = :u", u=blocker["id"]
            )
            assert memberships == joined_in_all, f"a refused try joined, round {round}"
            assert (await two.delete(f"{BLOCKS}/{adder['id']}")).status_code == 204


async def test_a_block_racing_an_add_is_never_passed(processes: list[str]) -> None:
    async def adds(one: AsyncClient, blocker_id: int) -> list[Coroutine[Any, Any, int | None]]:
        async def add(thread_id: int) -> int | None:
            r = await one.post(f"/api/threads/{thread_id}/members", json={"user_id": blocker_id})
            assert r.status_code in (201, 422), r.text
            return thread_id if r.status_code == 201 else None

        threads = [
            (await one.post("/api/threads", json={"member_ids": []})).json() for _ in range(4)
        ]
        return [add(t["id"]) for t in threads]

    await assert_a_block_is_never_passed(processes, adds)


async def test_a_block_racing_a_new_thread_is_never_passed(processes: list[str]) -> None:
    async def starts(one: AsyncClient, blocker_id: int) -> list[Coroutine[Any, Any, int | None]]:
        async def start() -> int | None:
            r = await one.post("/api/threads", json={"member_ids": [blocker_id]})
            assert r.status_code in (201, 422), r.text
            return int(r.json()["id"]) if r.status_code == 201 else None

        return [start() for _ in range(4)]

    await assert_a_block_is_never_passed(processes, starts)
