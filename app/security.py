"""Passwords, tokens, the current user and its scopes, and the failed-login limit."""

import asyncio
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, HTTPException, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from jose import JWTError, jwt
from passlib.context import CryptContext
from pydantic import BaseModel, ValidationError

from app.db import SessionDep, utcnow
from app.models.user import SCOPES, User
from app.repository import Repository
from app.settings import settings

ALGORITHM = "HS256"
T = TypeVar("T")

pwd_context = CryptContext(
    schemes=["argon2"],
    argon2__type="ID",
    argon2__memory_cost=settings.argon2_memory_kib,
    argon2__rounds=settings.argon2_time_cost,
    argon2__parallelism=settings.argon2_parallelism,
)

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token", scopes=SCOPES)


# Argon2 takes tens of milliseconds of CPU and 19 MiB: run it in a thread (argon2-cffi
# releases the GIL), never on the event loop, and a core's worth at a time at most, so a
# burst of logins leaves a core to everyone else and memory stays bounded.
_hash_slots = asyncio.Semaphore(max(1, (os.cpu_count() or 2) - 1))


async def _in_hash_slot(fn: Callable[..., T], *args: Any) -> T:
    async with _hash_slots:
        return await run_in_threadpool(fn, *args)


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


class TokenClaims(BaseModel):
    sub: int
    ver: int
    type: Literal["access", "refresh"]
    scope: str = ""
    exp: int

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str
    scope: str


def create_tokens(user: User, scopes: list[str]) -> TokenPair:
    scope = " ".join(s for s in SCOPES if s in scopes)  # canonical order

    def token(kind: str, lifetime: timedelta) -> str:
        claims = {
            "sub": str(user.id),
            "ver": user.token_version,
            "type": kind,
            "scope": scope,
            "iat": utcnow(),
            "exp": utcnow() + lifetime,
        }
        return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)

    access = timedelta(minutes=settings.access_token_expire_minutes)
    return TokenPair(
        access_token=token("access", access),
        expires_in=int(access.total_seconds()),
        refresh_token=token("refresh", timedelta(minutes=settings.refresh_token_expire_minutes)),
        scope=scope,
    )


def unauthorized(detail: str = "Could not validate credentials") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def decode_token(token: str, kind: Literal["access", "refresh"]) -> TokenClaims:
    try:
        # algorithms pinned: the token's own header is never trusted.
        payload: dict[str, Any] = jwt.decode(token, settings.secret_key, algorithms=[ALGORITHM])
        claims = TokenClaims.model_validate(payload)
    except (JWTError, ValidationError) as exc:
        raise unauthorized() from exc
    if claims.type != kind:  # an access token is no refresh token, and the reverse
        raise unauthorized()
    return claims


async def user_for_token(session: SessionDep, claims: TokenClaims) -> User:
    """The live user a token speaks for; logout, password change and deactivation bump
    `token_version`, which revokes every token issued before."""
    user = await Repository(session, User).get(claims.sub)
    if user is None or not user.is_active or user.token_version != claims.ver:
        raise unauthorized()
    return user


async def access_claims(token: Annotated[str, Depends(oauth2_scheme)]) -> TokenClaims:
    return decode_token(token, "access")


Claims = Annotated[TokenClaims, Depends(access_claims)]


async def get_current_user(
    security_scopes: SecurityScopes, session: SessionDep, claims: Claims
) -> User:
    user = await user_for_token(session, claims)
    granted = set(claims.scopes) & set(user.scopes)  # scopes taken away since still count
    if not set(security_scopes.scopes) <= granted:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "Not enough permissions",
            headers={"WWW-Authenticate": f'Bearer scope="{security_scopes.scope_str}"'},
        )
    return user


AnyScopeUser = Annotated[User, Security(get_current_user)]
CurrentUser = Annotated[User, Security(get_current_user, scopes=["regular"])]
AdminUser = Annotated[User, Security(get_current_user, scopes=["admin"])]


def token_has(claims: TokenClaims, user: User, scope: str) -> bool:
    return scope in claims.scopes and scope in user.scopes


class LoginLimiter:
    """Failed logins per email and per client address in a sliding window.

    In memory, so each server process counts on its own: with N processes an attacker
    gets at most N times the allowance, which still stops guessing at scale.
    """

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self.failures[key]
        while times and times[0] <= now - settings.login_failure_window_seconds:
            times.popleft()
        return times

    def retry_after(self, email: str, address: str) -> int | None:
        """Seconds to wait if either limit is reached, else None."""
        now = time.monotonic()
        for key, allowed in (
            (f"email:{email}", settings.login_failures_per_email),
            (f"addr:{address}", settings.login_failures_per_address),
        ):
            times = self._recent(key, now)
            if len(times) >= allowed:
                return max(
                    1, int(times[-allowed] + settings.login_failure_window_seconds - now) + 1
                )
        return None

    def failed(self, email: str, address: str) -> None:
        now = time.monotonic()
        if len(self.failures) > 100_000:  # forget idle keys so memory stays bounded
            for key in [k for k, v in self.failures.items() if not self._recent(k, now)]:
                del self.failures[key]
        self.failures[f"email:{email}"].append(now)
        self.failures[f"addr:{address}"].append(now)

    def succeeded(self, email: str) -> None:
        self.failures.pop(f"email:{email}", None)


login_limiter = LoginLimiter()
