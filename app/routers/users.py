from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError

from app.db import Id, SessionDep
from app.models.user import Email, User, UserPrivate, UserPublic, UserUpdate, UserUpdateMe
from app.repository import Page, Repository
from app.routers import Cursor, Limit, errors, invalid
from app.security import (
    AdminUser,
    Claims,
    CurrentUser,
    hash_password,
    token_has,
    verify_password,
)

router = APIRouter(prefix="/users", tags=["users"], responses=errors(400, 401, 403, 413))

NOT_FOUND = "User not found"
EMAIL_TAKEN = "A user with this email already exists"


async def find_by_email(session: SessionDep, email: str) -> User | None:
    users = Repository(session, User)
    return (await session.exec(users.select().where(User.email == email.lower()))).first()


async def save(session: SessionDep, user: User, changes: dict[str, Any]) -> User:
    """Create or update a user; a taken email is a 409, even when two requests race."""
    try:
        async with session.begin_nested():
            return await Repository(session, User).update(user, changes)
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, EMAIL_TAKEN) from None


@router.get("/me", response_model=UserPrivate, summary="The caller's own profile")
async def read_me(user: CurrentUser) -> User:
    return user


@router.patch(
    "/me",
    response_model=UserPrivate,
    summary="Change the caller's name, email or password",
    description="A new `password` needs the `current_password` (missing: 422, wrong: 403) "
    "and revokes every token issued before, as logout does.",
    responses=errors(409),
)
async def update_me(session: SessionDep, user: CurrentUser, body: UserUpdateMe) -> User:
    changes = body.model_dump(exclude_unset=True, exclude={"password", "current_password"})
    if body.password is not None:
        if body.current_password is None:
            raise invalid("current_password", "Needed to change the password")
        ok, _ = await verify_password(body.current_password, user.hashed_password)
        if not ok:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Current password is wrong")
        changes["hashed_password"] = await hash_password(body.password)
        changes["token_version"] = user.token_version + 1
    return await save(session, user, changes)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT, summary="Delete the caller's account")
async def delete_me(session: SessionDep, user: CurrentUser) -> None:
    await Repository(session, User).delete(user)


@router.get(
    "/lookup",
    response_model=UserPublic,
    summary="Find an active user by email",
    responses=errors(404),
)
async def lookup(session: SessionDep, _: CurrentUser, email: Email) -> User:
    found = await find_by_email(session, email)
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
async def read_user(
    session: SessionDep, user: CurrentUser, claims: Claims, user_id: Id
) -> UserPrivate | UserPublic:
    found = await Repository(session, User).get(user_id)
    if token_has(claims, user, "admin") and found is not None:
        return UserPrivate.model_validate(found)
    if found is None or not found.is_active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return UserPublic.model_validate(found)


@router.get("", response_model=Page[UserPrivate], summary="List users (admin)")
async def list_users(
    session: SessionDep,
    _: AdminUser,
    q: Annotated[str | None, Query(max_length=320, pattern=r"^[^\x00]*$")] = None,
    include_deleted: bool = False,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[User]:
    users = Repository(session, User)
    stmt = users.select(include_deleted=include_deleted)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(User.email.ilike(pattern, escape="\\"), User.full_name.ilike(pattern, escape="\\"))  # type: ignore[attr-defined]
        )
    return await users.page(stmt, limit=limit, cursor=cursor)


async def managed_user(session: SessionDep, admin: AdminUser, claims: Claims, user_id: Id) -> User:
    """The user an admin may change: not deleted, and not a fellow admin unless the
    caller is a superuser."""
    target = await Repository(session, User).get(user_id)
    if target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    if {"admin", "superuser"} & set(target.scopes) and not token_has(claims, admin, "superuser"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Only a superuser can change an admin")
    return target


ManagedUser = Annotated[User, Depends(managed_user)]


@router.patch(
    "/{user_id}",
    response_model=UserPrivate,
    summary="Change a user (admin)",
    description="Changing `scopes` needs a superuser token. Deactivating revokes the "
    "user's tokens.",
    responses=errors(404, 409),
)
async def update_user(
    session: SessionDep, admin: AdminUser, claims: Claims, target: ManagedUser, body: UserUpdate
) -> User:
    changes = body.model_dump(exclude_unset=True)
    if "scopes" in changes:
        if not token_has(claims, admin, "superuser"):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Changing scopes needs a superuser")
        # Every active user holds `regular`.
        changes["scopes"] = [
            "regular",
            *(s for s in ("admin", "superuser") if s in changes["scopes"]),
        ]
    if changes.get("is_active") is False:
        changes["token_version"] = target.token_version + 1
    return await save(session, target, changes)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (admin)",
    responses=errors(404),
)
async def delete_user(session: SessionDep, target: ManagedUser) -> None:
    await Repository(session, User).delete(target)
