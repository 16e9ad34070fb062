"""Signing up: the account it makes, what a signup cannot claim, and its password."""

from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient

from tests.helpers import API2, API3, API8, PASSWORD, USER_PRIVATE, MakeUser, fetch, login

SIGNUP = "/api/auth/signup"


async def test_signup_returns_user_private(client: AsyncClient) -> None:
    r = await client.post(
        SIGNUP, json={"email": "Ann@Example.COM", "password": PASSWORD, "full_name": "Ann"}
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == USER_PRIVATE
    assert body["email"] == "ann@example.com"
    assert body["scopes"] == ["regular"] and body["is_active"] is True
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)


@API3
async def test_signup_cannot_grant_scopes_or_activation(client: AsyncClient) -> None:
    r = await client.post(
        SIGNUP,
        json={
            "email": "eve@example.com", "password": PASSWORD, "full_name": "Eve",
            "scopes": ["admin", "superuser"], "is_active": False, "id": 999,
            "hashed_password": "x", "token_version": 5,
        },
    )  # fmt: skip
    assert r.status_code == 201
    assert r.json()["scopes"] == ["regular"] and r.json()["is_active"] is True
    assert r.json()["id"] != 999
    assert (await login(client, "eve@example.com")).status_code == 200


async def test_signup_email_in_use_any_case_is_409(client: AsyncClient) -> None:
    body = {"email": "bob@example.com", "password": PASSWORD, "full_name": "Bob"}
    assert (await client.post(SIGNUP, json=body)).status_code == 201
    r = await client.post(SIGNUP, json={**body, "email": "BOB@example.com"})
    assert r.status_code == 409 and isinstance(r.json()["detail"], str)


@pytest.mark.parametrize(
    "change",
    [
        {"email": "not-an-email"},
        {"password": "short"},
        {"password": "x" * 129},
        {"full_name": ""},
        {"email": None},
        {"password": None},
    ],
)
async def test_signup_bad_fields_are_422(client: AsyncClient, change: dict[str, object]) -> None:
    body = {"email": "c@example.com", "password": PASSWORD, "full_name": "C", **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = await client.post(SIGNUP, json=body)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list)


async def test_password_limits_are_inclusive(client: AsyncClient) -> None:
    for n, password in enumerate(["x" * 8, "y" * 128]):
        body = {"email": f"p{n}@example.com", "password": password, "full_name": "P"}
        assert (await client.post(SIGNUP, json=body)).status_code == 201
        assert (await login(client, f"p{n}@example.com", password)).status_code == 200


@API2
async def test_password_is_stored_as_argon2id(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    [(hashed,)] = await fetch('SELECT hashed_password FROM "user" WHERE id = :id', id=user["id"])
    assert hashed.startswith("$argon2id$") and "m=19456,t=2,p=1" in hashed
    assert PASSWORD not in hashed


@API8
async def test_errors_never_echo_a_password(client: AsyncClient, make_user: MakeUser) -> None:
    secret = "s3cret-" + "x" * 130  # too long: a 422 that must not repeat it
    r = await client.post(
        SIGNUP, json={"email": "e@example.com", "password": secret, "full_name": "E"}
    )
    assert r.status_code == 422 and secret not in r.text and "s3cret" not in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "password"]
    user = await make_user()
    r = await client.patch(
        "/api/users/me",
        json={"password": "short1", "current_password": PASSWORD},
        headers=user.headers,
    )
    assert r.status_code == 422 and "short1" not in r.text and PASSWORD not in r.text
