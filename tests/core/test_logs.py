"""The server's log: one JSON line per request, and no password, token or hash in it, with
our logging config (`python -m app`) or uvicorn's own."""

import json
from pathlib import Path

import httpx
import pytest

from app.core.settings import settings
from tests.helpers import API8, PASSWORD, ROOT
from tests.servers import APP, PLAIN_UVICORN, clean_env, serve, start


@API8
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
    assert sorted(logged) == sorted(ids)

    for secret in secrets:
        assert secret not in output
    assert "$argon2" not in output and "hashed_password" not in output


@API8
def test_plain_uvicorn_logs_no_token(tmp_path: Path) -> None:
    log = tmp_path / "uvicorn.log"
    # SQLite: a file of its own. On the suite's file the server's signup waited out the
    # busy timeout behind a write lock of another process of the suite.
    own = f"sqlite+aiosqlite:///{tmp_path}/logs.db" if settings.is_sqlite else None
    env = clean_env(DATABASE_URL=own or settings.database_url)
    with (
        start(ROOT, env, argv=PLAIN_UVICORN, log=log) as server,
        httpx.Client(
            base_url=server.base,
            timeout=30,  # a hash takes long on a loaded machine
        ) as client,
    ):
        body = {"email": "logs@example.com", "password": PASSWORD, "full_name": "L"}
        assert client.post("/api/auth/signup", json=body).status_code == 201
        form = {"username": body["email"], "password": PASSWORD}
        token = client.post("/api/auth/token", data=form).json()["access_token"]
        for query in (f"token={token}", f"%74oken={token}", f"x=1&token={token}"):
            assert client.get(f"/api/users/me?{query}").status_code == 401
    output = log.read_text()
    assert "GET /api/users/me" in output  # the access log is on, and still useful
    assert "Logging error" not in output
    assert token not in output and token.split(".")[2] not in output


@API8
@pytest.mark.parametrize("uvicorn", [False, True], ids=["python-m-app", "plain-uvicorn"])
def test_a_token_in_an_encoded_path_is_not_logged(tmp_path: Path, uvicorn: bool) -> None:
    """A client that encodes its whole URL sends its query in the path (`%3Ftoken=`): the
    request lines keep the path, never what looks like a token in it."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    env = clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/logs.db")
    argv = PLAIN_UVICORN if uvicorn else APP
    with start(ROOT, env, argv=argv, log=tmp_path / "server.log") as server:
        for path in (f"/api/ws%3Ftoken={token}", f"/reset-password%3Fx=1%26token%3D{token}"):
            assert httpx.get(server.base + path, timeout=30).status_code == 404
    output = (tmp_path / "server.log").read_text()
    assert "/api/ws" in output and token not in output and token.split(".")[2] not in output
