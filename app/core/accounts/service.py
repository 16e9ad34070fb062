"""The rules of an account that a request follows: signing up, logging in, changing one's
own password or email, resets, verification, turning the second factor on and off. Each
opens its own short transactions, so no connection is held while a password is hashed."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core import limits
from app.core.accounts.models import SCOPES, UserCreate, UserPrivate, UserRow, UserUpdateMe
from app.core.accounts.passwords import hash_password, normalise_email, verify_password
from app.core.accounts.tokens import (
    Caller,
    TokenClaims,
    TokenPair,
    decode_token,
    refresh_session,
    start_session,
)
from app.core.accounts.twofactor import TwoFactor, TwoFactorSetup
from app.core.accounts.users import MailTokens, Users
from app.core.db import begin
from app.core.errors import (
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    TooManyAttempts,
    Unauthorized,
    Unavailable,
)
from app.core.outbox import MailRow, Outbox
from app.core.settings import settings

HOUR = timedelta(hours=1)
BAD_TOKEN = "Invalid or expired token"
CODE_REQUIRED, BAD_CODE = "Two-factor code required", "Invalid two-factor code"


@dataclass(frozen=True)
class Attempt:
    """A password attempt, counted under its email and its client address before it is
    checked, so parallel guesses cannot slip past the limits. It stays counted (a failed
    login) unless it is taken back. Its counters' keys: `email:…` and `addr:…`."""

    email_key: str
    address_key: str
    email_window: datetime
    address_window: datetime

    async def succeeded(self, conn: AsyncConnection) -> None:
        """A good password: the email's failures are forgotten, and this attempt does not
        count against the address (an office behind one address logs in all morning)."""
        await limits.forget(conn, self.email_key)
        await limits.uncount(conn, self.address_key, self.address_window)

    async def withdrawn(self, conn: AsyncConnection) -> None:
        """No attempt after all (a good password that is no login: sent without its second
        factor, or asked again to change the account): taken back from both counts, while
        the email's earlier failures stay, so a good password alone cannot wipe out failed
        guesses of the code."""
        await limits.uncount(conn, self.email_key, self.email_window)
        await limits.uncount(conn, self.address_key, self.address_window)

    async def check(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """`verify_password`; refused for a full hashing queue (503), it checked nothing:
        taken back, so a burst of logins locks no email or address out once it is over."""
        try:
            return await verify_password(password, hashed)
        except Unavailable:
            async with begin() as conn:
                await self.withdrawn(conn)
            raise


async def count_attempt(conn: AsyncConnection, email: str, address: str, kind: str = "") -> Attempt:
    """Counted under the login limits; with a `kind` (`reset:`), in counts of its own."""
    window = timedelta(seconds=settings.login_failure_window_seconds)
    keys = f"{kind}email:{email}", f"{kind}addr:{address}"
    allowed = settings.login_failures_per_email
    by_email = await limits.limit(conn, keys[0], allowed, window, TooManyAttempts)
    allowed = settings.login_failures_per_address
    by_address = await limits.limit(conn, keys[1], allowed, window, TooManyAttempts)
    return Attempt(*keys, by_email, by_address)


async def verified(user: Caller | UserRow, password: str, address: str) -> tuple[UserRow, Attempt]:
    """The caller's own password again (to change it, its email or its second factor):
    counted as a login attempt, so guessing ends in 429; 403 when wrong. The user's row,
    hash included, and the attempt, still counted."""
    async with begin() as conn:
        attempt = await count_attempt(conn, user.email, address)
        row = await Users(conn).get(user.id)
    ok, _ = await attempt.check(password, row.hashed_password if row else None)
    if row is None or not ok:
        raise Forbidden("Current password is wrong")
    return row, attempt


async def check_password(user: Caller | UserRow, password: str, address: str) -> UserRow:
    """Withdrawn, not succeeded: only a whole login (its code too) forgets the failures."""
    row, attempt = await verified(user, password, address)
    async with begin() as conn:
        await attempt.withdrawn(conn)
    return row


async def mail_allowed(conn: AsyncConnection, user_id: int) -> None:
    """Verification and email-change mail one user can cause, counted in every process."""
    await limits.limit(conn, f"mail:{user_id}", settings.mails_per_user_per_hour, HOUR)


async def sign_up(body: UserCreate, address: str) -> UserRow:
    key, allowed = f"signup:{address}", settings.signups_per_address_per_hour
    async with begin() as conn:  # counted and committed before any hashing
        window = await limits.limit(conn, key, allowed, HOUR)
    try:
        hashed = await hash_password(body.password)
    except Unavailable:  # nothing hashed, nobody signed up: a burst uses up no signups
        async with begin() as conn:
            await limits.uncount(conn, key, window)
        raise
    async with begin() as conn:
        user = await Users(conn).create(
            email=body.email, full_name=body.full_name, hashed_password=hashed
        )
        await mail_allowed(conn, user.id)
        await MailTokens(conn).mail("verify", user.id, user.email)
    return user


async def log_in(
    username: str, password: str, scope: str, address: str, otp: str | None = None
) -> TokenPair:
    requested = scope.split()
    if unknown := set(requested) - SCOPES.keys():
        raise DomainError(f"Unknown scope: {min(unknown)}")
    # What is no email is counted (and refused) under its own text, less what no row holds.
    email = normalise_email(username) or username.strip().lower().replace("\x00", "")
    async with begin() as conn:  # counted and committed before the check
        attempt = await count_attempt(conn, email, address)
        user = await Users(conn).by_email(email)
    ok, new_hash = await attempt.check(password, user.hashed_password if user else None)
    # Nothing about a second factor before this line: a wrong password answers alike.
    if not ok or user is None or not user.is_active:
        raise Unauthorized("Incorrect email or password")
    unverified = settings.email_verification_required and not user.email_verified
    if unverified or (user.two_factor_enabled and not otp):
        async with begin() as conn:  # a good password is no failed login, nor a login
            await attempt.withdrawn(conn)
        raise Forbidden("Email not verified") if unverified else Unauthorized(CODE_REQUIRED)
    async with begin() as conn:
        await attempt.succeeded(conn)  # its counters, then the user: the order all take
        users = Users(conn)
        # The account as it is now, locked: deleted, deactivated or given a new password
        # while the password was checked (no connection held), it gets no tokens.
        now = await locked(users, user.id)
        if now is None or not now.is_active or now.hashed_password != user.hashed_password:
            raise Unauthorized("Incorrect email or password")
        user = now
        # A wrong code rolls this back: the attempt stays counted, as a failed login.
        if user.two_factor_enabled and not await TwoFactor(conn).accept(user, otp or ""):
            raise Unauthorized(BAD_CODE)
        if new_hash:  # the cost settings were raised since this hash was made
            await users.rehash(user.id, user.hashed_password, new_hash)
        granted = [s for s in requested or user.scopes if s in user.scopes]
        return await start_session(users, user, granted)


async def refresh(token: str) -> TokenPair:
    claims: TokenClaims | None = decode_token(token, "refresh")
    async with begin() as conn:  # committed even when it answers 401: a reuse ends the chain
        pair = None if claims is None else await refresh_session(Users(conn), claims)
    if pair is None:
        raise Unauthorized()
    return pair


async def change_me(caller: Caller, body: UserUpdateMe, address: str) -> UserPrivate:
    """Name at once; a new password or email only with the current password. A new email
    is pending until the mail sent to it comes back (`verify_email`), and the old address
    is told: a stolen access token cannot move an account to its thief's address."""
    changes = body.model_dump(exclude_unset=True, exclude={"password", "current_password"})
    new_email = changes.pop("email", None)
    new_email = None if new_email == caller.email else new_email
    if body.password is not None or new_email is not None:
        if body.current_password is None:
            raise Invalid("current_password", "Needed to change the password or the email")
        await check_password(caller, body.current_password, address)
    if body.password is not None:
        changes |= {"hashed_password": await hash_password(body.password), "revoke": True}
    async with begin() as conn:
        users, tokens = Users(conn), MailTokens(conn)
        user = await users.lock(caller.id)
        if user.token_version != caller.token_version:
            # Revoked while the password was checked or hashed (by a reset, a logout, a
            # password change): what the token asked for must not land after that.
            raise Unauthorized()
        if new_email is not None:
            await mail_allowed(conn, user.id)
            changes["pending_email"] = new_email
            await tokens.mail("verify", user.id, new_email)
            await Outbox(conn).queue("email-change", user.email, new_email=new_email)
        if body.password is not None:
            await tokens.void(user.id, "reset")
        return await users.change(user.id, **changes)


async def set_up_two_factor(caller: Caller, password: str, address: str) -> TwoFactorSetup:
    await check_password(caller, password, address)
    async with begin() as conn:
        return await TwoFactor(conn).set_up(caller.id)


async def disable_two_factor(caller: Caller, password: str, code: str, address: str) -> None:
    """The password and a code: a stolen access token alone cannot turn the second factor
    off. Either one wrong: 403, a failed login."""
    row, attempt = await verified(caller, password, address)
    async with begin() as conn:
        await attempt.succeeded(conn)  # rolled back with a wrong code
        factor = TwoFactor(conn)
        if not await factor.accept(row, code):
            raise Forbidden(BAD_CODE)
        await factor.turn_off(row.id)


async def resend_verification(conn: AsyncConnection, caller: Caller) -> bool:
    """False when there is nothing to verify."""
    if caller.email_verified:
        return False
    # The user's row (taken by the mail), then its mail count: the order an email change
    # takes them in, so the two racing cannot deadlock. Past the limit, all is rolled back.
    await MailTokens(conn).mail("verify", caller.id, caller.email)
    await mail_allowed(conn, caller.id)
    return True


async def request_reset(email: str, address: str) -> None:
    """Limited per email and per address as logins are, under keys of their own: asking
    for resets uses up no login allowance of an office behind one address."""
    async with begin() as conn:
        await count_attempt(conn, email, address, kind="reset:")
    async with begin() as conn:  # the same row for every email: the user is looked up later
        await Outbox(conn).queue("reset-request", email)


async def reset_requested(conn: AsyncConnection, row: MailRow) -> None:
    """The job behind a reset request: a token and its mail if an active user has that
    email. Done here, not in the request, so known and unknown emails cost it the same."""
    user = await Users(conn).by_email(row.to)
    if user is not None and user.is_active:
        await MailTokens(conn).mail("reset", user.id, user.email)


async def confirm_reset(token: str, password: str) -> None:
    """The token is checked before the password is hashed: no hashing for a stranger."""
    async with begin() as conn:
        found = await MailTokens(conn).peek("reset", token)
    if found is None:
        raise DomainError(BAD_TOKEN)
    hashed = await hash_password(password)
    async with begin() as conn:
        users, tokens = Users(conn), MailTokens(conn)
        user = await locked(users, found.user_id)  # the user, then its tokens: one order
        used = await tokens.redeem("reset", token)
        # Only for the address it was mailed to: an email change since voids it.
        if user is None or used is None or not user.is_active or used.email != user.email:
            raise DomainError(BAD_TOKEN)
        # The token came by mail to this address: that verifies it, so a user whose
        # verification mail was lost is not locked out under EMAIL_VERIFICATION_REQUIRED.
        # A pending email change ends: whoever asked for it knew the old password.
        await tokens.void(user.id, "verify")
        await users.change(
            user.id, hashed_password=hashed, revoke=True, email_verified=True, pending_email=None
        )


async def verify_email(conn: AsyncConnection, token: str) -> None:
    """For the user's email, or for the pending one it was mailed to: that becomes the
    email, verified (409 if another account took it meanwhile)."""
    users, tokens = Users(conn), MailTokens(conn)
    found = await tokens.peek("verify", token)
    user = None if found is None else await locked(users, found.user_id)
    used = None if user is None else await tokens.redeem("verify", token)
    if user is None or used is None or used.email not in (user.email, user.pending_email):
        raise DomainError(BAD_TOKEN)
    if used.email == user.email:
        await users.change(user.id, email_verified=True)
        return
    await users.change(user.id, email=used.email, pending_email=None, email_verified=True)
    await tokens.void(user.id, "reset")  # mailed to the old address


async def locked(users: Users, user_id: int) -> UserRow | None:
    try:
        return await users.lock(user_id)
    except NotFound:  # deleted since the token was mailed
        return None
