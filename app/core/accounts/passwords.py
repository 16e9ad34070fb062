"""Passwords: Argon2id hashes, made and checked off the event loop in a bounded queue."""

import asyncio
import os
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from passlib.context import CryptContext
from pydantic import TypeAdapter, ValidationError

from app.core.accounts.models import Email
from app.core.errors import Unavailable
from app.core.settings import settings

T = TypeVar("T")

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


_email = TypeAdapter(Email)


def normalise_email(value: str) -> str | None:
    """As signup stores emails: its own type (surrounding spaces and a name around the
    address, "Ada <ada@example.com>", are dropped); None for what is no email."""
    try:
        return _email.validate_python(value)
    except ValidationError:
        return None
