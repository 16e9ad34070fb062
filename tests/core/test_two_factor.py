"""Two-factor login over HTTP: setting it up, turning it on and off, logging in with a
TOTP code or a recovery code, and what a second factor leaves as it was."""

import re
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest
from httpx import AsyncClient

from app.core.jobs import runner
from app.core.settings import settings
from tests.core.two_factor import (
    INVALID,
    REQUIRED,
    WRONG_PASSWORD,
    log_in,
    set_up,
    steady_step,
    turn_on,
)
from tests.helpers import PASSWORD, MakeUser, bearer, fetch, login
from tests.servers import Inbox, token_of


async def me(client: AsyncClient, token: str) -> dict[str, object]:
    r = await client.get("/api/users/me", headers=bearer(token))
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


async def test_setup_enable_and_log_in(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "project_name", "Acme Chat")  # the issuer is the setting
    user = await make_user()
    assert (await me(client, user["token"]["access_token"]))["two_factor_enabled"] is False
    r = await client.post("/api/auth/2fa/setup", json={"password": PASSWORD}, headers=user.headers)
    assert r.status_code == 200 and set(r.json()) == {"secret", "otpauth_url"}
    secret, uri = r.json()["secret"], urlparse(r.json()["otpauth_url"])
    assert re.fullmatch("[A-Z2-7]{32}", secret)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/Acme Chat:{user['email']}"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret] and query["issuer"] == ["Acme Chat"]
    # Pending until a code comes back: logins need none yet.
    assert (await login(client, user["email"])).status_code == 200

    step = await steady_step()
    code = pyotp.TOTP(secret).generate_otp(step)
    r = await client.post("/api/auth/2fa/enable", json={"code": code}, headers=user.headers)
    assert r.status_code == 200 and set(r.json()) == {"recovery_codes"}
    codes = r.json()["recovery_codes"]
    assert len(set(codes)) == 10 and all(re.fullmatch("[a-z2-7]{5}-[a-z2-7]{5}", c) for c in codes)
    assert (await me(client, user["token"]["access_token"]))["two_factor_enabled"] is True

    r = await log_in(client, user["email"])
    assert (r.status_code, r.json()) == (401, REQUIRED)
    assert r.headers["www-authenticate"] == "Bearer"
    r = await log_in(client, user["email"], pyotp.TOTP(secret).generate_otp(step + 1))
    assert r.status_code == 200, r.text
    # Refreshing a login needs no code.
    refresh = {"refresh_token": r.json()["refresh_token"]}
    assert (await client.post("/api/auth/refresh", json=refresh)).status_code == 200


