"""Superusers: the first one from the settings, and there is always one left: nobody locks
themselves out, and two removing each other leave one."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient

from tests.core.two_factor import turn_on
from tests.helpers import API2, API5, MakeUser, fetch, login, signup
from tests.servers import serve_suite_db


@API2
async def test_first_superuser_bootstrap(
    client: AsyncClient, make_user: MakeUser, tmp_path: Path
) -> None:
    bootstrap = "bootstrap password"
    squatter = await make_user(email="taken@example.com")  # signed up with PASSWORD
    await signup(client, "knows@example.com", bootstrap)

    def boot(n: int, email: str) -> None:
        env = {"FIRST_SUPERUSER_EMAIL": email, "FIRST_SUPERUSER_PASSWORD": bootstrap}
        with serve_suite_db(tmp_path / str(n), **env):
            pass

    for n, email in enumerate(["free@example.com", "taken@example.com", "knows@example.com"]):
        # In a thread: this loop keeps running meanwhile, so a transaction it has open
        # (the mail sender's) ends instead of holding SQLite's write lock for the server.
        await asyncio.to_thread(boot, n, email)
    scopes = "regular admin superuser"
    # Free: created with all three scopes.
    assert (await login(client, "free@example.com", bootstrap)).json()["scope"] == scopes
    # Taken by someone who does not know the password: nothing gained, nothing changed.
    assert (await login(client, "taken@example.com", bootstrap)).status_code == 401
    r = await login(client, "taken@example.com")
    assert r.status_code == 200 and r.json()["scope"] == "regular"
    assert (await client.get("/api/users/me", headers=squatter.headers)).status_code == 200
    warnings = [
        line
        for line in (tmp_path / "1" / "server.log").read_text().splitlines()
        if '"WARNING"' in line and "FIRST_SUPERUSER_EMAIL" in line
    ]
    assert len(warnings) == 1, warnings
    # Taken by whoever holds the bootstrap password: promoted.
    assert (await login(client, "knows@example.com", bootstrap)).json()["scope"] == scopes


@API5
async def test_admins_cannot_lock_themselves_out(client: AsyncClient, make_user: MakeUser) -> None:
    me = await make_user(scopes=["regular", "admin", "superuser"])
    await make_user(scopes=["regular", "admin", "superuser"])  # so "last one" is not why
    mine = f"/api/users/{me['id']}"
    for change in (
        {"is_active": False},
        {"scopes": ["regular", "admin"]},
        {"scopes": ["regular"]},
    ):
        r = await client.patch(mine, json=change, headers=me.headers)
        assert r.status_code == 403, (change, r.text)
    assert (await client.delete(mine, headers=me.headers)).status_code == 403
    r = await client.get("/api/users/me", headers=me.headers)
    assert r.json()["scopes"] == ["regular", "admin", "superuser"] and r.json()["is_active"]


@API2
async def test_a_superuser_token_alone_cannot_take_its_own_account(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """What /api/users/me asks the password for is refused here on oneself: one stolen
    token must not turn the second factor off and move the account to a new address."""
    me = await make_user(scopes=["regular", "admin", "superuser"])
    await make_user(scopes=["regular", "admin", "superuser"])  # so "last one" is not why
    await turn_on(client, me)
    mine = f"/api/users/{me['id']}"
    for change in ({"two_factor_enabled": False}, {"email": "thief@example.com"}):
        r = await client.patch(mine, json=change, headers=me.headers)
        assert r.status_code == 403, (change, r.text)
    r = await client.get("/api/users/me", headers=me.headers)
    assert r.json()["two_factor_enabled"] and r.json()["email"] == me["email"]
    # Unchanged and harmless: still allowed.
    r = await client.patch(mine, json={"email": me["email"], "full_name": "Me"}, headers=me.headers)
    assert r.status_code == 200, r.text


@API5
@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"scopes": ["regular"]}), ("PATCH", {"is_active": False}), ("DELETE", None)],
)
async def test_two_superusers_removing_each_other_leave_one(
    client: AsyncClient, make_user: MakeUser, method: str, body: Any
) -> None:
    a = await make_user(scopes=["regular", "admin", "superuser"])
    b = await make_user(scopes=["regular", "admin", "superuser"])
    replies = await asyncio.gather(
        client.request(method, f"/api/users/{b['id']}", json=body, headers=a.headers),
        client.request(method, f"/api/users/{a['id']}", json=body, headers=b.headers),
    )
    codes = sorted(r.status_code for r in replies)
    # One wins; the other meets the last superuser's rule (409), or finds its own caller
    # changed first: demoted (403), or deactivated or deleted, its token revoked (401).
    lost = (403, 409) if "scopes" in (body or {}) else (401, 403, 409)
    assert codes[0] in (200, 204) and codes[-1] in lost, codes
    left = await fetch(
        "SELECT id FROM \"user\" WHERE NOT deleted AND is_active AND CAST(scopes AS TEXT) LIKE '%superuser%'"
    )
    assert len(left) == 1


@API5
@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"scopes": ["regular"]}), ("PATCH", {"is_active": False}), ("DELETE", None)],
)
async def test_a_superuser_removed_while_its_request_waited_cannot_remove_another(
    client: AsyncClient, make_user: MakeUser, method: str, body: Any
) -> None:
    """With a third superuser, the last one's rule does not stop the loser: its token was
    checked before the winner committed, and must not act on the power it lost since."""
    a = await make_user(scopes=["regular", "admin", "superuser"])
    b = await make_user(scopes=["regular", "admin", "superuser"])
    await make_user(scopes=["regular", "admin", "superuser"])
    replies = await asyncio.gather(
        client.request(method, f"/api/users/{b['id']}", json=body, headers=a.headers),
        client.request(method, f"/api/users/{a['id']}", json=body, headers=b.headers),
    )
    codes = sorted(r.status_code for r in replies)
    # The loser is refused: demoted (403), or its token revoked before it was read (401).
    assert codes[0] in (200, 204) and codes[-1] in (401, 403), codes
    left = await fetch(
        "SELECT id FROM \"user\" WHERE NOT deleted AND is_active AND CAST(scopes AS TEXT) LIKE '%superuser%'"
    )
    assert len(left) == 2
