"""The mail an account can cause, and what its tokens are worth after a change: a stolen
access token cannot move an account, old reset tokens die with the password or the email
they were mailed for, and nobody can make the server send mail without limit."""

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import text

from app.core.db import engine
from app.core.jobs import runner
from app.core.models import utcnow
from app.core.settings import settings
from tests.helpers import API2, PASSWORD, MakeUser, fetch, login
from tests.servers import Inbox, token_of

pytestmark = API2
ME = "/api/users/me"


async def reset_token(client: httpx.AsyncClient, inbox: Inbox, email: str, nth: int) -> str:
    assert (await client.post("/api/auth/password-reset", json={"email": email})).status_code == 202
    return token_of(await inbox.wait(email, nth))


async def confirm(client: httpx.AsyncClient, token: str) -> int:
    body = {"token": token, "password": "another passphrase"}
    return (await client.post("/api/auth/password-reset/confirm", json=body)).status_code


async def test_a_reset_token_dies_with_the_password_it_was_mailed_for(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    user = await make_user()
    token = await reset_token(client, inbox, user["email"], 2)  # 1: the signup's verification
    change = {"password": "a changed passphrase", "current_password": PASSWORD}
    assert (await client.patch(ME, json=change, headers=user.headers)).status_code == 200
    assert await confirm(client, token) == 400


async def test_a_reset_token_dies_with_the_email_it_was_mailed_to(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    user = await make_user()
    token = await reset_token(client, inbox, user["email"], 2)
    change = {"email": "moved@example.com", "current_password": PASSWORD}
    assert (await client.patch(ME, json=change, headers=user.headers)).status_code == 200
    assert await confirm(client, token) == 204  # only pending: it is still the email
    user2 = await make_user()
    token = await reset_token(client, inbox, user2["email"], 2)
    change = {"email": "moved2@example.com", "current_password": PASSWORD}
    assert (await client.patch(ME, json=change, headers=user2.headers)).status_code == 200
    verify = token_of(await inbox.wait("moved2@example.com"))
    assert (await client.post("/api/auth/verify-email", json={"token": verify})).status_code == 204
    assert await confirm(client, token) == 400  # mailed to an address the account left


async def test_an_admins_email_change_unverifies_and_voids_reset_tokens(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    async with engine.begin() as conn:
        await conn.execute(text('UPDATE "user" SET email_verified = true WHERE id = :id'), user)
    token = await reset_token(client, inbox, user["email"], 2)
    r = await client.patch(
        f"/api/users/{user['id']}", json={"email": "given@example.com"}, headers=admin.headers
    )
    assert r.status_code == 200 and r.json()["email"] == "given@example.com"
    assert r.json()["email_verified"] is False
    verify = token_of(await inbox.wait("given@example.com"))
    assert await confirm(client, token) == 400
    assert (await client.post("/api/auth/verify-email", json={"token": verify})).status_code == 204


async def test_a_reset_ends_a_pending_email_change(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    """Whoever asked for the change knew the password; the owner's reset takes it back."""
    user = await make_user()
    change = {"email": "thief@example.com", "current_password": PASSWORD}
    assert (await client.patch(ME, json=change, headers=user.headers)).status_code == 200
    stolen = token_of(await inbox.wait("thief@example.com"))
    assert "thief@example.com" in await inbox.wait(user["email"], 2)  # the owner is told
    token = await reset_token(client, inbox, user["email"], 3)
    assert await confirm(client, token) == 204
    assert (await client.post("/api/auth/verify-email", json={"token": stolen})).status_code == 400
    fresh = (await login(client, user["email"], "another passphrase")).json()["access_token"]
    me = (await client.get(ME, headers={"Authorization": f"Bearer {fresh}"})).json()
    assert me["email"] == user["email"] and me["pending_email"] is None


async def test_a_change_checked_before_a_reset_committed_does_not_land_after_it(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    """A thief with the password and a token asks for a new password and email while the
    owner resets: whichever commits first, the owner's reset is what holds."""
    user = await make_user()
    token = await reset_token(client, inbox, user["email"], 2)
    change = {
        "email": "thief@example.com",
        "password": "thief passphrase",
        "current_password": PASSWORD,
    }
    r, code = await asyncio.gather(
        client.patch(ME, json=change, headers=user.headers), confirm(client, token)
    )
    assert code == 204 and r.status_code in (200, 401, 403), r.text
    assert (await login(client, user["email"], "thief passphrase")).status_code == 401
    fresh = (await login(client, user["email"], "another passphrase")).json()["access_token"]
    me = (await client.get(ME, headers={"Authorization": f"Bearer {fresh}"})).json()
    assert me["email"] == user["email"] and me["pending_email"] is None


async def test_a_login_racing_a_reset_does_not_bring_the_old_password_back(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    """A login rehashes a password stored with older cost settings: never over the new
    password a reset stored while the login checked the old one."""
    user = await make_user()
    older = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    async with engine.begin() as conn:
        params = {"h": older, "id": user["id"]}
        await conn.execute(text('UPDATE "user" SET hashed_password = :h WHERE id = :id'), params)
    token = await reset_token(client, inbox, user["email"], 2)
    # The reset first: it hashes while the login reads the row, then checks the old hash.
    code, r = await asyncio.gather(confirm(client, token), login(client, user["email"]))
    assert code == 204 and r.status_code in (200, 401), r.text
    assert (await login(client, user["email"], "another passphrase")).status_code == 200
    assert (await login(client, user["email"])).status_code == 401


async def test_mail_a_user_can_cause_is_limited(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    assert settings.mails_per_user_per_hour == 5
    user = await make_user()  # its signup's mail is the first of five
    codes = [
        (await client.post("/api/auth/verify-email/resend", headers=user.headers)).status_code
        for _ in range(6)
    ]
    assert codes == [202, 202, 202, 202, 429, 429]
    change = {"email": "elsewhere@example.com", "current_password": PASSWORD}
    r = await client.patch(ME, json=change, headers=user.headers)
    assert r.status_code == 429 and r.headers["Retry-After"].isdigit()
    await asyncio.sleep(1)
    assert len(inbox.to(user["email"])) == 5 and inbox.to("elsewhere@example.com") == []
    [(pending,)] = await fetch('SELECT pending_email FROM "user" WHERE id = :id', id=user["id"])
    assert pending is None  # nothing changed either


async def test_verification_racing_an_email_change_never_fails(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    """The two take the user's row, then its tokens, in the same order: no deadlock. On
    PostgreSQL the test holds the user's row meanwhile, so both wait there, the change first:
    a verification that took the token's row before the user's would deadlock with it."""
    pause = 0.0 if settings.is_sqlite else 0.3
    for round in range(6):
        user = await make_user()
        change = {"email": f"next{round}@example.com", "current_password": PASSWORD}
        assert (await client.patch(ME, json=change, headers=user.headers)).status_code == 200
        token = token_of(await inbox.wait(f"next{round}@example.com"))
        again = {"email": f"again{round}@example.com", "current_password": PASSWORD}
        async with AsyncExitStack() as held:
            if not settings.is_sqlite:  # SQLite runs one writer at a time: nothing to order
                conn = await held.enter_async_context(engine.begin())
                await conn.execute(text('SELECT 1 FROM "user" WHERE id = :id FOR UPDATE'), user)
            patch = asyncio.create_task(client.patch(ME, json=again, headers=user.headers))
            await asyncio.sleep(pause)  # hashed, and waiting for the row
            verify = asyncio.create_task(
                client.post("/api/auth/verify-email", json={"token": token})
            )
            await asyncio.sleep(pause)
        replies = [await verify, await patch]
        assert replies[0].status_code in (204, 400), replies[0].text
        assert replies[1].status_code == 200, replies[1].text


class Refusing(Inbox):
    """An SMTP server that refuses one recipient for good."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, *_: Any
    ) -> str:
        if address.startswith("refused"):
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_a_refused_mail_neither_blocks_the_others_nor_loops(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = Refusing()
    box.controller.start()
    for name, value in {
        "smtp_host": "127.0.0.1",
        "smtp_port": box.port,
        "smtp_security": "none",
        "mail_retry_max_seconds": 1,
        "mail_max_attempts": 2,
    }.items():
        monkeypatch.setattr(settings, name, value)
    try:
        async with engine.begin() as conn:  # one round, the refused one first
            for name in ("refused", "fine1", "fine2"):
                await conn.execute(
                    text(
                        'INSERT INTO mail (kind, "to", data, attempts, next_attempt_at, '
                        "created_at, updated_at, deleted) VALUES ('verify', :to, :data, 0, "
                        ":now, :now, :now, false)"
                    ),
                    {"to": f"{name}@example.com", "data": '{"token": "t"}', "now": utcnow()},
                )
        runner.wake()  # as a queued row's event does
        await box.wait("fine1@example.com")
        await box.wait("fine2@example.com")
        sent = await fetch("SELECT attempts FROM mail WHERE \"to\" LIKE 'fine%'")
        assert sent == [(1,), (1,)]  # at their first attempt, in the refused one's round
        for _ in range(300):  # two attempts, a poll apart, then given up
            rows = await fetch(
                "SELECT attempts, failed_at, data FROM mail WHERE \"to\" = 'refused@example.com'"
            )
            if rows[0].failed_at is not None:
                break
            await asyncio.sleep(0.1)
        [(attempts, failed_at, data)] = rows
        assert attempts == 2 and failed_at is not None and data in ({}, "{}")
    finally:
        box.controller.stop()


async def test_a_failing_row_leaves_no_batch_leased_and_sends_nothing_twice(
    client: httpx.AsyncClient, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the runner cannot render (an unknown kind) fails its round: what went out in
    that round is marked sent at once, the rest is retried, nothing waits for a lease."""
    monkeypatch.setattr(settings, "mail_max_attempts", 2)
    monkeypatch.setattr(settings, "mail_retry_max_seconds", 1)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                'INSERT INTO mail (kind, "to", data, attempts, next_attempt_at, created_at, '
                "updated_at, deleted) VALUES ('no-such-kind', 'x@example.com', '{}', 0, "
                ":now, :now, :now, false)"
            ),
            {"now": utcnow()},
        )
    body = {"email": "good@example.com", "password": PASSWORD, "full_name": "G"}
    assert (await client.post("/api/auth/signup", json=body)).status_code == 201
    await inbox.wait("good@example.com")
    # The second try comes at the runner's next poll (every 5 s): give a busy machine 30 s.
    for _ in range(300):
        [(failed,)] = await fetch("SELECT failed_at FROM mail WHERE kind = 'no-such-kind'")
        if failed is not None:
            break
        await asyncio.sleep(0.1)
    assert failed is not None
    await asyncio.sleep(1)
    assert len(inbox.to("good@example.com")) == 1
