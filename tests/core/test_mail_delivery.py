"""The outbox's delivery guarantees, through a real SMTP server (aiosmtpd on a free
port): nothing for a rolled-back request, retries through an outage, none held back by
one the server cannot take, each mail once from two processes, and no token in a
server's log. Verification and password reset end to end: test_mail.py."""

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.jobs import Runner
from app.core.settings import settings
from tests.helpers import API8, ROOT, fetch, pg_only, signup
from tests.servers import MAIL_FRONTEND, Inbox, scratch_postgres, serve, token_of

FRONTEND = MAIL_FRONTEND


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


async def test_a_mail_the_server_cannot_take_holds_back_no_other(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    """After an outage the mails are due together, in the order they were queued: the first
    one, to an address that needs SMTPUTF8, fails alone and the others go out."""
    inbox.controller.stop()
    for email in ("üser@example.com", "next1@example.com", "next2@example.com"):
        assert (await signup(client, email)).status_code == 201
    deadline = time.monotonic() + 10
    while (await fetch("SELECT min(attempts) FROM mail"))[0][0] < 1:  # each tried in vain
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # Back without SMTPUTF8, as Amazon SES's SMTP interface, for one
    inbox.controller = Controller(
        inbox, hostname="127.0.0.1", port=inbox.port, enable_SMTPUTF8=False
    )
    inbox.controller.start()
    await inbox.wait("next1@example.com")
    await inbox.wait("next2@example.com")
    [(sent, pending)] = await fetch(
        'SELECT sent_at, next_attempt_at FROM mail WHERE "to" = :to', to="üser@example.com"
    )
    assert sent is None and pending is not None  # waits for its own retry
    assert inbox.to("üser@example.com") == []


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


@pytest.mark.parametrize("turns", range(6))
async def test_the_runner_stops_even_when_stopped_as_it_is_woken(turns: int) -> None:
    """Stopping cancels the runner. Python 3.11's asyncio.wait_for drops a cancellation
    that lands as the wake-up it waits for arrives: the runner would poll on, and its
    process never finish shutting down. Here the stop lands `turns` turns of the loop
    after the wake-up."""
    loop, runner = asyncio.get_running_loop(), Runner()
    task = asyncio.create_task(runner.run())
    while not runner.awake._waiters:  # its first round is done: it waits to be woken
        await asyncio.sleep(0.01)

    def later(turns: int) -> None:
        loop.call_soon(later, turns - 1) if turns else task.cancel()

    runner.wake()
    later(turns)
    try:
        await asyncio.wait([task], timeout=2)
        assert task.cancelled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_outage_longer_than_the_attempts_loses_no_mail(
    client: httpx.AsyncClient, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAIL_MAX_ATTEMPTS gives up a mail the server refuses; a server that cannot be
    reached refuses nothing: its mail waits, however long the outage."""
    monkeypatch.setattr(settings, "mail_max_attempts", 2)
    inbox.controller.stop()
    try:
        assert (await signup(client, "outlasting@example.com")).status_code == 201
        deadline = time.monotonic() + 20
        while True:
            [(attempts, failed_at)] = await fetch("SELECT attempts, failed_at FROM mail")
            assert failed_at is None
            if attempts > 2:  # past the attempts allowed
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        inbox.controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
        inbox.controller.start()
    await inbox.wait("outlasting@example.com", timeout=15)