async def test_secrets_are_stored_sealed_and_never_shown_again(
    client: AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(scopes=["regular", "admin"])
    user = await make_user()
    factor = await turn_on(client, user)
    [(stored,)] = await fetch('SELECT totp_secret FROM "user" WHERE id = :id', id=user["id"])
    assert factor.secret not in stored and factor.secret.lower() not in stored.lower()
    hashes = [h for (h,) in await fetch("SELECT code_hash FROM recovery_code")]
    assert len(hashes) == 10
    plain = {c.replace("-", "") for c in factor.recovery_codes}
    assert not any(p in h or p.upper() in h for p in plain for h in hashes)
    token = (await log_in(client, user["email"], factor.code())).json()["access_token"]
    shown = [
        await client.get("/api/users/me", headers=bearer(token)),
        await client.get(f"/api/users/{user['id']}", headers=admin.headers),
        await client.get("/api/users", headers=admin.headers),
    ]
    for r in shown:
        assert r.status_code == 200
        assert factor.secret not in r.text and "totp" not in r.text
        assert not any(c in r.text for c in factor.recovery_codes)


async def test_a_code_works_once_and_only_near_now(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    factor = await turn_on(client, user)  # with the code of step 0 (the one before now)
    for offset in (0, -1, 3):  # the step that enabled it; older; too far ahead
        r = await log_in(client, user["email"], factor.code(offset))
        assert (r.status_code, r.json()) == (401, INVALID), offset
    assert (await log_in(client, user["email"], factor.code(1))).status_code == 200
    r = await log_in(client, user["email"], factor.code(1))  # again, within its 30 s
    assert (r.status_code, r.json()) == (401, INVALID)
    # One step ahead of the server's clock is fine.
    assert (await log_in(client, user["email"], factor.code(2))).status_code == 200


async def test_a_step_older_than_the_newest_accepted_works_once_if_unused(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """Each step near now works once: a step accepted before is refused, not every step
    older than it (enabled with the next step's code, now's and the previous one's work)."""
    user = await make_user()
    factor = await turn_on(client, user, offset=1)  # with the code of the step after now
    r = await log_in(client, user["email"], factor.code(0))
    assert (r.status_code, r.json()) == (401, INVALID)
    for offset in (-1, -2):  # now, then the step before it
        r = await log_in(client, user["email"], factor.code(offset))
        assert r.status_code == 200, (offset, r.text)
    await runner.chore()  # its pruning keeps the steps that could still come back
    for offset in (0, -1, -2):
        r = await log_in(client, user["email"], factor.code(offset))
        assert (r.status_code, r.json()) == (401, INVALID), offset


async def test_a_wrong_code_is_a_failed_login(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    wrong = ["not-a-code", "١٢٣٤٥٦", "000000" if factor.code() != "000000" else "111111"]
    wrong += ["ééééé-ééééé", "x" * 64]
    assert len(wrong) == settings.login_failures_per_email
    for otp in wrong:
        r = await log_in(client, user["email"], otp)
        assert (r.status_code, r.json()) == (401, INVALID)
    r = await log_in(client, user["email"], factor.code())
    assert r.status_code == 429 and "retry-after" in r.headers


async def test_a_missing_code_is_no_failed_login(client: AsyncClient, make_user: MakeUser) -> None:
    """Asked for the code as often as it likes; failures before it stay counted."""
    user = await make_user()
    factor = await turn_on(client, user)
    allowed = settings.login_failures_per_email
    for _ in range(allowed - 1):
        r = await log_in(client, user["email"], password="wrong password")
        assert (r.status_code, r.json()) == (401, WRONG_PASSWORD)
    for otp in [None, ""] * allowed:
        r = await log_in(client, user["email"], otp)
        assert (r.status_code, r.json()) == (401, REQUIRED)
    r = await log_in(client, user["email"], "000000" if factor.code() != "000000" else "111111")
    assert (r.status_code, r.json()) == (401, INVALID)  # the last failure allowed
    assert (await log_in(client, user["email"], factor.code())).status_code == 429


async def test_a_wrong_password_says_nothing_of_a_second_factor(
    client: AsyncClient, make_user: MakeUser
) -> None:
    plain, guarded = await make_user(), await make_user()
    factor = await turn_on(client, guarded)
    answers = set()
    for user in (plain, guarded):
        for otp in (None, "123456", factor.code()):
            r = await log_in(client, user["email"], otp, password="wrong password")
            assert (r.status_code, r.json()) == (401, WRONG_PASSWORD)
            answers.add((r.text, r.headers["www-authenticate"], r.headers["content-length"]))
    assert len(answers) == 1
    # The code sent with a wrong password was not used up.
    assert (await log_in(client, guarded["email"], factor.code())).status_code == 200


async def test_recovery_codes_work_once_each(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    first, second, third = factor.recovery_codes[:3]
    for typed in (first, second.upper().replace("-", ""), f" {third[:5]} {third[6:]} "):
        assert (await log_in(client, user["email"], typed)).status_code == 200
    for used in (first, second):
        r = await log_in(client, user["email"], used)
        assert (r.status_code, r.json()) == (401, INVALID)
    # A code of another user, or one that was never issued, is no code.
    other = await make_user()
    other_codes = (await turn_on(client, other)).recovery_codes
    r = await log_in(client, user["email"], other_codes[0])
    assert (r.status_code, r.json()) == (401, INVALID)
    assert (await log_in(client, user["email"], factor.recovery_codes[3])).status_code == 200


async def test_setup_rules(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    r = await client.post("/api/auth/2fa/enable", json={"code": "123456"}, headers=user.headers)
    assert r.status_code == 400  # nothing pending
    earlier, later = await set_up(client, user), await set_up(client, user)
    assert earlier != later
    step = await steady_step()
    for code in (pyotp.TOTP(earlier).generate_otp(step), "12345", "abcdef", "١٢٣٤٥٦", "é"):
        r = await client.post("/api/auth/2fa/enable", json={"code": code}, headers=user.headers)
        assert r.status_code == 400, code  # the later setup replaced the earlier
    code = pyotp.TOTP(later).generate_otp(step)
    r = await client.post("/api/auth/2fa/enable", json={"code": code}, headers=user.headers)
    assert r.status_code == 200
    r = await client.post("/api/auth/2fa/enable", json={"code": code}, headers=user.headers)
    assert r.status_code == 400  # on already: nothing pending
    r = await client.post("/api/auth/2fa/setup", json={"password": PASSWORD}, headers=user.headers)
    assert r.status_code == 409
    for body in ({}, {"password": 123}, {"password": "x" * 129}):
        r = await client.post("/api/auth/2fa/setup", json=body, headers=user.headers)
        assert r.status_code == 422
    assert (
        await client.post("/api/auth/2fa/setup", json={"password": PASSWORD})
    ).status_code == 401


async def test_setup_with_a_wrong_password_is_a_failed_login(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    wrong = {"password": "wrong password"}
    for _ in range(settings.login_failures_per_email):
        r = await client.post("/api/auth/2fa/setup", json=wrong, headers=user.headers)
        assert r.status_code == 403
    r = await client.post("/api/auth/2fa/setup", json={"password": PASSWORD}, headers=user.headers)
    assert r.status_code == 429
    assert (await login(client, user["email"])).status_code == 429


async def test_a_good_password_alone_keeps_failed_codes_counted(
    client: AsyncClient, make_user: MakeUser
) -> None:
    """Asked again to change the account (here a setup, 409 while it is on), a good password
    is no login: the wrong codes tried before it stay counted."""
    user = await make_user()
    factor = await turn_on(client, user)
    wrong = "000000" if factor.code() != "000000" else "111111"
    for _ in range(settings.login_failures_per_email - 1):
        assert (await log_in(client, user["email"], wrong)).status_code == 401
        body = {"password": PASSWORD}
        r = await client.post("/api/auth/2fa/setup", json=body, headers=user.headers)
        assert r.status_code == 409, r.text
    assert (await log_in(client, user["email"], wrong)).status_code == 401  # the last allowed
    assert (await log_in(client, user["email"], factor.code())).status_code == 429


async def test_disable_needs_password_and_code(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    url = "/api/auth/2fa/disable"
    for body in (
        {"password": "wrong password", "code": factor.code()},
        {"password": PASSWORD, "code": factor.code(0)},  # used at enable
        {"password": PASSWORD, "code": "abcde-fghij"},
    ):
        assert (await client.post(url, json=body, headers=user.headers)).status_code == 403
    assert (await me(client, user["token"]["access_token"]))["two_factor_enabled"] is True
    body = {"password": PASSWORD, "code": factor.code()}
    assert (await client.post(url, json=body, headers=user.headers)).status_code == 204
    assert (await me(client, user["token"]["access_token"]))["two_factor_enabled"] is False
    assert await fetch('SELECT totp_secret FROM "user" WHERE id = :id', id=user["id"]) == [(None,)]
    assert await fetch("SELECT * FROM recovery_code") == []
    assert (await login(client, user["email"])).status_code == 200
    # Off already: no code is right any more.
    body = {"password": PASSWORD, "code": factor.code(2)}
    assert (await client.post(url, json=body, headers=user.headers)).status_code == 403


async def test_disable_with_a_recovery_code(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    body = {"password": PASSWORD, "code": factor.recovery_codes[5]}
    r = await client.post("/api/auth/2fa/disable", json=body, headers=user.headers)
    assert r.status_code == 204
    # Set up again: the old secret and codes are gone, the steps used stay used.
    again = await turn_on(client, user, offset=0)  # the step before now was used
    assert again.secret != factor.secret
    for old in (factor.recovery_codes[6], factor.code()):
        r = await log_in(client, user["email"], old)
        assert (r.status_code, r.json()) == (401, INVALID)
    assert (await log_in(client, user["email"], again.recovery_codes[6])).status_code == 200


async def test_disable_failures_are_failed_logins(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    url, allowed = "/api/auth/2fa/disable", settings.login_failures_per_email
    for n in range(allowed):
        body = {"password": PASSWORD if n % 2 else "wrong password", "code": "000000"}
        if factor.code() == "000000":
            body["code"] = "111111"
        assert (await client.post(url, json=body, headers=user.headers)).status_code == 403
    body = {"password": PASSWORD, "code": factor.code()}
    assert (await client.post(url, json=body, headers=user.headers)).status_code == 429


async def test_reset_logout_and_password_change_keep_it_on(
    client: AsyncClient, make_user: MakeUser, inbox: Inbox
) -> None:
    user = await make_user()
    factor = await turn_on(client, user)
    token = (await log_in(client, user["email"], factor.code())).json()["access_token"]
    change = {"password": "a second passphrase", "current_password": PASSWORD}
    r = await client.patch("/api/users/me", json=change, headers=bearer(token))
    assert r.status_code == 200 and r.json()["two_factor_enabled"] is True
    r = await log_in(client, user["email"], password="a second passphrase")
    assert (r.status_code, r.json()) == (401, REQUIRED)

    await client.post("/api/auth/password-reset", json={"email": user["email"]})
    reset = token_of(await inbox.wait(user["email"], 2))  # after the verification mail
    body = {"token": reset, "password": "a third passphrase"}
    assert (await client.post("/api/auth/password-reset/confirm", json=body)).status_code == 204
    r = await log_in(client, user["email"], password="a third passphrase")
    assert (r.status_code, r.json()) == (401, REQUIRED)
    r = await log_in(client, user["email"], factor.code(2), password="a third passphrase")
    assert r.status_code == 200
    assert (
        await client.post("/api/auth/logout", headers=bearer(r.json()["access_token"]))
    ).status_code == 204
    r = await log_in(client, user["email"], password="a third passphrase")
    assert (r.status_code, r.json()) == (401, REQUIRED)
