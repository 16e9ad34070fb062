"""Headers, request ids, CORS, body limits and logs."""

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from httpx import AsyncClient
from websockets.asyncio.client import connect

from tests.helpers import PASSWORD, MakeUser, serve


async def test_security_headers_and_request_id(client: AsyncClient) -> None:
    r = await client.get("/api/health")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    again = await client.get("/api/health")
    assert again.headers["x-request-id"] != r.headers["x-request-id"]
    r = await client.get("/api/health", headers={"X-Request-ID": "trace-42.a_b"})
    assert r.headers["x-request-id"] == "trace-42.a_b"
    r = await client.get("/api/health", headers={"X-Request-ID": "bad id\twith <junk>"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # The docs page loads its scripts, so it gets no API CSP; errors carry the headers too.
    assert "content-security-policy" not in (await client.get("/docs")).headers
    r = await client.get("/api/users/me")
    assert r.status_code == 401 and r.headers["x-content-type-options"] == "nosniff"


async def test_no_cors_by_default(client: AsyncClient) -> None:
    r = await client.options(
        "/api/health",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = await client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_from_settings(tmp_path: Path) -> None:
    with serve(tmp_path, CORS_ORIGINS='["https://app.example"]') as base:
        preflight = {"Access-Control-Request-Method": "POST"}
        r = httpx.options(
            f"{base}/api/threads", headers={"Origin": "https://app.example", **preflight}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.options(
            f"{base}/api/threads", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in r.headers


async def test_bodies_over_1_mib_are_413_before_parsing(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    big = b'{"body": "' + b"x" * (1024 * 1024) + b'"}'
    r = await client.post(
        "/api/threads/1/messages",
        content=big,
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and isinstance(r.json()["detail"], str)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b"x" * 65536

    r = await client.post(
        "/api/auth/signup", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    # Just under the limit is parsed as usual (and refused for what it says).
    r = await client.post(
        "/api/auth/signup",
        content=b'{"email": "' + b"x" * (1024 * 1000) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422


async def test_logs_one_json_line_per_request_and_no_secrets(tmp_path: Path) -> None:
    """Through a real server and its real log output."""
    secrets: list[str] = [PASSWORD, "a new password 123"]
    ids: list[str] = []
    with serve(tmp_path) as base:
        async with httpx.AsyncClient(base_url=base) as http:

            async def call(method: str, url: str, **kw: object) -> httpx.Response:
                r = await http.request(method, url, **kw)  # type: ignore[arg-type]
                ids.append(r.headers["x-request-id"])
                return r

            body = {"email": "log@example.com", "password": PASSWORD, "full_name": "L"}
            await call("POST", "/api/auth/signup", json=body)
            await call("POST", "/api/auth/signup", json=body)  # 409
            await call("POST", "/api/auth/signup", json={**body, "password": "short"})
            await call(
                "POST",
                "/api/auth/token",
                data={"username": body["email"], "password": "wrong pass"},
            )
            token = (
                await call(
                    "POST",
                    "/api/auth/token",
                    data={"username": body["email"], "password": PASSWORD},
                )
            ).json()
            secrets += [token["access_token"], token["refresh_token"]]
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            await call("POST", "/api/auth/refresh", json={"refresh_token": token["refresh_token"]})
            await call("GET", "/api/users/me", headers=auth)
            async with connect(
                f"ws://{base.removeprefix('http://')}/api/ws?token={token['access_token']}"
            ) as ws:
                await ws.close()
            await call(
                "PATCH", "/api/users/me", headers=auth,
                json={"password": secrets[1], "current_password": PASSWORD},
            )  # fmt: skip
    output = (tmp_path / "server.log").read_text()

    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # all JSON
    requests = [line for line in lines if line.get("msg") == "request"]
    assert all(
        {"request_id", "method", "path", "status", "ms", "level", "ts"} <= set(r) for r in requests
    )
    logged = [r["request_id"] for r in requests if r["path"] != "/api/health"]  # not the probes
    assert sorted(logged) == sorted(ids) or sorted(logged) == sorted([*ids, ws_id(requests)])

    for secret in secrets:
        assert secret not in output
    assert "$argon2" not in output and "hashed_password" not in output


def ws_id(requests: list[dict[str, object]]) -> str:
    [ws] = [r for r in requests if r["method"] == "WS" and r["path"] == "/api/ws"]
    return str(ws["request_id"])


async def test_what_the_fuzzer_found_stays_fixed(client: AsyncClient, make_user: MakeUser) -> None:
    """Each of these once reached the database and answered 500."""
    import base64

    user = await make_user()
    r = await client.post(
        "/api/threads", json={"title": "t", "member_ids": []}, headers=user.headers
    )
    tid = r.json()["id"]
    answers = {
        "id past int32": await client.get(f"/api/threads/{2**31}", headers=user.headers),
        "member id past int32": await client.post(
            "/api/threads", json={"member_ids": [2**40]}, headers=user.headers
        ),
        "NUL in a body": await client.post(
            f"/api/threads/{tid}/messages", json={"body": "a\x00b"}, headers=user.headers
        ),
        "NUL in a name": await client.patch(
            "/api/users/me", json={"full_name": "\x00"}, headers=user.headers
        ),
        "boolean as an id": await client.post(
            f"/api/threads/{tid}/read", json={"message_id": False}, headers=user.headers
        ),
        "password without current": await client.patch(
            "/api/users/me", json={"password": "a new password"}, headers=user.headers
        ),
    }
    for name, r in answers.items():
        assert r.status_code == 422, name
        assert isinstance(r.json()["detail"], list), name
    cursor = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", 99999999999999]').decode()
    r = await client.get("/api/threads", params={"cursor": cursor}, headers=user.headers)
    assert r.status_code == 400
    naive = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", 1]').decode()
    r = await client.get("/api/threads", params={"cursor": naive}, headers=user.headers)
    assert r.status_code == 400
    r = await client.post(
        "/api/auth/token", data={"username": "a\x00@example.com", "password": PASSWORD}
    )
    assert r.status_code == 422
    r = await client.get("/api/users", params={"q": "\x00"}, headers=user.headers)
    assert r.status_code in (403, 422)


async def test_405_lists_every_method_of_the_path(client: AsyncClient) -> None:
    r = await client.options("/api/threads/1")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PATCH"
    assert (await client.put("/api/users/lookup")).headers["allow"] == "GET"
    assert (await client.put("/api/health")).headers["allow"] == "GET"
