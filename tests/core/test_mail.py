"""Mail through a real SMTP server (aiosmtpd on a free port): verification and password
reset end to end, the outbox's delivery guarantees, and what must not leak."""

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.settings import settings
from tests.helpers import (
    API2,
    API4,
    API8,
    MAIL_FRONTEND,
    PASSWORD,
    ROOT,
    Inbox,
    MakeUser,
    fetch,
    login,
    pg_only,
    scratch_postgres,
    serve,
    signup,
    token_of,
)

FRONTEND = MAIL_FRONTEND


async def test_signup_mails_a_verification_link(client: httpx.AsyncClient, inbox: Inbox) -> None:
    assert (await signup(client, "Ada@Example.com")).status_code == 201
    body = await inbox.wait("ada@example.com")
    token = token_of(body)
    assert f"{FRONTEND}/verify-email?token={token}" in body and f"token: {token}" in body
    assert inbox.to("ada@example.com")[0][1] == "Confirm your email address"
    for garbled in (token[:-1], "", "x" * 5000, token + "x"):
        r = await client.post("/api/auth/verify-email", json={"token": garbled})
        assert r.status_code == 400, garbled
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 204
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 400
    auth = {
        "Authorization": f"Bearer {(await login(client, 'ada@example.com')).json()['access_token']}"
    }
    assert (await client.get("/api/users/me", headers=auth)).json()["email_verified"] is True
    r = await client.post("/api/auth/verify-email/resend", headers=auth)
    assert r.status_code == 204
    await asyncio.sleep(0.5)
    assert len(inbox.to("ada@example.com")) == 1


