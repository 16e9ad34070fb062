"""Profiles, finding others, and managing users: each route hands its request to the
account rules (app.core.accounts.service and .admin)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.core.accounts import admin, service
from app.core.accounts.models import (
    Email,
    UserPrivate,
    UserPublic,
    UserRow,
    UserUpdate,
    UserUpdateMe,
)
from app.core.accounts.tokens import Caller
from app.core.accounts.users import Users
from app.core.deps import (
    AdminUser,
    ClientAddress,
    CurrentUser,
    IdCursor,
    Limit,
    ReadDb,
    UserNoDb,
    WriteDb,
)
from app.core.http import Route, errors
from app.core.models import Id, Page

router = APIRouter(
    prefix="/users", tags=["users"], responses=errors(400, 401, 403, 408, 413), route_class=Route
)


@router.get("/me", response_model=UserPrivate, summary="The caller's own profile")
async def read_me(user: CurrentUser) -> Caller:
    return user


@router.patch(
    "/me",
    response_model=UserPrivate,
    summary="Change the caller's name, email or password",
    description="A new `password` or `email` needs the `current_password` (missing: 422, "
    "wrong: 403, counted as a failed login). A new password revokes every token issued "
    "before, as logout does. A new email is `pending_email` until the token mailed to it "
    "is posted to /api/auth/verify-email; the old address is told. Email mail is limited "
    "to MAILS_PER_USER_PER_HOUR (429).",
    responses=errors(409, 429),
)
async def update_me(user: UserNoDb, address: ClientAddress, body: UserUpdateMe) -> UserPrivate:
    return await service.change_me(user, body, address)


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete the caller's account",
    description="Leaves every thread first. The last active superuser cannot (409).",
    responses=errors(409),
)
async def delete_me(user: CurrentUser, db: WriteDb) -> None:
    await admin.delete_me(db, user)


@router.get(
    "/lookup",
    response_model=UserPublic,
    summary="Find an active user by email",
    responses=errors(404),
)
async def lookup(_: CurrentUser, db: ReadDb, email: Email) -> UserRow:
    return await admin.lookup(db, email)


@router.get(
    "/{user_id}",
    response_model=UserPrivate | UserPublic,
    summary="A user by id",
    description="UserPublic of an active user; an admin token sees UserPrivate of any "
    "user that is not deleted.",
    responses=errors(404),
)
async def read_user(user: CurrentUser, db: ReadDb, user_id: Id) -> UserPrivate | UserPublic:
    return await admin.read_user(db, user, user_id)


@router.get("", response_model=Page[UserPrivate], summary="List users (admin)")
async def list_users(
    _: AdminUser,
    db: ReadDb,
    q: Annotated[str | None, Query(max_length=320, pattern=r"^[^\x00]*$")] = None,
    include_deleted: bool = False,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> Page[UserRow]:
    return await Users(db).search(q, include_deleted, limit, cursor)


@router.patch(
    "/{user_id}",
    response_model=UserPrivate,
    summary="Change a user (admin)",
    description="Changing `scopes` needs a superuser token, so does changing an admin. "
    "Deactivating revokes the user's tokens. A new `email` applies at once, unverified, "
    "and is mailed a verification. Nobody deactivates or demotes themselves here, nor "
    "changes their own email or turns their own two-factor login off (403); "
    "the last active superuser stays one (409).",
    responses=errors(404, 409),
)
async def update_user(caller: AdminUser, db: WriteDb, user_id: Id, body: UserUpdate) -> UserRow:
    return await admin.update_user(db, caller, user_id, body)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (admin)",
    description="Not yourself (403), not the last active superuser (409). The user leaves "
    "every thread first.",
    responses=errors(404, 409),
)
async def delete_user(caller: AdminUser, db: WriteDb, user_id: Id) -> None:
    await admin.delete_user(db, caller, user_id)
