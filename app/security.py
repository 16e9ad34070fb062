"""Passwords and login limits, and the first superuser."""

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any, TypeVar

from email_validator import EmailNotValidError, validate_email
from fastapi.concurrency import run_in_threadpool
from passlib.context import CryptContext

from app.db import begin, connect
from app.errors import Conflict, TooManyAttempts, Unavailable
from app.models.base import utcnow
from app.models.user import SCOPES
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
    async with connect() as conn:
        user = await Users(conn).by_email(email)
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
