"""Input the API refuses, and how: strict JSON types (no null for a required value, no
number for a boolean), cursors checked before they reach the database, and error answers
that show nothing of the server's insides."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select, text, update

from app.core.accounts.users import Users, users
from app.core.db import begin, connect, engine
from app.core.http import install
from tests.helpers import API3, API8, PASSWORD, MakeUser, encode_cursor, fetch, pg_only


@API8
async def test_errors_carry_no_internals(client: AsyncClient) -> None:
    answers = [
        await client.post(
            "/api/auth/signup",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        await client.post("/api/auth/token", data={"username": "x"}),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500
        assert "Traceback" not in r.text and "sqlalchemy" not in r.text.lower()
        assert "detail" in r.json()


async def test_what_the_fuzzer_found_stays_fixed(client: AsyncClient, make_user: MakeUser) -> None:
    """Each of these once reached the database and answered 500."""
    user = await make_user()
    answers = {
        "NUL in a name": await client.patch(
            "/api/users/me", json={"full_name": "\x00"}, headers=user.headers
        ),
        "password without current": await client.patch(
            "/api/users/me", json={"password": "a new password"}, headers=user.headers
        ),
    }
    for name, r in answers.items():
        assert r.status_code == 422, name
        assert isinstance(r.json()["detail"], list), name
    r = await client.post(
        "/api/auth/token", data={"username": "a\x00@example.com", "password": PASSWORD}
    )
    assert r.status_code == 422
    r = await client.get("/api/users", params={"q": "\x00"}, headers=user.headers)
    assert r.status_code in (403, 422)


async def test_405_lists_every_method_of_the_path(client: AsyncClient) -> None:
    assert (await client.put("/api/users/lookup")).headers["allow"] == "GET"
    assert (await client.put("/api/health")).headers["allow"] == "GET"
    # The docs and the schema are routes too, though the schema does not list them.
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = await client.post(path)
        assert r.status_code == 405 and "GET" in r.headers["allow"].split(", "), path


@API3
async def test_json_types_are_strict_and_null_is_refused(
    client: AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    target = f"/api/users/{user['id']}"
    for value in (1, 0, "true"):
        r = await client.patch(target, json={"is_active": value}, headers=admin.headers)
        assert r.status_code == 422, (value, r.text)
    for field in ("full_name", "email", "password"):
        r = await client.patch("/api/users/me", json={field: None}, headers=user.headers)
        assert r.status_code == 422, (field, r.text)
    for field in ("full_name", "email", "is_active"):
        r = await client.patch(target, json={field: None}, headers=admin.headers)
        assert r.status_code == 422, (field, r.text)
    assert (await client.get("/api/users/me", headers=user.headers)).json()["is_active"] is True


@API8
@pytest.mark.parametrize(
    "value",
    [[0], [-1], [2**31], [2**64], [1.0], [True], [[1]], [1, 2], [], {"id": 1}],
)
async def test_cursors_at_the_edges_are_400(
    client: AsyncClient, make_user: MakeUser, value: Any
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    r = await client.get(
        "/api/users", params={"cursor": encode_cursor(value)}, headers=admin.headers
    )
    assert r.status_code == 400, r.text


@pg_only
async def test_a_value_the_database_refuses_is_fastapis_422() -> None:
    """A value past what a column holds that no model caught is the client's mistake: 422
    in FastAPI's list shape, never a 500 or a 503, whether the server refuses it (a cast)
    or the driver (an int past int32). The driver's refusal leaves no lock behind."""
    app = FastAPI()
    install(app)

    @app.get("/cast")
    async def cast(n: int) -> int:
        async with connect() as conn:
            small = await conn.scalar(text("SELECT CAST(:n AS integer)::smallint"), {"n": n})
            return int(small)

    @app.get("/count")
    async def count(n: int) -> int:
        async with connect() as conn:
            return len(await Users(conn).all(select(users).where(users.c.id == n)))

    @app.post("/rename")
    async def rename(n: int) -> None:
        async with begin() as conn:
            await conn.execute(update(users).where(users.c.id == n).values(full_name="x"))

    transport = httpx.ASGITransport(app=app)
    pool = engine.sync_engine.pool
    pool_invalidated = pool._invalidate_time  # a lost server invalidates every connection
    refused = [{"type": "value_error", "loc": [], "msg": "A value is out of range"}]
    async with AsyncClient(transport=transport, base_url="http://test") as bare:
        assert (await bare.get("/cast", params={"n": 7})).json() == 7
        assert (await bare.get("/count", params={"n": 7})).json() == 0
        assert (await bare.post("/rename", params={"n": 7})).status_code == 200
        tries = [("/cast", 70000), ("/count", 2**40), ("/count", -(2**31) - 1), ("/rename", 2**40)]
        for path, n in tries:
            r = await bare.request("POST" if path == "/rename" else "GET", path, params={"n": n})
            assert (r.status_code, r.json()) == (422, {"detail": refused}), path
    held = "SELECT count(*) FROM pg_locks WHERE relation = 'user'::regclass"
    assert (await fetch(held))[0][0] == 0
    assert pool._invalidate_time == pool_invalidated  # only the refused value's connection
