"""Signing up, logging in and out, refreshing, resets and verification: each route hands
its request to app.core.accounts.service."""

from typing import Annotated

from fastapi import APIRouter, Form, Response, status
from pydantic import BaseModel, Field

from app.core.accounts import service
from app.core.accounts.models import Email, Password, UserCreate, UserPrivate, UserRow
from app.core.accounts.tokens import TokenPair
from app.core.accounts.users import Users
from app.core.deps import AnyScopeUser, ClientAddress, CurrentUser, WriteDb
from app.core.http import Route, errors
from app.core.models import NoNul, body_config

router = APIRouter(
    prefix="/auth", tags=["auth"], responses=errors(400, 408, 413, 503), route_class=Route
)


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPrivate,
    summary="Create an account",
    description="Limited per client address (SIGNUPS_PER_ADDRESS_PER_HOUR): past it, 429.",
    responses=errors(409, 429),
)
async def signup(body: UserCreate, address: ClientAddress) -> UserRow:
    return await service.sign_up(body, address)


class LoginForm(BaseModel):
    """OAuth2's password grant, as Swagger's Authorize dialog sends it."""

    model_config = body_config(
        {"username": "ada@example.com", "password": "correct horse battery", "scope": "regular"}
    )

    grant_type: str | None = Field(default=None, pattern="^(password)?$")
    username: Annotated[str, NoNul] = Field(max_length=320, description="The email")
    password: Annotated[str, NoNul] = Field(max_length=128)
    scope: str = Field(default="", max_length=200, description="Space-separated scopes")
    client_id: str | None = Field(default=None, max_length=200)
    client_secret: str | None = Field(default=None, max_length=200)


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Log in (OAuth2 password flow)",
    description="`username` is the email. `scope` narrows the token to some of the "
    "user's scopes (space-separated); without it the token carries all of them. Every "
    "attempt counts against the email and the client address before the password is "
    "checked; past the limits: 429.",
    responses=errors(401, 403, 429),
)
async def login(address: ClientAddress, form: Annotated[LoginForm, Form()]) -> TokenPair:
    return await service.log_in(form.username, form.password, form.scope, address)


class RefreshRequest(BaseModel):
    model_config = body_config({"refresh_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."})

    refresh_token: str = Field(max_length=4000)


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Trade a refresh token for a new token pair",
    description="Each refresh token works once. Presenting one again answers 401 and ends "
    "its login: every token descending from it stops working, its sockets are closed.",
    responses=errors(401),
)
async def refresh(body: RefreshRequest) -> TokenPair:
    return await service.refresh(body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out everywhere",
    description="Revokes every access and refresh token of the caller issued before now.",
    responses=errors(401, 403),
)
async def logout(user: AnyScopeUser, db: WriteDb) -> None:
    await Users(db).change(user.id, revoke=True)


class ResetRequest(BaseModel):
    model_config = body_config({"email": "ada@example.com"})

    email: Email


Token = Annotated[str, Field(description="The token from the mail")]


class ResetConfirm(BaseModel):
    model_config = body_config({"token": "token from the mail", "password": "a new passphrase"})

    token: Token
    password: Password


class VerifyRequest(BaseModel):
    model_config = body_config({"token": "token from the mail"})

    token: Token


class Accepted(BaseModel):
    detail: str


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Mail a password reset token",
    description="The same answer whether or not the email is registered; an active user "
    "with it gets a mail. Counted per email and client address: past the limits, 429.",
    responses=errors(429),
)
async def request_reset(body: ResetRequest, address: ClientAddress) -> Accepted:
    await service.request_reset(body.email, address)
    return Accepted(detail="If the email is registered, a reset mail is on its way")


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with a reset token",
    description="Revokes every earlier token of the user, and verifies the email the token "
    "was mailed to. A token works once, only the newest one requested, only while the "
    "user's password and email stay as they were, until PASSWORD_RESET_EXPIRE_MINUTES.",
)
async def confirm_reset(body: ResetConfirm) -> None:
    await service.confirm_reset(body.token, body.password)


@router.post(
    "/verify-email",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Confirm an email address with the mailed token",
    description="For the account's email, or for a pending email change: the pending "
    "address then becomes the email (409 if another account holds it by now).",
    responses=errors(409),
)
async def verify_email(body: VerifyRequest, db: WriteDb) -> None:
    await service.verify_email(db, body.token)


@router.post(
    "/verify-email/resend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    summary="Mail a new verification token",
    description="204 and no mail when the email is verified already. Limited to "
    "MAILS_PER_USER_PER_HOUR: past it, 429.",
    responses={204: {"description": "Already verified"}, **errors(401, 403, 429)},
)
async def resend_verification(user: CurrentUser, db: WriteDb) -> Accepted | Response:
    if not await service.resend_verification(db, user):
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Accepted(detail="A verification mail is on its way")
