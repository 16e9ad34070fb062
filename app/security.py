"""Passwords, tokens and login limits: what decides who the caller is."""

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from fastapi.concurrency import run_in_threadpool
from jose import JWTError, jwt
from passlib.context import CryptContext
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from app import db
from app.db import begin
from app.errors import Conflict, TooManyAttempts, Unavailable
from app.models.base import utcnow
from app.models.user import SCOPES, UserRow
from app.repositories.users import Users
from app.settings import settings

ALGORITHM = "HS256"
T = TypeVar("T")
log = logging.getLogger("app")

pwd_context = CryptContext(
    schemes=["argon2"],
    argon2__type="ID",
    argon2__memory_cost=settings.argon2_memory_kib,
    argon2__rounds=settings.argon2_time_cost,
    argon2__parallelism=settings.argon2_parallelism,
)

# Argon2 takes tens of milliseconds of CPU and 19 MiB: run it in a thread (argon2-cffi
# releases the GIL), a core's worth at a time at most, so a burst of logins leaves a core
# to everyone else; beyond a bounded queue, 503 at once instead of piling up.
_hash_slots = asyncio.Semaphore(max(1, (os.cpu_count() or 2) - 1))
_hash_waiting = 0


async def _in_hash_slot(fn: Callable[..., T], *args: Any) -> T:
    global _hash_waiting
    if _hash_waiting >= settings.hash_queue_size:
        raise Unavailable("Too many logins at once; try again in a moment")
    _hash_waiting += 1
    try:
        async with _hash_slots:
            return await run_in_threadpool(fn, *args)
    finally:
        _hash_waiting -= 1


async def hash_password(password: str) -> str:
    return await _in_hash_slot(pwd_context.hash, password)


async def verify_password(password: str, hashed: str | None) -> tuple[bool, str | None]:
    """(matches, a new hash if the stored one uses old parameters).

    With no stored hash (unknown email) a dummy is checked, so the time taken does not
    tell whether the email exists.
    """

    def verify() -> tuple[bool, str | None]:  # the dummy is made in the thread too
        return pwd_context.verify_and_update(password, hashed or _dummy_hash())

    ok, new_hash = await _in_hash_slot(verify)
    return ok and hashed is not None, new_hash


@cache
def _dummy_hash() -> str:
    return pwd_context.hash("not a password anyone has")


def normalise_email(value: str) -> str | None:
    """As signup stores emails (email-validator's normalisation, then lower case); None for
    what is no email."""
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


# --------------------------------------------------------------------------- tokens


class TokenClaims(BaseModel):
    sub: int
    ver: int
    sid: int  # the login (auth_session row) this token descends from
    type: Literal["access", "refresh"]
    scope: str = ""
    exp: int
    jti: str | None = None

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str
    scope: str


def create_tokens(
    user: UserRow, scopes: list[str], sid: int, jti: str, chain_ends: datetime
) -> TokenPair:
    scope = " ".join(s for s in SCOPES if s in scopes)  # canonical order
    now = utcnow()
    access = timedelta(minutes=settings.access_token_expire_minutes)
    claims = {"sub": str(user.id), "ver": user.token_version, "sid": sid, "scope": scope}

    def token(**extra: Any) -> str:
        return jwt.encode({**claims, "iat": now, **extra}, settings.secret_key, ALGORITHM)

    return TokenPair(
        access_token=token(type="access", exp=min(now + access, chain_ends)),
        expires_in=int(access.total_seconds()),
        refresh_token=token(type="refresh", exp=chain_ends, jti=jti),
        scope=scope,
    )


def decode_token(token: str, kind: Literal["access", "refresh"]) -> TokenClaims | None:
    try:
        # algorithms pinned: the token's own header is never trusted.
        payload: dict[str, Any] = jwt.decode(token, settings.secret_key, algorithms=[ALGORITHM])
        claims = TokenClaims.model_validate(payload)
    except (JWTError, ValidationError):
        return None
    # An access token is no refresh token, and the reverse.
    return claims if claims.type == kind else None


class Caller(UserRow):
    """The user a request speaks for, with the scopes its token grants."""

    granted: frozenset[str]
    session_id: int
    expires: int  # the token's exp


