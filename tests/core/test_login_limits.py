"""Guessing passwords is limited: failures are counted per email and per client address, in
the database (so every process shares the count), before the password is checked. The
counters are pruned by the job runner's hourly chore, run here as it runs it."""

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import text

from app.core.db import engine
from app.core.jobs import runner
from app.core.models import utcnow
from app.core.settings import settings
from tests.helpers import API2, MakeUser, fetch, login, pg_only
from tests.servers import serve_suite_db


async def wrong_logins(base: str, forwarded_for: list[str]) -> list[int]:
    async with AsyncClient(base_url=base) as http:
        return [
            (
                await http.post(
                    "/api/auth/token",
                    data={"username": f"nobody{i}@example.com", "password": "wrong password"},
                    headers={"X-Forwarded-For": address},
                )
            ).status_code
            for i, address in enumerate(forwarded_for)
        ]


@API2
async def test_too_many_failures_per_email_is_429(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    for _ in range(settings.login_failures_per_email):
        assert (await login(client, user["email"], "wrong password")).status_code == 401
    # From then on every guess is refused unchecked, and so is the right password.
    for n in range(3):
        assert (await login(client, user["email"], f"guess {n}")).status_code == 429
    r = await login(client, user["email"])
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= settings.login_failure_window_seconds
    # Another email from the same address is not locked out by it.
    other = await make_user()
    assert (await login(client, other["email"])).status_code == 200


@API2
async def test_too_many_failures_per_address_is_429(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "login_failures_per_address", 3)
    user = await make_user()
    for n in range(3):
        assert (await login(client, f"nobody{n}@example.com")).status_code == 401
    r = await login(client, user["email"])
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


async def test_a_login_refused_for_a_full_hashing_queue_is_no_failed_login(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 checked no password: once the burst is over, neither the email nor the
    address is locked out by it (the server recovers by itself)."""
    monkeypatch.setattr(settings, "login_failures_per_address", 3)
    user = await make_user()
    monkeypatch.setattr(settings, "hash_queue_size", 0)
    for _ in range(settings.login_failures_per_email + 1):
        assert (await login(client, user["email"])).status_code == 503
    monkeypatch.setattr(settings, "hash_queue_size", 32)
    assert (await login(client, user["email"])).status_code == 200


@API2
async def test_parallel_guesses_cannot_exceed_the_email_limit(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    replies = await asyncio.gather(
        *(login(client, user["email"], "wrong password") for _ in range(12))
    )
    codes = [r.status_code for r in replies]
    # Counted before checking: at most LOGIN_FAILURES_PER_EMAIL passwords are tried.
    assert set(codes) == {401, 429} and codes.count(401) <= 5, codes
    assert all(r.headers["Retry-After"].isdigit() for r in replies if r.status_code == 429)
    assert (await login(client, user["email"])).status_code == 429  # even the right one
    # One row per key (the email and the address), not one per attempt.
    keys = await fetch(
        "SELECT key FROM login_counter WHERE key LIKE 'email:%' OR key LIKE 'addr:%'"
    )
    assert len(keys) <= 2


@API2
@pg_only
async def test_login_limit_holds_across_processes(make_user: MakeUser, tmp_path: Path) -> None:
    user = await make_user()
    with serve_suite_db(tmp_path / "a") as a, serve_suite_db(tmp_path / "b") as b:
        async with AsyncClient(base_url=a) as one, AsyncClient(base_url=b) as two:
            replies = await asyncio.gather(
                *(login((one, two)[i % 2], user["email"], "wrong password") for i in range(12))
            )
            codes = [r.status_code for r in replies]
            assert set(codes) == {401, 429} and codes.count(401) <= 5, codes
            assert (await login(two, user["email"])).status_code == 429


@API2
async def test_wrong_current_password_counts_as_a_failed_login(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    change = {"password": "a new password", "current_password": "wrong password"}
    codes = [
        (await client.patch("/api/users/me", json=change, headers=user.headers)).status_code
        for _ in range(6)
    ]
    assert codes == [403] * 5 + [429], codes
    assert (await login(client, user["email"])).status_code == 429


@API2
async def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    limit = {"LOGIN_FAILURES_PER_ADDRESS": "3"}
    varying = [f"203.0.113.{i}" for i in range(5)]
    with serve_suite_db(tmp_path / "direct", **limit) as base:
        # The header is the client's word: the socket's peer (127.0.0.1) is counted.
        assert await wrong_logins(base, varying) == [401] * 3 + [429] * 2
    with serve_suite_db(tmp_path / "proxied", FORWARDED_ALLOW_IPS="127.0.0.1", **limit) as base:
        assert await wrong_logins(base, [f"198.51.100.{i}" for i in range(5)]) == [401] * 5
        assert await wrong_logins(base, ["192.0.2.1"] * 5) == [401] * 3 + [429] * 2


async def test_the_hourly_chore_prunes_the_counters_no_window_counts(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter goes once its window is long past, and not before: with a two-hour login
    window, failures counted 90 minutes ago still refuse after the chore."""
    monkeypatch.setattr(settings, "login_failure_window_seconds", 2 * 3600)
    old, current = await make_user(), await make_user()
    for user in (old, current):
        for _ in range(settings.login_failures_per_email):
            assert (await login(client, user["email"], "wrong password")).status_code == 401
    keys = "SELECT key FROM login_counter"  # the address's, signups' and mails' ones too
    counted = {row.key for row in await fetch(keys)}
    async with engine.begin() as conn:  # as if counted that long ago
        for user, age in ((old, timedelta(hours=3)), (current, timedelta(minutes=90))):
            await conn.execute(
                text("UPDATE login_counter SET window_start = :start WHERE key = :key"),
                {"start": utcnow() - age, "key": f"email:{user['email']}"},
            )

    await runner.chore()

    assert {row.key for row in await fetch(keys)} == counted - {f"email:{old['email']}"}
    assert (await login(client, current["email"])).status_code == 429
