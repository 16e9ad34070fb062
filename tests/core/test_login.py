"""Logging in (OAuth2 password flow): the token it gives, failures that all look alike, and
the scopes a token carries."""

import asyncio
import statistics
import time

import pytest
from httpx import AsyncClient

from app.core.accounts import passwords
from app.core.settings import settings
from tests.helpers import API2, API5, MakeUser, bearer, fetch, login, signup


async def test_token_shape(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await login(client, user["email"].upper())
    assert r.status_code == 200
    token = r.json()
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == settings.access_token_expire_minutes * 60
    assert token["scope"] == "regular"
    assert token["access_token"] != token["refresh_token"]


@API2
async def test_failed_logins_all_look_the_same(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    inactive = await make_user()
    gone = await make_user()
    await fetch("SELECT 1")
    admin = await make_user(scopes=["regular", "admin"])
    patch = await client.patch(
        f"/api/users/{inactive['id']}", json={"is_active": False}, headers=admin.headers
    )
    assert patch.status_code == 200
    assert (await client.delete("/api/users/me", headers=gone.headers)).status_code == 204

    answers = [
        await login(client, "nobody@example.com"),
        await login(client, user["email"], "wrong password"),
        await login(client, inactive["email"]),
        await login(client, gone["email"]),
    ]
    assert {r.status_code for r in answers} == {401}
    assert len({r.text for r in answers}) == 1
    assert all(r.headers["www-authenticate"] == "Bearer" for r in answers)


@pytest.mark.timing
@API2
async def test_login_does_not_reveal_which_emails_exist(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()

    async def timed(email: str) -> float:
        started = time.perf_counter()
        r = await login(client, email, "wrong password")
        assert r.status_code == 401
        assert r.json() == {"detail": "Incorrect email or password"}
        return time.perf_counter() - started

    known = [await timed(user["email"]) for _ in range(4)]
    unknown = [await timed(f"ghost{n}@example.com") for n in range(4)]
    # Both check an Argon2 hash: an unknown email is not answered faster.
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2, (known, unknown)


@API2
async def test_login_username_is_normalised_and_scopes_checked(client: AsyncClient) -> None:
    assert (await signup(client, "ada@example.com")).status_code == 201
    r = await login(client, "  Ada@Example.COM ")
    assert r.status_code == 200, r.text
    # Signup takes a name with the address ("Ada <ada@example.com>"): so does the login.
    r = await login(client, "Ada Lovelace <ADA@example.com>")
    assert r.status_code == 200, r.text
    r = await login(client, "ada@example.com", scope="regular root")
    assert r.status_code == 400


@API5
async def test_token_scope_narrowing(client: AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    assert (await login(client, admin["email"])).json()["scope"] == "regular admin"
    assert (await login(client, admin["email"], scope="admin")).json()["scope"] == "admin"
    # Scopes the user does not hold are dropped, never granted.
    r = await login(client, admin["email"], scope="regular superuser")
    assert r.json()["scope"] == "regular"
    narrowed = bearer(r.json()["access_token"])
    assert (await client.get("/api/users", headers=narrowed)).status_code == 403
    assert (await client.get("/api/users", headers=admin.headers)).status_code == 200


@API5
async def test_missing_scope_is_403(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await client.get("/api/users", headers=user.headers)
    assert r.status_code == 403
    assert r.json() == {"detail": "Not enough permissions"}


@API5
async def test_scope_taken_away_stops_working(client: AsyncClient, make_user: MakeUser) -> None:
    root = await make_user(scopes=["regular", "admin", "superuser"])
    admin = await make_user(scopes=["regular", "admin"])
    assert (await client.get("/api/users", headers=admin.headers)).status_code == 200
    demote = {"scopes": ["regular"]}
    r = await client.patch(f"/api/users/{admin['id']}", json=demote, headers=root.headers)
    assert r.status_code == 200, r.text
    assert (await client.get("/api/users", headers=admin.headers)).status_code == 403


@API2
@pytest.mark.parametrize("change", ["deleted", "deactivated"])
async def test_a_login_whose_account_goes_while_it_hashes_gets_no_dead_tokens(
    client: AsyncClient, make_user: MakeUser, change: str
) -> None:
    """The password is checked holding no connection: an account deleted or deactivated
    meanwhile is refused as the login ends, with the 401 of a login that came after (not a
    200 whose tokens never work)."""
    me, admin = await make_user(), await make_user(scopes=["regular", "admin"])
    url = f"/api/users/{me['id']}"
    async with passwords._hash_slots:  # busy: the login waits for its turn to hash
        logging_in = asyncio.create_task(login(client, me["email"]))
        await asyncio.sleep(0.3)
        assert not logging_in.done()
        if change == "deleted":
            r = await client.delete(url, headers=admin.headers)
        else:
            r = await client.patch(url, json={"is_active": False}, headers=admin.headers)
        assert r.status_code in (200, 204), r.text
    r = await logging_in
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": "Incorrect email or password"}
