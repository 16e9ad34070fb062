"""Two-factor login under pressure: one code raced by two logins (in one process, and on two
`python -m app` processes sharing PostgreSQL), the timing of wrong passwords, and the
superuser's switch for a user who lost device and codes; the login form as Swagger's
Authorize dialog sends it."""

import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from httpx import AsyncClient

from app.core.settings import settings
from tests.core.two_factor import INVALID, REQUIRED, WRONG_PASSWORD, log_in, turn_on
from tests.helpers import MakeUser, fetch, login
from tests.servers import serve

pg_only = pytest.mark.skipif(settings.is_sqlite, reason="processes share PostgreSQL only")


@contextmanager
def two_processes(tmp_path: Path) -> Iterator[tuple[AsyncClient, AsyncClient]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    url = settings.database_url
    with serve(tmp_path / "a", DATABASE_URL=url) as a, serve(tmp_path / "b", DATABASE_URL=url) as b:
        yield AsyncClient(base_url=a), AsyncClient(base_url=b)


async def race(one: AsyncClient, other: AsyncClient, email: str, otp: str) -> list[int]:
    answers = await asyncio.gather(log_in(one, email, otp), log_in(other, email, otp))
    for r in answers:
        assert r.status_code == 200 or (r.status_code, r.json()) == (401, INVALID), r.text
    return sorted(r.status_code for r in answers)


async def test_one_code_raced_in_one_process(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    assert await race(client, client, user["email"], factor.code(1)) == [200, 401]
    assert await race(client, client, user["email"], factor.recovery_codes[0]) == [200, 401]
    assert await race(client, client, user["email"], factor.code(2)) == [200, 401]


@pg_only
async def test_one_code_raced_on_two_processes(
    client: AsyncClient, make_user: MakeUser, tmp_path: Path
) -> None:
    """The same code at two processes at once: exactly one logs in, for a TOTP code (even
    within its 30 s) and for a recovery code alike."""
    users = [await make_user() for _ in range(3)]
    with two_processes(tmp_path) as (a, b):
        async with a, b:
            for user in users:
                for server in (a, b):  # both warm: no first-request delay evens the race
                    assert (await login(server, user["email"], "wrong")).status_code == 401
                factor = await turn_on(client, user)
                assert await race(a, b, user["email"], factor.code(1)) == [200, 401]
                assert await race(b, a, user["email"], factor.code(2)) == [200, 401]
                for code in factor.recovery_codes[:2]:
                    assert await race(a, b, user["email"], code) == [200, 401]


@pytest.mark.timing
async def test_wrong_passwords_take_as_long_with_a_second_factor(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong password is answered alike, and as fast, for a user with two-factor login
    and one without, with an `otp` and without: nothing tells a guesser it is on."""
    monkeypatch.setattr(settings, "login_failures_per_email", 50)
    plain, guarded = await make_user(), await make_user()
    await turn_on(client, guarded)
    times: dict[tuple[str, bool], list[float]] = {}
    for round in range(4):  # the kinds in turns, each round in another order
        kinds = [(u, otp) for u in (plain, guarded) for otp in (False, True)]
        for user, otp in kinds[round:] + kinds[:round]:
            started = time.perf_counter()
            r = await log_in(client, user["email"], "123456" if otp else None, "wrong password")
            times.setdefault((user["email"], otp), []).append(time.perf_counter() - started)
            assert (r.status_code, r.json()) == (401, WRONG_PASSWORD)
    medians = [statistics.median(t) for t in times.values()]
    assert max(medians) / min(medians) < 2, times


async def test_only_a_superuser_turns_it_off_for_someone(
    client: AsyncClient, make_user: MakeUser
) -> None:
    superuser = await make_user(scopes=["regular", "admin", "superuser"])
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    factor = await turn_on(client, user)
    url = f"/api/users/{user['id']}"
    for body in (
        {"two_factor_enabled": True},
        {"two_factor_enabled": 0},
        {"two_factor_enabled": None},
    ):
        assert (await client.patch(url, json=body, headers=superuser.headers)).status_code == 422
    off = {"two_factor_enabled": False}
    assert (await client.patch(url, json=off, headers=admin.headers)).status_code == 403
    r = await log_in(client, user["email"])
    assert (r.status_code, r.json()) == (401, REQUIRED)  # still on
    r = await client.patch(url, json=off, headers=superuser.headers)
    assert r.status_code == 200 and r.json()["two_factor_enabled"] is False
    assert await fetch("SELECT * FROM recovery_code") == []
    assert (await login(client, user["email"])).status_code == 200
    r = await client.get("/api/users/me", headers=user.headers)
    assert r.json()["two_factor_enabled"] is False
    r = await log_in(client, user["email"], factor.recovery_codes[0])
    assert r.status_code == 200  # an otp is ignored while it is off


async def test_the_authorize_dialog_logs_in_without_a_second_factor(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    form = {
        "grant_type": "password",
        "username": user["email"],
        "password": "correct horse battery",
        "scope": "regular",
        "client_id": "",
        "client_secret": "",
    }
    assert (await client.post("/api/auth/token", data=form)).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    token = schema["paths"]["/api/auth/token"]["post"]
    assert "`otp`" in token["description"]
    form_schema = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    ref = form_schema["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][ref]
    assert "otp" in fields["properties"] and "otp" not in fields["required"]
