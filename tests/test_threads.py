from typing import Any

from httpx import AsyncClient

from tests.helpers import MakeUser, User, fetch, new_thread, send

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
    for body in ({"member_ids": ["x"]}, {"title": "x" * 201, "member_ids": []}, {}):
        assert (await client.post("/api/threads", json=body, headers=me.headers)).status_code == 422
    # Nothing was half-created.
    assert (await client.get("/api/threads", headers=me.headers)).json()["items"] == []
    assert await fetch("SELECT id FROM thread") == []


async def test_non_members_get_the_same_404_as_missing(
    client: AsyncClient, make_user: MakeUser
) -> None:
    owner, stranger = await make_user(), await make_user()
    thread = await new_thread(client, owner)
    message = await send(client, owner, thread["id"])
    tid, mid = thread["id"], message["id"]
    probes = [
        ("GET", f"/api/threads/{tid}", None),
        ("PATCH", f"/api/threads/{tid}", {"title": "x"}),
        ("DELETE", f"/api/threads/{tid}", None),
        ("GET", f"/api/threads/{tid}/members", None),
        ("POST", f"/api/threads/{tid}/members", {"user_id": stranger["id"]}),
        ("DELETE", f"/api/threads/{tid}/members/{owner['id']}", None),
        ("POST", f"/api/threads/{tid}/read", {"message_id": mid}),
        ("GET", f"/api/threads/{tid}/messages", None),
        ("POST", f"/api/threads/{tid}/messages", {"body": "x"}),
        ("PATCH", f"/api/threads/{tid}/messages/{mid}", {"body": "x"}),
        ("DELETE", f"/api/threads/{tid}/messages/{mid}", None),
    ]
    for method, url, body in probes:
        seen = await client.request(method, url, json=body, headers=stranger.headers)
        missing = await client.request(
            method, url.replace(f"/{tid}", "/999999", 1), json=body, headers=stranger.headers
        )
        assert seen.status_code == missing.status_code == 404, (method, url)
        assert seen.json() == missing.json(), (method, url)
    # The owner still sees it all unchanged.
    assert (await client.get(f"/api/threads/{tid}", headers=owner.headers)).json()["title"] == "t"


async def test_rename_and_delete_are_owner_only(client: AsyncClient, make_user: MakeUser) -> None:
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    url = f"/api/threads/{thread['id']}"
    assert (await client.patch(url, json={"title": "x"}, headers=member.headers)).status_code == 403
    assert (await client.delete(url, headers=member.headers)).status_code == 403
    r = await client.patch(url, json={"title": "Renamed"}, headers=owner.headers)
    assert r.status_code == 200 and r.json()["title"] == "Renamed"
    assert (await client.get(url, headers=member.headers)).json()["title"] == "Renamed"
    assert (await client.delete(url, headers=owner.headers)).status_code == 204
    for user in (owner, member):
        assert (await client.get(url, headers=user.headers)).status_code == 404
        assert (await client.get("/api/threads", headers=user.headers)).json()["items"] == []
    [(deleted,)] = await fetch("SELECT deleted FROM thread WHERE id = :id", id=thread["id"])
    assert deleted


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
    for bad in ({"limit": 0}, {"limit": 201}):
        assert (await client.get("/api/threads", params=bad, headers=me.headers)).status_code == 422
    for cursor in ("x", "W10", "WzEsMl0", "WyJub3QgYSBkYXRlIiwgMV0"):
        r = await client.get("/api/threads", params={"cursor": cursor}, headers=me.headers)
        assert r.status_code == 400, cursor


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


async def test_concurrent_adds_make_one_membership(
    client: AsyncClient, make_user: MakeUser
) -> None:
    import asyncio

    import httpx

    from app.main import app

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
    import asyncio

    import httpx

    from app.main import app

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
