"""Tokens and whom they speak for: signed JWTs, the chain of refresh tokens of a login, and
a per-process memory of the callers that tokens name."""

import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Literal

from jose import JWTError, jwt
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import SCOPES, UserPrivate, UserRow
from app.core.accounts.users import Users
from app.core.events import Listening, UserChanged
from app.core.models import utcnow
from app.core.settings import settings

ALGORITHM = "HS256"


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
    user_id: int, version: int, scopes: list[str], sid: int, jti: str, chain_ends: datetime
) -> TokenPair:
    scope = " ".join(s for s in SCOPES if s in scopes)  # canonical order
    now = utcnow()
    # Never past the end of its login's chain: near it, shorter than the setting.
    expires = min(now + timedelta(minutes=settings.access_token_expire_minutes), chain_ends)
    claims = {"sub": str(user_id), "ver": version, "sid": sid, "scope": scope}

    def token(**extra: Any) -> str:
        return jwt.encode({**claims, "iat": now, **extra}, settings.secret_key, ALGORITHM)

    return TokenPair(
        access_token=token(type="access", exp=expires),
        expires_in=int((expires - now).total_seconds()),
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


class Caller(UserPrivate):
    """The user a request speaks for, with the scopes its token grants (no password hash:
    a route that checks a password loads it)."""

    token_version: int
    granted: frozenset[str]
    session_id: int
    expires: int  # the token's exp


class Callers:
    """Who an access token speaks for, remembered per process, so most requests spend no
    round trip on it. Every change the app makes to a user or its logins publishes
    `UserChanged`: this process forgets the user as the change commits, other processes
    as the event reaches them, before the change is answered. While this process's event
    transport is away, nothing is remembered (`listening`). A change made outside the
    app (raw SQL) is seen within CACHE_SECONDS."""

    CACHE_SECONDS, SIZE = 60.0, 10_000

    def __init__(self) -> None:
        self.tokens: dict[str, TokenClaims] = {}  # verified signatures; exp checked per use
        self.users: dict[int, dict[str, tuple[float, Caller]]] = {}
        self.enabled = False  # until the event transport is heard
        self.generation = 0  # counts forgets: a lookup they raced is not kept

    def forget(self, user_id: int | None = None) -> None:
        self.generation += 1
        if user_id is None:
            self.users.clear()
        else:
            self.users.pop(user_id, None)

    def changed(self, event: UserChanged) -> None:
        self.forget(event.user_id)

    def listening(self, event: Listening) -> None:
        self.forget()
        self.enabled = event.connected

    def claims(self, token: str) -> TokenClaims | None:
        claims = self.tokens.get(token)
        if claims is None and (claims := decode_token(token, "access")) is not None:
            if len(self.tokens) >= self.SIZE:
                self.tokens.clear()
            self.tokens[token] = claims
        return claims if claims is not None and claims.exp > time.time() else None

    async def get(
        self, token: str, connection: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    ) -> Caller | None:
        """The live user `token` speaks for; looked up on a `connection()` when it is not
        remembered. Logout, password change and deactivation bump `token_version`; a
        reused refresh token ends the login: both revoke the token."""
        if (claims := self.claims(token)) is None:
            return None
        hit = self.users.get(claims.sub, {}).get(token)
        if hit and self.enabled and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        generation = self.generation
        async with connection() as conn:
            user = await Users(conn).for_token(claims.sub, claims.sid)
        if user is None or user.token_version != claims.ver:
            return None
        granted = frozenset(claims.scopes) & frozenset(user.scopes)  # scopes taken since count
        caller = Caller.model_construct(
            **user._mapping, granted=granted, session_id=claims.sid, expires=claims.exp
        )
        if self.enabled and generation == self.generation:
            if len(self.users) >= self.SIZE:
                self.users.clear()
            mine = self.users.setdefault(user.id, {})
            if len(mine) >= 8:  # tokens of one user: refreshes make new ones
                mine.clear()
            mine[token] = (time.monotonic(), caller)
        return caller


callers = Callers()


async def start_session(users: Users, user: UserRow, scopes: list[str]) -> TokenPair:
    """A new login: its chain of refresh tokens ends REFRESH_TOKEN_EXPIRE_MINUTES from now."""
    jti = secrets.token_urlsafe(16)
    lifetime = timedelta(minutes=settings.refresh_token_expire_minutes)
    sid, ends = await users.open_session(user.id, jti, lifetime)
    return create_tokens(user.id, user.token_version, scopes, sid, jti, ends)


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
    granted = [s for s in claims.scopes if s in user.scopes]
    return create_tokens(user.id, user.token_version, granted, claims.sid, jti, ends)