async def test_resend_and_email_change(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    user = await make_user()
    first = token_of(await inbox.wait(user["email"]))
    r = await client.post("/api/auth/verify-email/resend", headers=user.headers)
    assert r.status_code == 202
    second = token_of(await inbox.wait(user["email"], 2))
    assert second != first
    r = await client.post("/api/auth/verify-email", json={"token": first})
    assert r.status_code == 400  # superseded by the resend
    change = {"email": "new@example.com", "current_password": PASSWORD}
    r = await client.patch("/api/users/me", headers=user.headers, json=change)
    assert r.status_code == 200 and r.json()["pending_email"] == "new@example.com"
    third = token_of(await inbox.wait("new@example.com"))
    notice = await inbox.wait(user["email"], 3)  # the old address is told
    assert "new@example.com" in notice and "token" not in notice
    r = await client.post("/api/auth/verify-email", json={"token": second})
    assert r.status_code == 400  # superseded by the change
    assert (await client.post("/api/auth/verify-email", json={"token": third})).status_code == 204
    me = (await client.get("/api/users/me", headers=user.headers)).json()
    assert me["email"] == "new@example.com" and me["email_verified"] and me["pending_email"] is None


@API2
async def test_verification_token_expires(
    client: httpx.AsyncClient, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "email_verify_expire_minutes", 0)
    await signup(client, "late@example.com")
    token = token_of(await inbox.wait("late@example.com"))
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 400


async def test_verification_required_blocks_login_until_verified(
    client: httpx.AsyncClient, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "email_verification_required", True)
    await signup(client, "strict@example.com")
    r = await login(client, "strict@example.com")
    assert r.status_code == 403 and r.json() == {"detail": "Email not verified"}
    assert (await login(client, "strict@example.com", "wrong password")).status_code == 401
    token = token_of(await inbox.wait("strict@example.com"))
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 204
    assert (await login(client, "strict@example.com")).status_code == 200


async def test_a_reset_verifies_the_email_it_was_mailed_to(
    client: httpx.AsyncClient, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way back in for a user whose verification mail was lost, when verification is
    required: they cannot log in to ask for another, but a reset mail proves the address."""
    monkeypatch.setattr(settings, "email_verification_required", True)
    await signup(client, "lost@example.com")
    await inbox.wait("lost@example.com")  # the verification mail, never opened
    assert (await login(client, "lost@example.com")).status_code == 403
    await client.post("/api/auth/password-reset", json={"email": "lost@example.com"})
    token = token_of(await inbox.wait("lost@example.com", 2))
    new = {"token": token, "password": "a brand new passphrase"}
    assert (await client.post("/api/auth/password-reset/confirm", json=new)).status_code == 204
    r = await login(client, "lost@example.com", new["password"])
    assert r.status_code == 200, r.text
    me = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
    )
    assert me.json()["email_verified"] is True


@API2
async def test_password_reset_flow(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    user = await make_user()
    await inbox.wait(user["email"])  # the verification mail
    r = await client.post("/api/auth/password-reset", json={"email": user["email"].upper()})
    assert r.status_code == 202
    superseded = token_of(await inbox.wait(user["email"], 2))
    await client.post("/api/auth/password-reset", json={"email": user["email"]})
    body = await inbox.wait(user["email"], 3)
    token = token_of(body)
    assert f"{FRONTEND}/reset-password?token={token}" in body
    assert inbox.to(user["email"])[2][1] == "Reset your password"
    new = {"token": token, "password": "a brand new passphrase"}
    r = await client.post("/api/auth/password-reset/confirm", json={**new, "password": "short"})
    assert r.status_code == 422
    r = await client.post("/api/auth/password-reset/confirm", json={**new, "token": superseded})
    assert r.status_code == 400
    assert (await client.post("/api/auth/password-reset/confirm", json=new)).status_code == 204
    assert (await client.post("/api/auth/password-reset/confirm", json=new)).status_code == 400
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 401
    refresh = {"refresh_token": user["token"]["refresh_token"]}
    assert (await client.post("/api/auth/refresh", json=refresh)).status_code == 401
    assert (await login(client, user["email"])).status_code == 401
    assert (await login(client, user["email"], new["password"])).status_code == 200


@API2
async def test_reset_token_expires(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "password_reset_expire_minutes", 0)
    user = await make_user()
    await client.post("/api/auth/password-reset", json={"email": user["email"]})
    token = token_of(await inbox.wait(user["email"], 2))
    body = {"token": token, "password": "a brand new passphrase"}
    assert (await client.post("/api/auth/password-reset/confirm", json=body)).status_code == 400


@API2
async def test_reset_answers_alike_for_unknown_emails(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    # 16 pairs: the medians of fewer swing with whatever else the machine runs.
    known = [(await make_user())["email"] for _ in range(16)]
    unknown = [f"nobody{i}@example.com" for i in range(16)]
    times: dict[bool, list[float]] = {True: [], False: []}
    bodies = set()
    for i, (k, u) in enumerate(zip(known, unknown, strict=True)):
        # Alternating who goes first: the sender's work after a known email hits the next.
        pair = [(k, True), (u, False)]
        for address, registered in pair if i % 2 else pair[::-1]:
            start = time.perf_counter()
            r = await client.post("/api/auth/password-reset", json={"email": address})
            times[registered].append(time.perf_counter() - start)
            assert r.status_code == 202
            bodies.add(r.text)
    assert len(bodies) == 1
    a, b = median(times[True]), median(times[False])
    assert abs(a - b) < max(0.01, 0.5 * min(a, b)), times
    for address in known:
        await inbox.wait(address, 2)
    await asyncio.sleep(0.5)
    assert not any(inbox.to(address) for address in unknown)
    r = await client.post("/api/auth/password-reset", json={"email": "not an email"})
    assert r.status_code == 422


@API4
async def test_reset_requests_are_limited(client: httpx.AsyncClient) -> None:
    for _ in range(settings.login_failures_per_email):
        r = await client.post("/api/auth/password-reset", json={"email": "x@example.com"})
        assert r.status_code == 202
    r = await client.post("/api/auth/password-reset", json={"email": "x@example.com"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


async def test_a_rolled_back_signup_sends_nothing(client: httpx.AsyncClient, inbox: Inbox) -> None:
    assert (await signup(client, "taken@example.com")).status_code == 201
    await inbox.wait("taken@example.com")
    assert (await signup(client, "TAKEN@example.com")).status_code == 409
    await asyncio.sleep(1)
    assert len(inbox.to("taken@example.com")) == 1
    assert (await fetch("SELECT count(*) FROM mail"))[0][0] == 1


async def test_mail_waits_out_an_smtp_outage(client: httpx.AsyncClient, inbox: Inbox) -> None:
    inbox.controller.stop()
    assert (await signup(client, "patient@example.com")).status_code == 201
    deadline = time.monotonic() + 10
    while (await fetch("SELECT attempts FROM mail"))[0][0] < 2:  # tried and failed twice
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await fetch("SELECT sent_at FROM mail"))[0][0] is None
    inbox.controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    inbox.controller.start()
    await inbox.wait("patient@example.com", timeout=15)
    await asyncio.sleep(1.5)
    assert len(inbox.to("patient@example.com")) == 1
    rows = await fetch("SELECT sent_at, data FROM mail")
    assert rows[0][0] is not None and "token" not in str(rows[0][1])  # no token kept


# ----------------------------------------------------------------- real processes


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """A database of its own for server processes (the test process's sender must not
    take their mail): a new PostgreSQL database at head, or nothing (SQLite: a file each)."""
    if settings.is_sqlite:
        yield ""
        return
    with scratch_postgres(settings.database_url, "mail") as dsn:
        env = {"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        yield dsn


def smtp_env(box: Inbox, db: str) -> dict[str, str]:
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(box.port), "SMTP_SECURITY": "none"}
    env |= {"FRONTEND_URL": FRONTEND, "MAIL_RETRY_MAX_SECONDS": "1"}
    return env | ({"DATABASE_URL": db} if db else {})


@API8
async def test_tokens_appear_in_no_log_line(tmp_path: Path, scratch_db: str) -> None:
    box = Inbox()
    box.controller.start()
    try:
        with serve(tmp_path, **smtp_env(box, scratch_db)) as base:
            async with httpx.AsyncClient(base_url=base) as http:
                assert (await signup(http, "log@example.com")).status_code == 201
                verify = token_of(await box.wait("log@example.com"))
                await http.post("/api/auth/verify-email", json={"token": verify})
                await http.post("/api/auth/password-reset", json={"email": "log@example.com"})
                reset = token_of(await box.wait("log@example.com", 2))
                body = {"token": reset, "password": "another passphrase"}
                assert (
                    await http.post("/api/auth/password-reset/confirm", json=body)
                ).status_code == 204
                await http.get(f"/api/health?token={reset}")
    finally:
        box.controller.stop()
    log = (tmp_path / "server.log").read_text()
    assert '"request"' in log and verify not in log and reset not in log


async def test_development_without_smtp_logs_the_mail(tmp_path: Path, scratch_db: str) -> None:
    env = {"DATABASE_URL": scratch_db} if scratch_db else {}
    with serve(tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await signup(http, "dev@example.com")).status_code == 201
        await asyncio.sleep(1.5)
    lines = [ln for ln in (tmp_path / "server.log").read_text().splitlines() if '"app.mail"' in ln]
    assert any("dev@example.com" in ln and "/verify-email?token=" in ln for ln in lines), lines


@pg_only
async def test_two_processes_send_each_mail_once(tmp_path: Path, scratch_db: str) -> None:
    box = Inbox()
    box.controller.start()
    engine = create_async_engine(scratch_db.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        with (
            serve(tmp_path / "a", **smtp_env(box, scratch_db)),
            serve(tmp_path / "b", **smtp_env(box, scratch_db)),
        ):
            async with engine.begin() as conn:  # one commit, one NOTIFY: both wake at once
                await conn.execute(
                    text(
                        'INSERT INTO mail (created_at, updated_at, kind, "to", data, attempts, next_attempt_at) '
                        "SELECT now(), now(), 'verify', 'n' || i || '@example.com', '{\"token\": \"t\"}', 0, now() "
                        "FROM generate_series(1, 10) AS i"
                    )
                )
                await conn.execute(text("SELECT pg_notify('mail', '')"))
            for i in range(1, 11):
                await box.wait(f"n{i}@example.com")
            await asyncio.sleep(2)
        assert sorted(m[0] for m in box.mails) == sorted(f"n{i}@example.com" for i in range(1, 11))
    finally:
        box.controller.stop()
        await engine.dispose()
