"""Values at the edges of what the server stores: each is a clear 4xx, never a 500."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from httpx import AsyncClient

from tests.helpers import API5, API8, PASSWORD, MakeUser
from tests.servers import clean_env, serve

pytestmark = API8


@pytest.mark.parametrize("path", ["/api/auth/verify-email", "/api/auth/password-reset/confirm"])
async def test_lone_surrogates_and_nul_in_json_are_422(client: AsyncClient, path: str) -> None:
    for token in ('"\\ud800"', '"a\\udfff"', '"\\u0000"', '"\\ud83d\\u0041"'):
        body = '{"token": ' + token + ', "password": "a new passphrase"}'
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (token, r.text)
    # A real pair is a character like any other: the token is merely unknown.
    body = '{"token": "\\ud83d\\ude00", "password": "a new passphrase"}'
    r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
async def test_json_that_is_not_utf_8_is_422(client: AsyncClient, encoding: str) -> None:
    """JSON between systems is UTF-8 (RFC 8259). The standard library reads UTF-16 and
    UTF-32 too, where a lone surrogate or NUL would slip past the check above."""
    headers = {"Content-Type": "application/json"}
    for token in ('"\\ud800"', '"\\u0000"', '"unknown"'):
        body = '{"token": ' + token + ', "password": "a new passphrase"}'
        for path in ("/api/auth/verify-email", "/api/auth/password-reset/confirm"):
            r = await client.post(path, content=body.encode(encoding), headers=headers)
            assert r.status_code == 422, (path, token, r.text)
    email = f"nul-{encoding}@example.com"
    body = '{"email": "' + email + '", "password": "' + PASSWORD + '\\u0000", "full_name": "N"}'
    r = await client.post("/api/auth/signup", content=body.encode(encoding), headers=headers)
    assert r.status_code == 422
    account = {"email": email, "password": PASSWORD, "full_name": "N"}
    assert (await client.post("/api/auth/signup", json=account)).status_code == 201  # not 409


async def test_text_that_grows_when_lowered_is_refused_or_unknown(client: AsyncClient) -> None:
    """`"İ".lower()` is two characters: 320 of them pass a 320 limit and then do not."""
    r = await client.post("/api/auth/token", data={"username": "İ" * 320, "password": "x"})
    assert r.status_code == 401
    email = "İ" * 60 + "@" + "i" * 60 + ".example.com"
    body = {"email": email, "password": PASSWORD, "full_name": "I"}
    assert (await client.post("/api/auth/signup", json=body)).status_code in (201, 422)
    local = "a" * 64 + "@" + ".".join(["İ" * 40] * 6) + ".com"
    body = {"email": local, "password": PASSWORD, "full_name": "I"}
    assert (await client.post("/api/auth/signup", json=body)).status_code == 422


async def test_invisible_names_are_empty_names(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    for name in ("\u200b", " \u200b\u2060 ", "\u00ad"):
        r = await client.patch("/api/users/me", json={"full_name": name}, headers=user.headers)
        assert r.status_code == 422, name
        body = {"email": "blank@example.com", "password": PASSWORD, "full_name": name}
        assert (await client.post("/api/auth/signup", json=body)).status_code == 422


def test_a_forged_forwarded_for_is_400_not_500(tmp_path: Path) -> None:
    with serve(tmp_path, FORWARDED_ALLOW_IPS="*") as base:
        form = {"username": "a@example.com", "password": "x"}
        for forged in ("1" * 500, "not an address", "::1" + "0" * 300):
            r = httpx.post(
                f"{base}/api/auth/token", data=form, headers={"X-Forwarded-For": forged}, timeout=30
            )
            assert r.status_code == 400, (forged, r.text)
        r = httpx.post(
            f"{base}/api/auth/token", data=form, headers={"X-Forwarded-For": "10.1.2.3"}, timeout=30
        )
        assert r.status_code == 401


@pytest.mark.parametrize("key", [" " * 32, "ab" * 24, "012345678" * 4])
def test_production_refuses_a_key_of_few_different_characters(tmp_path: Path, key: str) -> None:
    env = clean_env(ENVIRONMENT="production", SECRET_KEY=key)
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, timeout=30
    )
    assert proc.returncode != 0 and b"SECRET_KEY" in proc.stderr


@API5
async def test_the_last_superuser_cannot_delete_itself(
    client: AsyncClient, make_user: MakeUser
) -> None:
    root = await make_user(scopes=["regular", "admin", "superuser"])
    assert (await client.delete("/api/users/me", headers=root.headers)).status_code == 409
    other = await make_user(scopes=["regular", "admin", "superuser"])
    assert (await client.delete("/api/users/me", headers=root.headers)).status_code == 204
    assert (await client.delete("/api/users/me", headers=other.headers)).status_code == 409
