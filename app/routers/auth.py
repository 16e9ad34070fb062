from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from pydantic import BaseModel, Field

from app.db import SessionDep, examples
from app.models.user import User, UserCreate, UserPrivate
from app.repository import Repository
from app.routers import errors
from app.routers.users import find_by_email, save
from app.security import (
    AnyScopeUser,
    TokenPair,
    create_tokens,
    decode_token,
    hash_password,
    login_limiter,
    unauthorized,
    user_for_token,
    verify_password,
)

router = APIRouter(prefix="/auth", tags=["auth"], responses=errors(400, 413))


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPrivate,
    summary="Create an account",
    responses=errors(409),
)
async def signup(session: SessionDep, body: UserCreate) -> User:
    user = User.model_validate(body, update={"hashed_password": await hash_password(body.password)})
    return await save(session, user, {})


class LoginForm(BaseModel):
    """OAuth2's password grant, as Swagger's Authorize dialog sends it."""

    model_config = examples(
        {"username": "ada@example.com", "password": "correct horse battery", "scope": "regular"}
    )

    grant_type: str | None = Field(default=None, pattern="^(password)?$")
    username: str = Field(max_length=320, description="The email")
    password: str = Field(max_length=128)
    scope: str = Field(default="", max_length=200, description="Space-separated scopes")
    client_id: str | None = None
    client_secret: str | None = None


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Log in (OAuth2 password flow)",
    description="`username` is the email. `scope` narrows the token to some of the "
    "user's scopes (space-separated); without it the token carries all of them.",
    responses=errors(401, 429),
)
async def login(
    request: Request, session: SessionDep, form: Annotated[LoginForm, Form()]
) -> TokenPair:
    email = form.username.strip().lower()
    address = request.client.host if request.client else "unknown"
    if wait := login_limiter.retry_after(email, address):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "Too many failed logins; try again later",
            headers={"Retry-After": str(wait)},
        )
    user = await find_by_email(session, email) if "\x00" not in email else None
    ok, new_hash = await verify_password(form.password, user.hashed_password if user else None)
    if not ok or user is None or not user.is_active:
        login_limiter.failed(email, address)
        raise unauthorized("Incorrect email or password")
    login_limiter.succeeded(email)
    if new_hash:  # the cost settings were raised since this hash was made
        user.hashed_password = new_hash
        session.add(user)
    requested = form.scope.split() or user.scopes
    return create_tokens(user, [s for s in requested if s in user.scopes])


class RefreshRequest(BaseModel):
    model_config = examples({"refresh_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."})

    refresh_token: str


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Trade a refresh token for a new token pair",
    responses=errors(401),
)
async def refresh(session: SessionDep, body: RefreshRequest) -> TokenPair:
    claims = decode_token(body.refresh_token, "refresh")
    user = await user_for_token(session, claims)
    return create_tokens(user, [s for s in claims.scopes if s in user.scopes])


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out everywhere",
    description="Revokes every access and refresh token of the caller issued before now.",
    responses=errors(401, 403),
)
async def logout(session: SessionDep, user: AnyScopeUser) -> None:
    await Repository(session, User).update(user, {"token_version": user.token_version + 1})
