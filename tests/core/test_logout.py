"""Logging out revokes every token issued before, and each revocation counts."""

import asyncio

from httpx import AsyncClient

from tests.helpers import API2, PASSWORD, MakeUser, bearer, fetch, login


@API2
async def test_logout_revokes_every_earlier_token(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    second = (await login(client, user["email"])).json()
    assert (await client.post("/api/auth/logout", headers=user.headers)).status_code == 204
    for token in (user["token"], second):
        assert (
            await client.get("/api/users/me", headers=bearer(token["access_token"]))
        ).status_code == 401
        r = await client.post("/api/auth/refresh", json={"refresh_token": token["refresh_token"]})
        assert r.status_code == 401
    fresh = (await login(client, user["email"])).json()
    assert (
        await client.get("/api/users/me", headers=bearer(fresh["access_token"]))
    ).status_code == 200


@API2
async def test_token_version_counts_every_revocation(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    [(before,)] = await fetch('SELECT token_version FROM "user" WHERE id = :id', id=user["id"])
    change = {"password": "a new password", "current_password": PASSWORD}
    replies = await asyncio.gather(
        *(client.post("/api/auth/logout", headers=user.headers) for _ in range(5)),
        client.patch("/api/users/me", json=change, headers=user.headers),
    )
    succeeded = sum(r.status_code in (200, 204) for r in replies)
    assert succeeded >= 1 and {r.status_code for r in replies} <= {200, 204, 401}
    [(after,)] = await fetch('SELECT token_version FROM "user" WHERE id = :id', id=user["id"])
    assert after - before == succeeded  # in SQL: no bump overwrote another