class Callers:
    """Who an access token speaks for, remembered per process, so most requests spend no
    round trip on it. Every change the app makes to a user or its logins publishes an event:
    this process forgets the user as the change commits (`after_commit`), other processes
    when its NOTIFY reaches them (app.realtime's listener, which turns this cache off while
    it is disconnected). A change made outside the app (raw SQL) is seen within
    CACHE_SECONDS."""

    CACHE_SECONDS, SIZE = 60.0, 10_000

    def __init__(self) -> None:
        self.tokens: dict[str, TokenClaims] = {}  # verified signatures; exp checked per use
        self.users: dict[int, dict[str, tuple[float, Caller]]] = {}
        self.enabled = settings.is_sqlite  # one process: nobody else changes users
        self.generation = 0  # counts forgets: a lookup they raced is not kept

    def forget(self, user_id: int | None = None) -> None:
        self.generation += 1
        if user_id is None:
            self.users.clear()
        else:
            self.users.pop(user_id, None)

    def switch(self, on: bool) -> None:
        self.forget()
        self.enabled = on

    def claims(self, token: str) -> TokenClaims | None:
        claims = self.tokens.get(token)
        if claims is None and (claims := decode_token(token, "access")) is not None:
            if len(self.tokens) >= self.SIZE:
                self.tokens.clear()
            self.tokens[token] = claims
        return claims if claims is not None and claims.exp > time.time() else None

    async def get(self, token: str, conn: AsyncConnection | None) -> Caller | None:
        """The live user `token` speaks for; `conn` (or a connection of its own, given back
        at once) when it is not remembered. Logout, password change and deactivation bump
        `token_version`; a reused refresh token ends the login: both revoke the token."""
        if (claims := self.claims(token)) is None:
            return None
        hit = self.users.get(claims.sub, {}).get(token)
        if hit and self.enabled and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        generation = self.generation
        if conn is None:
            async with db.connect() as own:
                user = await Users(own).for_token(claims.sub, claims.sid)
        else:
            user = await Users(conn).for_token(claims.sub, claims.sid)
        if user is None or user.token_version != claims.ver:
            return None
        granted = frozenset(claims.scopes) & frozenset(user.scopes)  # scopes taken since count
        caller = Caller.model_construct(
            **user.__dict__, granted=granted, session_id=claims.sid, expires=claims.exp
        )
        if self.enabled and generation == self.generation:
            if sum(map(len, self.users.values())) >= self.SIZE:
                self.users.clear()
            self.users.setdefault(user.id, {})[token] = (time.monotonic(), caller)
        return caller


callers = Callers()
USER_EVENTS = ("user.changed", "user.revoked")


def _forget_changed(events: list[db.Event]) -> None:
    for event in events:
        if event["type"] in USER_EVENTS:
            callers.forget(event["user_id"])


db.after_commit.append(_forget_changed)


async def start_session(users: Users, user: UserRow, scopes: list[str]) -> TokenPair:
    """A new login: its chain of refresh tokens ends REFRESH_TOKEN_EXPIRE_MINUTES from now."""
    jti = secrets.token_urlsafe(16)
    lifetime = timedelta(minutes=settings.refresh_token_expire_minutes)
    sid, ends = await users.open_session(user.id, jti, lifetime)
    return create_tokens(user, scopes, sid, jti, ends)


async def refresh_session(users: Users, claims: TokenClaims) -> TokenPair | None:
    """The next pair of a chain, or None. A refresh token presented twice ends its chain:
    one of its two holders is a thief, and neither may go on."""
    user = await users.for_token(claims.sub, claims.sid)
    if user is None or user.token_version != claims.ver or claims.jti is None:
        return None
    jti = secrets.token_urlsafe(16)
    ends = await users.rotate_session(claims.sid, claims.jti, jti)
    if ends is None:
        await users.end_session(claims.sid)
        return None
    return create_tokens(
        user, [s for s in claims.scopes if s in user.scopes], claims.sid, jti, ends
    )


# --------------------------------------------------------------------------- limits


async def count_attempt(users: Users, email: str, address: str) -> None:
    """Count a password attempt before it is checked, so parallel guesses cannot slip past
    the limits; TooManyAttempts once either is used up."""
    window = timedelta(seconds=settings.login_failure_window_seconds)
    for key, allowed in (
        (f"email:{email}", settings.login_failures_per_email),
        (f"addr:{address}", settings.login_failures_per_address),
    ):
        count, start = await users.count_attempt(key, window)
        if count > allowed:
            wait = (start + window - utcnow()).total_seconds()
            raise TooManyAttempts(max(1, int(wait) + 1))


async def limited(email: str, address: str) -> None:
    """count_attempt in a transaction of its own: committed before the password is checked,
    so the connection is not held while the check waits for a core."""
    async with begin() as conn:
        await count_attempt(Users(conn), email, address)


async def succeeded(users: Users, email: str, address: str) -> None:
    """A good password: the email's failures are forgotten, and this attempt does not count
    against the address (an office behind one address logs in all morning)."""
    await users.forget_attempts(f"email:{email}")
    await users.uncount(f"addr:{address}")


async def ensure_first_superuser() -> None:
    """FIRST_SUPERUSER_EMAIL gets all scopes if it is free, or if whoever holds it knows
    FIRST_SUPERUSER_PASSWORD; anyone else who took that email gains nothing."""
    email, password = settings.first_superuser_email, settings.first_superuser_password
    if not (email and password and (email := normalise_email(email) or "")):
        return
    async with begin() as conn:
        users = Users(conn)
        user = await users.by_email(email)
    if user is not None:
        ok, _ = await verify_password(password, user.hashed_password)
        if not ok:
            log.warning("FIRST_SUPERUSER_EMAIL belongs to a user without that password: unchanged")
            return
    hashed = await hash_password(password) if user is None else None
    try:
        async with begin() as conn:
            users = Users(conn)
            if user is None:
                await users.create(
                    email=email,
                    full_name="Superuser",
                    hashed_password=hashed,
                    scopes=list(SCOPES),
                    email_verified=True,
                )
            else:
                await users.update(user.id, scopes=list(SCOPES), is_active=True)
    except Conflict:
        pass  # another process starting at the same time created it
