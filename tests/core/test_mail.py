"""Mail through a real SMTP server (aiosmtpd on a free port): verification and password
reset end to end, and what a reset request must not tell. The outbox's delivery
guarantees and the mail of real processes: test_mail_delivery.py."""

import asyncio
import time
from statistics import median

import httpx
import pytest

from app.core.settings import settings
from tests.helpers import API2, API4, PASSWORD, MakeUser, fetch, login, signup
from tests.servers import MAIL_FRONTEND, Inbox, token_of

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
    assert r.status_code == 204  # still the email: only a mail to it supersedes its token
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
    # Its right password, tried more often than failures are allowed: no failed login.
    for _ in range(settings.login_failures_per_email + 1):
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


@pytest.mark.timing
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
        pair = [(k, True), (u, False)]
        for address, registered in pair if i % 2 else pair[::-1]:
            await jobs_done()  # the job of a known email, done later, is not the request's
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


async def jobs_done() -> None:
    deadline = time.monotonic() + 10
    while (await fetch("SELECT count(*) FROM mail WHERE next_attempt_at IS NOT NULL"))[0][0]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


@API4
async def test_reset_requests_are_limited(client: httpx.AsyncClient) -> None:
    for _ in range(settings.login_failures_per_email):
        r = await client.post("/api/auth/password-reset", json={"email": "x@example.com"})
        assert r.status_code == 202
    r = await client.post("/api/auth/password-reset", json={"email": "x@example.com"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


@API4
async def test_reset_requests_are_limited_per_address_but_are_no_failed_logins(
    client: httpx.AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "login_failures_per_address", 3)
    user = await make_user()
    for n in range(4):
        r = await client.post("/api/auth/password-reset", json={"email": f"nobody{n}@example.com"})
        assert r.status_code == (202 if n < 3 else 429), n
    # An office behind one address still logs in.
    assert (await login(client, user["email"])).status_code == 200


async def test_a_pending_change_and_a_resend_leave_each_others_tokens_working(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    """A token works for the address it was mailed to while that is the email, or the
    pending one: a mail to the other address supersedes nothing of it."""
    user = await make_user()
    signup_token = token_of(await inbox.wait(user["email"]))
    change = {"email": "later@example.com", "current_password": PASSWORD}
    assert (
        await client.patch("/api/users/me", headers=user.headers, json=change)
    ).status_code == 200
    pending = token_of(await inbox.wait("later@example.com"))
    r = await client.post("/api/auth/verify-email", json={"token": signup_token})
    assert r.status_code == 204
    me = (await client.get("/api/users/me", headers=user.headers)).json()
    assert me["email_verified"] and me["pending_email"] == "later@example.com"
    other = await make_user()
    change = {"email": "elsewhere@example.com", "current_password": PASSWORD}
    assert (
        await client.patch("/api/users/me", headers=other.headers, json=change)
    ).status_code == 200
    moved = token_of(await inbox.wait("elsewhere@example.com"))
    r = await client.post("/api/auth/verify-email/resend", headers=other.headers)
    assert r.status_code == 202
    assert (await client.post("/api/auth/verify-email", json={"token": moved})).status_code == 204
    me = (await client.get("/api/users/me", headers=other.headers)).json()
    assert me["email"] == "elsewhere@example.com" and me["pending_email"] is None
    assert (await client.post("/api/auth/verify-email", json={"token": pending})).status_code == 204
