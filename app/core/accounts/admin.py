"""Who may change or delete whom: admins and superusers, the last superuser, and deleting
accounts; plus the first superuser at start-up."""

import logging

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import SCOPES, UserPrivate, UserPublic, UserRow, UserUpdate
from app.core.accounts.passwords import hash_password, normalise_email, verify_password
from app.core.accounts.tokens import Caller
from app.core.accounts.twofactor import TwoFactor
from app.core.accounts.users import MailTokens, Users
from app.core.db import begin, connect
from app.core.errors import Conflict, Forbidden, NotFound
from app.core.settings import settings

log = logging.getLogger("app")
NOT_YOURSELF = "Not on yourself: use /api/users/me"


async def read_user(
    conn: AsyncConnection, caller: Caller, user_id: int
) -> UserPrivate | UserPublic:
    """UserPublic of an active user; an admin sees UserPrivate of any live user."""
    found = await Users(conn).get(user_id)
    if "admin" in caller.granted and found is not None:
        return UserPrivate.model_construct(**found.__dict__)
    if found is None or not found.is_active:
        raise NotFound("User not found")
    return UserPublic.model_construct(id=found.id, full_name=found.full_name)


async def lookup(conn: AsyncConnection, email: str) -> UserRow:
    found = await Users(conn).by_email(email)
    if found is None or not found.is_active:
        raise NotFound("User not found")
    return found


async def _managed(users: Users, admin: Caller, user_id: int) -> tuple[UserRow, list[int], Caller]:
    """The target locked (after the superusers, always in that order: no deadlock), the
    active superusers, and the caller as it stands now. A fellow admin is changed only by
    a superuser."""
    superusers = await users.lock_superusers()
    if admin.id not in superusers:
        # The token was checked before this request waited for the superusers' locks: a
        # demotion, deactivation or deletion of its user that committed meanwhile wins.
        admin = admin.model_copy(update={"granted": admin.granted - {"superuser"}})
    target = await users.lock(user_id)
    if {"admin", "superuser"} & set(target.scopes) and "superuser" not in admin.granted:
        raise Forbidden("Only a superuser can change an admin")
    return target, superusers, admin


def _keep_a_superuser(target: UserRow, superusers: list[int]) -> None:
    if superusers == [target.id]:
        raise Conflict("The last active superuser stays one")


async def update_user(
    conn: AsyncConnection, admin: Caller, user_id: int, body: UserUpdate
) -> UserRow:
    users = Users(conn)
    target, superusers, admin = await _managed(users, admin, user_id)
    changes = body.model_dump(exclude_unset=True)
    # Only `false` passes validation: for a user who lost both device and recovery codes.
    two_factor_off = changes.pop("two_factor_enabled", None) is False
    if two_factor_off and "superuser" not in admin.granted:
        raise Forbidden("Turning two-factor login off needs a superuser")
    if "scopes" in changes:
        if "superuser" not in admin.granted:
            raise Forbidden("Changing scopes needs a superuser")
        # Every active user holds `regular`.
        changes["scopes"] = [
            "regular",
            *(s for s in ("admin", "superuser") if s in changes["scopes"]),
        ]
    demoted = "superuser" not in changes.get("scopes", ["superuser"])
    deactivated = changes.get("is_active") is False
    kept = set(changes.get("scopes", target.scopes))
    new_email = changes.get("email", target.email) != target.email
    # On oneself, also nothing /api/users/me asks the password for: one stolen token must
    # not turn the second factor off and move the account to its thief's address.
    locks_out = deactivated or not set(target.scopes) <= kept
    if target.id == admin.id and (locks_out or new_email or two_factor_off):
        raise Forbidden(NOT_YOURSELF)
    if (demoted or deactivated) and target.id in superusers:
        _keep_a_superuser(target, superusers)
    if new_email:
        # At once, as an admin's act, but unverified until the new address answers.
        changes |= {"email_verified": False, "pending_email": None}
        await MailTokens(conn).void(target.id, "reset")
        await MailTokens(conn).mail("verify", target.id, changes["email"])
    if two_factor_off:
        await TwoFactor(conn).turn_off(target.id)
    return await users.change(target.id, **changes)


async def delete_user(conn: AsyncConnection, admin: Caller, user_id: int) -> None:
    users = Users(conn)
    target, superusers, admin = await _managed(users, admin, user_id)
    if target.id == admin.id:
        raise Forbidden(NOT_YOURSELF)
    if target.id in superusers:
        _keep_a_superuser(target, superusers)
    await users.delete(target.id)


async def delete_me(conn: AsyncConnection, caller: Caller) -> None:
    users = Users(conn)
    superusers = await users.lock_superusers()
    me = await users.lock(caller.id)
    if me.id in superusers:
        _keep_a_superuser(me, superusers)
    await users.delete(me.id)


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
                await users.change(user.id, scopes=list(SCOPES), is_active=True)
    except Conflict:
        pass  # another process starting at the same time created it
