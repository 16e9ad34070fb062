"""The caller's own account: read it, rename, change email or password, delete it."""

from httpx import AsyncClient

from tests.helpers import (
    API2,
    API3,
    API4,
    PASSWORD,
    USER_PRIVATE,
    MakeUser,
    fetch,
    login,
    mass_assignment,
)


async def test_me(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await client.get("/api/users/me", headers=user.headers)
    assert r.status_code == 200
    assert set(r.json()) == USER_PRIVATE and r.json()["email"] == user["email"]


@API2
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


@API3
async def test_update_me_cannot_touch_scopes_or_activation(
    client: AsyncClient, make_user: MakeUser
) -> None:
    me, other = await make_user(), await make_user()
    r = await client.patch(
        "/api/users/me",
        json={"full_name": "Me", **mass_assignment(other["id"])},
        headers=me.headers,
    )
    assert r.status_code == 200
    assert r.json()["scopes"] == ["regular"] and r.json()["is_active"] is True
    assert r.json()["id"] == me["id"]
    [(scopes, *rest)] = await fetch(
        'SELECT scopes, token_version, deleted, is_active FROM "user" WHERE id = :id', id=me["id"]
    )
    assert "admin" not in str(scopes) and rest == [0, False, True]
    assert (await client.get("/api/users/me", headers=me.headers)).status_code == 200


@API4
async def test_profile_fields_are_bounded(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user()
    r = await client.patch("/api/users/me", json={"full_name": "x" * 256}, headers=me.headers)
    assert r.status_code == 422


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


@API2
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
