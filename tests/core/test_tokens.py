"""What an access token must be to be accepted: ours, live, of its kind, unchanged."""

import base64
import json
from datetime import UTC, datetime, timedelta

from httpx import AsyncClient
from jose import jwt

from app.core.settings import settings
from tests.helpers import API2, MakeUser, bearer


def forge(claims: dict[str, object], key: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key or settings.secret_key, algorithm=algorithm)


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@API2
async def test_bad_tokens_are_401(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    now = datetime.now(UTC)
    live = now + timedelta(minutes=5)
    sid = jwt.get_unverified_claims(user["token"]["access_token"])["sid"]
    good = {"sub": str(user["id"]), "ver": 0, "sid": sid, "type": "access", "scope": "regular"}
    header, payload, signature = user["token"]["access_token"].split(".")
    escalated = b64({**good, "scope": "admin", "exp": int(live.timestamp())})
    tokens = {
        "expired": forge({**good, "exp": now - timedelta(seconds=5)}),
        "foreign key": forge({**good, "exp": live}, key="another-key"),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "other algorithm": forge({**good, "exp": live}, algorithm="HS512"),
        "tampered": f"{header}.{payload[:-2]}xx.{signature}",
        "scope escalation": f"{header}.{escalated}.{signature}",
        "refresh as access": user["token"]["refresh_token"],
        "old version": forge({**good, "ver": -1, "exp": live}),
        "unknown user": forge({**good, "sub": "999999", "exp": live}),
        "garbage": "not-a-token",
    }
    # The forging itself is right: the same claims with our key and a live exp are accepted.
    ok = forge({**good, "exp": live})
    assert (await client.get("/api/users/me", headers=bearer(ok))).status_code == 200
    for name, token in tokens.items():
        for url in ("/api/users/me", "/api/users"):
            r = await client.get(url, headers=bearer(token))
            assert r.status_code == 401, (name, url)
            assert r.headers["www-authenticate"] == "Bearer", (name, url)
    r = await client.get("/api/users/me")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


@API2
async def test_access_and_refresh_tokens_do_not_stand_in(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    token = user["token"]
    r = await client.post("/api/auth/refresh", json={"refresh_token": token["access_token"]})
    assert r.status_code == 401
    r = await client.get("/api/users/me", headers=bearer(token["refresh_token"]))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
