"""Managing users (admin): listing, changing and deleting them; scopes and admins only by a
superuser; nothing of it for a regular or narrowed token."""

from httpx import AsyncClient

from tests.helpers import API4, API5, USER_PRIVATE, MakeUser, bearer, login


async def test_list_users_pages(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    for _ in range(4):
        await make_user()
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/api/users", params=params, headers=admin.headers)
        assert r.status_code == 200
        page = r.json()
        assert set(page) == {"items", "next_cursor"} and len(page["items"]) <= 2
        assert all(set(u) == USER_PRIVATE for u in page["items"])
        seen += [u["id"] for u in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 5 and seen == sorted(set(seen))


@API4
async def test_list_users_bad_paging_is_4xx(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    for limit in (0, 201, -1, 10**6):
        r = await client.get("/api/users", params={"limit": limit}, headers=admin.headers)
        assert r.status_code == 422, limit
    assert (
        await client.get("/api/users", params={"limit": 200}, headers=admin.headers)
    ).status_code == 200
    for cursor in ("garbage", "WyJ4Il0", "W10", "!!!", "eyJhIjoxfQ"):
        r = await client.get("/api/users", params={"cursor": cursor}, headers=admin.headers)
        assert r.status_code == 400, cursor
        assert isinstance(r.json()["detail"], str)


async def test_list_users_filter_and_deleted(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    alice = await make_user(full_name="Alice Liddell")
    await make_user(email="bob@example.com", full_name="Bob")
    gone = await make_user(full_name="Alicia Gone")
    await client.delete("/api/users/me", headers=gone.headers)

    async def names(**params: str) -> set[str]:
        r = await client.get("/api/users", params=params, headers=admin.headers)
        assert r.status_code == 200
        return {u["full_name"] for u in r.json()["items"]}

    assert await names(q="ALI") == {"Alice Liddell"}
    assert await names(q="ali", include_deleted="true") == {"Alice Liddell", "Alicia Gone"}
    assert await names(q="BOB@") == {"Bob"}
    assert await names(q="%") == set()  # LIKE wildcards are matched literally
    assert alice["id"]


async def test_list_users_filter_ignores_case_of_any_letter(
    client: AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    await make_user(full_name="Émile Ünal")
    await make_user(full_name="Zoë Ärger")

    async def names(q: str) -> set[str]:
        r = await client.get("/api/users", params={"q": q}, headers=admin.headers)
        assert r.status_code == 200
        return {u["full_name"] for u in r.json()["items"]}

    assert await names("émile") == await names("ÜNAL") == {"Émile Ünal"}
    assert await names("ZOË ä") == {"Zoë Ärger"}
    assert await names("ë_ä") == await names("ë%") == set()  # wildcards still literal


async def test_admin_updates_user(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    r = await client.patch(
        f"/api/users/{user['id']}",
        json={"full_name": "Renamed", "email": "renamed@example.com"},
        headers=admin.headers,
    )
    assert r.status_code == 200 and set(r.json()) == USER_PRIVATE
    assert r.json()["full_name"] == "Renamed" and r.json()["email"] == "renamed@example.com"
    r = await client.patch(
        f"/api/users/{user['id']}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 401
    r = await client.patch(
        f"/api/users/{user['id']}", json={"is_active": True}, headers=admin.headers
    )
    assert r.status_code == 200
    # Deactivation revoked the old tokens for good.
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 401
    assert (await login(client, "renamed@example.com")).status_code == 200
    assert (
        await client.patch("/api/users/999999", json={}, headers=admin.headers)
    ).status_code == 404


@API5
async def test_scopes_need_superuser(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    root = await make_user(scopes=["regular", "admin", "superuser"])
    user = await make_user()
    url = f"/api/users/{user['id']}"
    r = await client.patch(url, json={"scopes": ["regular", "admin"]}, headers=admin.headers)
    assert r.status_code == 403
    r = await client.patch(url, json={"scopes": ["admin"]}, headers=root.headers)
    assert r.status_code == 200 and r.json()["scopes"] == ["regular", "admin"]
    r = await client.patch(url, json={"scopes": ["owner"]}, headers=root.headers)
    assert r.status_code == 422
    # A superuser whose token was narrowed to `admin` cannot change scopes.
    narrowed = (await login(client, root["email"], scope="regular admin")).json()["access_token"]
    r = await client.patch(url, json={"scopes": ["regular"]}, headers=bearer(narrowed))
    assert r.status_code == 403


@API5
async def test_admin_cannot_change_or_delete_admins(
    client: AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    other_admin = await make_user(scopes=["regular", "admin"])
    root = await make_user(scopes=["regular", "admin", "superuser"])
    for target in (other_admin, root):
        url = f"/api/users/{target['id']}"
        assert (
            await client.patch(url, json={"full_name": "x"}, headers=admin.headers)
        ).status_code == 403
        assert (await client.delete(url, headers=admin.headers)).status_code == 403
    url = f"/api/users/{other_admin['id']}"
    assert (
        await client.patch(url, json={"full_name": "ok"}, headers=root.headers)
    ).status_code == 200
    assert (await client.delete(url, headers=root.headers)).status_code == 204


@API5
async def test_admin_deletes_user(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    regular = await make_user()
    url = f"/api/users/{user['id']}"
    assert (await client.delete(url, headers=regular.headers)).status_code == 403
    assert (
        await client.patch(url, json={"full_name": "x"}, headers=regular.headers)
    ).status_code == 403
    assert (await client.delete(url, headers=admin.headers)).status_code == 204
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 401
    assert (await client.delete(url, headers=admin.headers)).status_code == 404
    assert (await client.get(f"/api/users/{user['id']}", headers=admin.headers)).status_code == 404


@API5
async def test_admin_routes_refuse_regular_and_narrowed_tokens(
    client: AsyncClient, make_user: MakeUser
) -> None:
    regular = await make_user()
    admin = await make_user(scopes=["regular", "admin", "superuser"])
    target = await make_user()
    narrowed = (await login(client, admin["email"], scope="regular")).json()["access_token"]
    routes = [
        ("GET", "/api/users", None),
        ("PATCH", f"/api/users/{target['id']}", {"full_name": "x"}),
        ("PATCH", f"/api/users/{target['id']}", {"scopes": ["admin"]}),
        ("DELETE", f"/api/users/{target['id']}", None),
    ]
    for method, url, body in routes:
        for headers in (regular.headers, bearer(narrowed)):
            r = await client.request(method, url, json=body, headers=headers)
            assert r.status_code == 403, (method, url)
        assert (await client.request(method, url, json=body)).status_code == 401
    r = await client.get(f"/api/users/{target['id']}", headers=admin.headers)
    assert r.json()["full_name"] == target["full_name"]
