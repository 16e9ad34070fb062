from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from jose import jwt

from app.core.settings import settings
from tests.helpers import PASSWORD, MakeUser, bearer, fetch, login

SIGNUP = "/api/auth/signup"


async def test_signup_returns_user_private(client: AsyncClient) -> None:
    r = await client.post(
        SIGNUP, json={"email": "Ann@Example.COM", "password": PASSWORD, "full_name": "Ann"}
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {
        "id", "email", "full_name", "scopes", "is_active", "email_verified", "pending_email", "created_at", "updated_at"
    }  # fmt: skip
    assert body["email"] == "ann@example.com"
    assert body["scopes"] == ["regular"] and body["is_active"] is True
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)


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


async def test_password_is_stored_as_argon2id(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    [(hashed,)] = await fetch('SELECT hashed_password FROM "user" WHERE id = :id', id=user["id"])
    assert hashed.startswith("$argon2id$") and "m=19456,t=2,p=1" in hashed
    assert PASSWORD not in hashed


async def test_token_shape(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await login(client, user["email"].upper())
    assert r.status_code == 200
    token = r.json()
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == settings.access_token_expire_minutes * 60
    assert token["scope"] == "regular"
    assert token["access_token"] != token["refresh_token"]


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


async def test_missing_scope_is_403(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await client.get("/api/users", headers=user.headers)
    assert r.status_code == 403
    assert r.json() == {"detail": "Not enough permissions"}


async def test_scope_taken_away_stops_working(client: AsyncClient, make_user: MakeUser) -> None:
    root = await make_user(scopes=["regular", "admin", "superuser"])
    admin = await make_user(scopes=["regular", "admin"])
    assert (await client.get("/api/users", headers=admin.headers)).status_code == 200
    demote = {"scopes": ["regular"]}
    r = await client.patch(f"/api/users/{admin['id']}", json=demote, headers=root.headers)
    assert r.status_code == 200, r.text
    assert (await client.get("/api/users", headers=admin.headers)).status_code == 403


async def test_too_many_failures_per_email_is_429(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    for _ in range(settings.login_failures_per_email):
        assert (await login(client, user["email"], "wrong password")).status_code == 401
    r = await login(client, user["email"])  # even the right password
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= settings.login_failure_window_seconds
    # Another email from the same address is not locked out by it.
    other = await make_user()
    assert (await login(client, other["email"])).status_code == 200


async def test_too_many_failures_per_address_is_429(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "login_failures_per_address", 3)
    user = await make_user()
    for n in range(3):
        assert (await login(client, f"nobody{n}@example.com")).status_code == 401
    r = await login(client, user["email"])
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


async def test_refresh_gives_a_new_pair(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user(scopes=["regular", "admin"])
    narrowed = (await login(client, user["email"], scope="regular")).json()
    r = await client.post("/api/auth/refresh", json={"refresh_token": narrowed["refresh_token"]})
    assert r.status_code == 200
    pair = r.json()
    assert pair["scope"] == "regular"  # refreshing never widens a token
    me = await client.get("/api/users/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200


async def test_access_and_refresh_tokens_do_not_stand_in(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    token = user["token"]
    r = await client.post("/api/auth/refresh", json={"refresh_token": token["access_token"]})
    assert r.status_code == 401
    r = await client.get("/api/users/me", headers=bearer(token["refresh_token"]))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_refresh_rejects_garbage_and_missing(client: AsyncClient) -> None:
    assert (
        await client.post("/api/auth/refresh", json={"refresh_token": "x.y.z"})
    ).status_code == 401
    assert (await client.post("/api/auth/refresh", json={})).status_code == 422


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


def forge(claims: dict[str, object], key: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key or settings.secret_key, algorithm=algorithm)


async def test_bad_tokens_are_401(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    now = datetime.now(UTC)
    sid = jwt.get_unverified_claims(user["token"]["access_token"])["sid"]
    good = {"sub": str(user["id"]), "ver": 0, "sid": sid, "type": "access", "scope": "regular"}
    header, payload, _ = user["token"]["access_token"].split(".")
    import base64
    import json

    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    tokens = {
        "expired": forge({**good, "exp": now - timedelta(seconds=5)}),
        "foreign key": forge({**good, "exp": now + timedelta(minutes=5)}, key="another-key"),
        "alg none": none_header.decode().rstrip("=") + "." + payload + ".",
        "tampered": f"{header}.{payload[:-2]}xx.{_}",
        "old version": forge({**good, "ver": -1, "exp": now + timedelta(minutes=5)}),
        "unknown user": forge({**good, "sub": "999999", "exp": now + timedelta(minutes=5)}),
        "garbage": "not-a-token",
    }
    # The forging itself is right: the same claims with our key and a live exp are accepted.
    ok = forge({**good, "exp": now + timedelta(minutes=5)})
    assert (await client.get("/api/users/me", headers=bearer(ok))).status_code == 200
    for name, token in tokens.items():
        r = await client.get("/api/users/me", headers=bearer(token))
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"] == "Bearer", name
    r = await client.get("/api/users/me")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


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
