"""Refreshing: a new pair, never wider; each refresh token works once, and a chain of them
ends when its login would have."""

import asyncio
import time
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from jose import jwt

from app.core.jobs import runner
from app.core.settings import settings
from tests.helpers import API2, MakeUser, login, me


async def refresh(client: AsyncClient, token: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": token["refresh_token"]})


async def test_refresh_gives_a_new_pair(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user(scopes=["regular", "admin"])
    narrowed = (await login(client, user["email"], scope="regular")).json()
    r = await refresh(client, narrowed)
    assert r.status_code == 200
    pair = r.json()
    assert pair["scope"] == "regular"  # refreshing never widens a token
    assert await me(client, pair["access_token"]) == 200


@API2
async def test_refresh_rejects_garbage_and_missing(client: AsyncClient) -> None:
    assert (
        await client.post("/api/auth/refresh", json={"refresh_token": "x.y.z"})
    ).status_code == 401
    assert (await client.post("/api/auth/refresh", json={})).status_code == 422


@API2
async def test_reused_refresh_token_ends_its_chain_only(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    other_login = (await login(client, user["email"])).json()
    first = user["token"]
    second = (await refresh(client, first)).json()
    assert await me(client, second["access_token"]) == 200
    # The first one again: a thief or the owner, and neither may go on.
    assert (await refresh(client, first)).status_code == 401
    assert (await refresh(client, second)).status_code == 401
    assert await me(client, second["access_token"]) == 401
    assert await me(client, first["access_token"]) == 401
    # Another login of the same user is another chain.
    assert await me(client, other_login["access_token"]) == 200
    assert (await refresh(client, other_login)).status_code == 200


@API2
async def test_an_ended_chain_stays_ended_after_the_hourly_chore(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """The chore that prunes logins leaves an ended chain's row until the chain would have
    expired: SQLite hands a removed highest id to the next row, and the next login then
    revived every token of the ended chain (and its thief could end the new login)."""
    user = await make_user()
    first = user["token"]
    second = (await refresh(client, first)).json()
    assert (await refresh(client, first)).status_code == 401  # reused: the chain ends

    await runner.chore()

    again = (await login(client, user["email"])).json()
    assert await me(client, second["access_token"]) == 401
    assert (await refresh(client, second)).status_code == 401
    assert await me(client, again["access_token"]) == 200
    assert (await refresh(client, again)).status_code == 200


@API2
async def test_refresh_chain_ends_with_its_login(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    chain = [user["token"]]
    for _ in range(2):
        await asyncio.sleep(1.1)  # a fresh lifetime per refresh would move exp on
        r = await refresh(client, chain[-1])
        assert r.status_code == 200
        chain.append(r.json())
    ends = {jwt.get_unverified_claims(t["refresh_token"])["exp"] for t in chain}
    assert len(ends) == 1, ends
    login_at = jwt.get_unverified_claims(chain[0]["refresh_token"])["iat"]
    assert abs(ends.pop() - login_at - settings.refresh_token_expire_minutes * 60) <= 1
    for t in chain:  # no access token outlives its chain either
        claims = jwt.get_unverified_claims(t["access_token"])
        assert claims["exp"] <= jwt.get_unverified_claims(t["refresh_token"])["exp"]


async def test_expires_in_says_when_the_access_token_ends(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near the end of its chain an access token ends with the chain, and says so."""
    monkeypatch.setattr(settings, "refresh_token_expire_minutes", 1)  # access: 30
    user = await make_user()
    first = (await login(client, user["email"])).json()
    for token in (first, (await refresh(client, first)).json()):
        exp = jwt.get_unverified_claims(token["access_token"])["exp"]
        assert abs(token["expires_in"] - (exp - time.time())) <= 2, (token["expires_in"], exp)
