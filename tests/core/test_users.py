"""Finding others: lookup by email and reading a user, which show only the public view to
anyone but an admin, and never an inactive or deleted account."""

from httpx import AsyncClient

from tests.helpers import API2, API3, USER_PRIVATE, USER_PUBLIC, MakeUser, bearer, login


@API2
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


@API3
async def test_read_user_public_or_private(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user()
    admin = await make_user(scopes=["regular", "admin"])
    r = await client.get(f"/api/users/{other['id']}", headers=me.headers)
    assert r.status_code == 200 and set(r.json()) == USER_PUBLIC
    r = await client.get(f"/api/users/{other['id']}", headers=admin.headers)
    assert r.status_code == 200 and set(r.json()) == USER_PRIVATE
    narrowed = (await login(client, admin["email"], scope="regular")).json()["access_token"]
    r = await client.get(f"/api/users/{other['id']}", headers=bearer(narrowed))
    assert set(r.json()) == USER_PUBLIC  # an admin user with a non-admin token sees the public view
    assert (await client.get("/api/users/999999", headers=me.headers)).status_code == 404
    assert (await client.get("/api/users/abc", headers=me.headers)).status_code == 422


@API3
async def test_responses_leak_no_private_fields(client: AsyncClient, make_user: MakeUser) -> None:
    me, other = await make_user(), await make_user(scopes=["regular", "admin"])
    seen = [
        await client.get(f"/api/users/{other['id']}", headers=me.headers),
        await client.get("/api/users/lookup", params={"email": other["email"]}, headers=me.headers),
        await client.get("/api/users/me", headers=me.headers),
    ]
    for r in seen:
        assert r.status_code == 200
        assert "hashed_password" not in r.text and "$argon2" not in r.text
        assert other["email"] not in r.text  # no one else's email
        assert "admin" not in r.text  # nor their scopes
        assert "token_version" not in r.text


@API3
async def test_responses_never_carry_password_hashes(
    client: AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    r = await client.get("/api/users", headers=admin.headers)
    assert "hashed_password" not in r.text and "argon2" not in r.text
    assert "hashed_password" not in (await client.get("/openapi.json")).text
