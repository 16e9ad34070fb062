from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import begin
from app.deps import AdminUser, ClientAddress, CurrentUser, IdCursor, Limit, ReadDb, WriteDb
from app.models.base import Id, Page
from app.models.user import Email, UserPrivate, UserPublic, UserRow, UserUpdate, UserUpdateMe
from app.realtime import publish
from app.repositories.mail import Tokens
from app.repositories.threads import Threads
from app.repositories.users import Users
from app.routers import errors, invalid
from app.security import hash_password, limited, succeeded, verify_password

router = APIRouter(prefix="/users", tags=["users"], responses=errors(400, 401, 403, 413))

NOT_FOUND = "User not found"


@router.get("/me", response_model=UserPrivate, summary="The caller's own profile")
async def read_me(user: CurrentUser) -> UserRow:
    return user


@router.patch(
    "/me",
    response_model=UserPrivate,
    summary="Change the caller's name, email or password",
    description="A new `password` needs the `current_password` (missing: 422, wrong: 403, "
    "counted as a failed login) and revokes every token issued before, as logout does.",
    responses=errors(409, 429),
)
async def update_me(user: CurrentUser, address: ClientAddress, body: UserUpdateMe) -> UserRow:
    changes = body.model_dump(exclude_unset=True, exclude={"password", "current_password"})
    if body.password is not None:
        if body.current_password is None:
            raise invalid("current_password", "Needed to change the password")
        await limited(user.email, address)
        ok, _ = await verify_password(body.current_password, user.hashed_password)
        if not ok:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Current password is wrong")
        changes |= {"hashed_password": await hash_password(body.password), "revoke": True}
    if changes.get("email", user.email) != user.email:
        changes["email_verified"] = False
    async with begin() as db:
        if body.password is not None:
            await succeeded(Users(db), user.email, address)
        changed = await Users(db).change(user, **changes)
        if changes.get("email_verified") is False:
            await Tokens(db).mail("verify", changed.id, changed.email)
        return changed


async def delete_account(db: AsyncConnection, user: UserRow) -> None:
    """Leave every thread as a leave would, then delete: no thread is kept alive, or owned,
    by a deleted user."""
    threads = Threads(db)
    for thread_id in await threads.ids_of(user.id):
        for event in await threads.leave(thread_id, user.id, user.id):
            publish(db, *event)
    await Users(db).change(user, deleted=True)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT, summary="Delete the caller's account")
async def delete_me(user: CurrentUser, db: WriteDb) -> None:
    await delete_account(db, user)


@router.get(
    "/lookup",
    response_model=UserPublic,
    summary="Find an active user by email",
    responses=errors(404),
)
async def lookup(_: CurrentUser, db: ReadDb, email: Email) -> UserRow:
    found = await Users(db).by_email(email)
    if found is None or not found.is_active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return found


@router.get(
    "/{user_id}",
    response_model=UserPrivate | UserPublic,
    summary="A user by id",
    description="UserPublic of an active user; an admin token sees UserPrivate of any "
    "user that is not deleted.",
    responses=errors(404),
)
async def read_user(user: CurrentUser, db: ReadDb, user_id: Id) -> UserPrivate | UserPublic:
    found = await Users(db).get(user_id)
    if "admin" in user.granted and found is not None:
        return UserPrivate.model_construct(**found.__dict__)
    if found is None or not found.is_active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return UserPublic.model_construct(id=found.id, full_name=found.full_name)


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


async def managed_user(admin: AdminUser, db: WriteDb, user_id: Id) -> UserRow:
    """The user an admin may change: not deleted, and not a fellow admin unless the
    caller is a superuser."""
    target = await Users(db).get(user_id)
    if target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    if {"admin", "superuser"} & set(target.scopes) and "superuser" not in admin.granted:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Only a superuser can change an admin")
    return target


ManagedUser = Annotated[UserRow, Depends(managed_user)]


async def keep_a_superuser(db: AsyncConnection, target: UserRow) -> None:
    """The last active superuser keeps `superuser`: the others are locked while we count."""
    if "superuser" in target.scopes and target.is_active:  # noqa: SIM102 (lock only then)
        if await Users(db).lock_superusers() == [target.id]:
            raise HTTPException(status.HTTP_409_CONFLICT, "The last active superuser stays one")


@router.patch(
    "/{user_id}",
    response_model=UserPrivate,
    summary="Change a user (admin)",
    description="Changing `scopes` needs a superuser token. Deactivating revokes the "
    "user's tokens. Nobody deactivates or demotes themselves here (403); the last active "
    "superuser stays one (409).",
    responses=errors(404, 409),
)
async def update_user(
    admin: AdminUser, db: WriteDb, target: ManagedUser, body: UserUpdate
) -> UserRow:
    changes = body.model_dump(exclude_unset=True)
    if "scopes" in changes:
        if "superuser" not in admin.granted:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Changing scopes needs a superuser")
        # Every active user holds `regular`.
        changes["scopes"] = [
            "regular",
            *(s for s in ("admin", "superuser") if s in changes["scopes"]),
        ]
    demoted = "superuser" not in changes.get("scopes", ["superuser"])
    deactivated = changes.get("is_active") is False
    if target.id == admin.id and (
        deactivated or not set(target.scopes) <= set(changes.get("scopes", target.scopes))
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Not on yourself: use /api/users/me")
    if demoted or deactivated:
        await keep_a_superuser(db, target)
    return await Users(db).change(target, **changes)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (admin)",
    description="Not yourself (403), not the last active superuser (409). The user leaves "
    "every thread first.",
    responses=errors(404, 409),
)
async def delete_user(admin: AdminUser, db: WriteDb, target: ManagedUser) -> None:
    if target.id == admin.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Not on yourself: use /api/users/me")
    await keep_a_superuser(db, target)
    await delete_account(db, target)
