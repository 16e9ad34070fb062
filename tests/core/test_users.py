from httpx import AsyncClient

from tests.helpers import PASSWORD, MakeUser, fetch, login

PUBLIC = {"id", "full_name"}
PRIVATE = {
    "id",
    "email",
    "full_name",
    "scopes",
    "is_active",
    "email_verified",
    "pending_email",
    "created_at",
    "updated_at",
}


async def test_me(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await client.get("/api/users/me", headers=user.headers)
    assert r.status_code == 200
    assert set(r.json()) == PRIVATE and r.json()["email"] == user["email"]


async def test_update_me_name_at_once_email_only_with_the_password(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    r = await client.patch("/api/users/me", json={"full_name": "New Name"}, headers=user.headers)
    assert r.status_code == 200 and r.json()["full_name"] == "New Name"
    assert r.json()["updated_at"] > user["updated_at"]
    email = {"email": "New@Example.com"}
    r = await client.patch("/api/users/me", json=email, headers=user.headers)
    assert r.status_code == 422  # no current_password
    wrong = {**email, "current_password": "not my password"}
    assert (
        await client.patch("/api/users/me", json=wrong, headers=user.headers)
    ).status_code == 403
    right = {**email, "current_password": PASSWORD}
    r = await client.patch("/api/users/me", json=right, headers=user.headers)
    # Pending until the new address answers: the email, and the login, stay as they were.
    assert r.status_code == 200 and r.json()["email"] == user["email"]
    assert r.json()["pending_email"] == "new@example.com"
    assert (await login(client, user["email"])).status_code == 200
    assert (await login(client, "new@example.com")).status_code == 401


async def test_update_me_cannot_touch_scopes_or_activation(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    r = await client.patch(
        "/api/users/me",
        json={"scopes": ["regular", "admin", "superuser"], "is_active": False},
        headers=user.headers,
    )
    assert r.status_code == 200
    assert r.json()["scopes"] == ["regular"] and r.json()["is_active"] is True
    [(scopes,)] = await fetch('SELECT scopes FROM "user" WHERE id = :id', id=user["id"])
    assert "admin" not in str(scopes)


async def test_a_pending_email_reserves_nothing_and_changes_nothing_else_on_failure(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user, other = await make_user(), await make_user()
    taken = {"email": other["email"].upper(), "current_password": PASSWORD}
    r = await client.patch("/api/users/me", json=taken, headers=user.headers)
    assert r.status_code == 200 and r.json()["pending_email"] == other["email"]  # no leak
    bad = {"full_name": "Half Written", "password": "a new passphrase", "current_password": "x"}
    assert (await client.patch("/api/users/me", json=bad, headers=user.headers)).status_code == 403
    me = (await client.get("/api/users/me", headers=user.headers)).json()
    assert me["full_name"] == user["full_name"]  # nothing half-written


async def test_change_password(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    new = "a brand new password"
    r = await client.patch("/api/users/me", json={"password": new}, headers=user.headers)
    assert r.status_code == 422
    r = await client.patch(
        "/api/users/me",
        json={"password": new, "current_password": "wrong password"},
        headers=user.headers,
    )
    assert r.status_code == 403
    r = await client.patch(
        "/api/users/me",
        json={"password": "short", "current_password": PASSWORD},
        headers=user.headers,
    )
    assert r.status_code == 422
    r = await client.patch(
        "/api/users/me", json={"password": new, "current_password": PASSWORD}, headers=user.headers
    )
    assert r.status_code == 200
    # Like logout: every earlier token is revoked.
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 401
    assert (await login(client, user["email"])).status_code == 401
    assert (await login(client, user["email"], new)).status_code == 200


async def test_delete_me(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    assert (await client.delete("/api/users/me", headers=user.headers)).status_code == 204
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 401
    assert (await login(client, user["email"])).status_code == 401
    # The row stays, marked deleted, and its email can register again.
    [(deleted,)] = await fetch('SELECT deleted FROM "user" WHERE id = :id', id=user["id"])
    assert deleted
    body = {"email": user["email"], "password": PASSWORD, "full_name": "Again"}
    r = await client.post("/api/auth/signup", json=body)
    assert r.status_code == 201 and r.json()["id"] != user["id"]


async def test_lookup(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    r = await client.get(
        "/api/users/lookup", params={"email": other["email"].upper()}, headers=me.headers
    )
    assert r.status_code == 200
    assert r.json() == {"id": other["id"], "full_name": other["full_name"]}
    r = await client.get(
        "/api/users/lookup", params={"email": "nobody@example.com"}, headers=me.headers
    )
    assert r.status_code == 404
    r = await client.get("/api/users/lookup", params={"email": "not an email"}, headers=me.headers)
    assert r.status_code == 422
    assert (
        await client.get("/api/users/lookup", params={"email": other["email"]})
    ).status_code == 401


async def test_lookup_hides_inactive_and_deleted(client: AsyncClient, make_user: MakeUser) -> None:
    me, inactive, gone = await make_user(), await make_user(), await make_user()
    admin = await make_user(scopes=["regular", "admin"])
    await client.patch(
        f"/api/users/{inactive['id']}", json={"is_active": False}, headers=admin.headers
    )
    await client.delete("/api/users/me", headers=gone.headers)
    for user in (inactive, gone):
        r = await client.get(
            "/api/users/lookup", params={"email": user["email"]}, headers=me.headers
        )
        assert r.status_code == 404
        assert (await client.get(f"/api/users/{user['id']}", headers=me.headers)).status_code == 404


async def test_read_user_public_or_private(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    admin = await make_user(scopes=["regular", "admin"])
    r = await client.get(f"/api/users/{other['id']}", headers=me.headers)
    assert r.status_code == 200 and set(r.json()) == PUBLIC
    r = await client.get(f"/api/users/{other['id']}", headers=admin.headers)
    assert r.status_code == 200 and set(r.json()) == PRIVATE
    narrowed = (await login(client, admin["email"], scope="regular")).json()["access_token"]
    r = await client.get(
        f"/api/users/{other['id']}", headers={"Authorization": f"Bearer {narrowed}"}
    )
    assert set(r.json()) == PUBLIC  # an admin user with a non-admin token sees the public view
    assert (await client.get("/api/users/999999", headers=me.headers)).status_code == 404
    assert (await client.get("/api/users/abc", headers=me.headers)).status_code == 422


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
        assert all(set(u) == PRIVATE for u in page["items"])
        seen += [u["id"] for u in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 5 and seen == sorted(set(seen))


async def test_list_users_bad_paging_is_4xx(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    for limit in (0, 201, -1):
        r = await client.get("/api/users", params={"limit": limit}, headers=admin.headers)
        assert r.status_code == 422
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


async def test_admin_updates_user(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    r = await client.patch(
        f"/api/users/{user['id']}",
        json={"full_name": "Renamed", "email": "renamed@example.com"},
        headers=admin.headers,
    )
    assert r.status_code == 200 and set(r.json()) == PRIVATE
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
    r = await client.patch(
        url, json={"scopes": ["regular"]}, headers={"Authorization": f"Bearer {narrowed}"}
    )
    assert r.status_code == 403


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


async def test_responses_never_carry_password_hashes(
    client: AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    r = await client.get("/api/users", headers=admin.headers)
    assert "hashed_password" not in r.text and "argon2" not in r.text
    assert "hashed_password" not in (await client.get("/openapi.json")).text
