from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Response, status
from pydantic import BaseModel, Field

from app.db import begin
from app.deps import AnyScopeUser, ClientAddress, CurrentUser, WriteDb, unauthorized
from app.models.base import body_config
from app.models.user import SCOPES, Email, Password, UserCreate, UserPrivate, UserRow
from app.repositories.mail import Outbox, Tokens
from app.repositories.users import Users
from app.routers import errors
from app.security import (
    count_attempt,
    hash_password,
    limited,
    normalise_email,
    succeeded,
    verify_password,
)
from app.settings import settings
from app.tokens import TokenPair, decode_token, refresh_session, start_session

router = APIRouter(prefix="/auth", tags=["auth"], responses=errors(400, 413, 503))


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPrivate,
    summary="Create an account",
    responses=errors(409),
)
async def signup(body: UserCreate) -> UserRow:
    hashed = await hash_password(body.password)  # before the transaction: no connection held
    async with begin() as db:
        user = await Users(db).create(
            email=body.email, full_name=body.full_name, hashed_password=hashed
        )
        await Tokens(db).mail("verify", user.id, user.email)
        return user


class LoginForm(BaseModel):
    """OAuth2's password grant, as Swagger's Authorize dialog sends it."""

    model_config = body_config(
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
    "user's scopes (space-separated); without it the token carries all of them. Every "
    "attempt counts against the email and the client address before the password is "
    "checked; past the limits: 429.",
    responses=errors(401, 403, 429),
)
async def login(address: ClientAddress, form: Annotated[LoginForm, Form()]) -> TokenPair:
    requested = form.scope.split()
    if unknown := set(requested) - SCOPES.keys():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Unknown scope: {min(unknown)}")
    # What is no email is counted (and refused) under its own text, less what no row holds.
    email = normalise_email(form.username) or form.username.strip().lower().replace("\x00", "")
    # Counted (and committed) before the check; no connection is held while it waits.
    async with begin() as db:
        await count_attempt(Users(db), email, address)
        user = await Users(db).by_email(email)
    ok, new_hash = await verify_password(form.password, user.hashed_password if user else None)
    if not ok or user is None or not user.is_active:
        raise unauthorized("Incorrect email or password")
    if settings.email_verification_required and not user.email_verified:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Email not verified")
    async with begin() as db:
        users = Users(db)
        await succeeded(users, email, address)
        if new_hash:  # the cost settings were raised since this hash was made
            await users.update(user.id, hashed_password=new_hash)
        granted = [s for s in requested or user.scopes if s in user.scopes]
        return await start_session(users, user, granted)


class RefreshRequest(BaseModel):
    model_config = body_config({"refresh_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."})

    refresh_token: str = Field(max_length=4000)


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Trade a refresh token for a new token pair",
    description="Each refresh token works once. Presenting one again answers 401 and ends "
    "its login: every token descending from it stops working.",
    responses=errors(401),
)
async def refresh(body: RefreshRequest) -> TokenPair:
    claims = decode_token(body.refresh_token, "refresh")
    async with begin() as db:  # committed even when it answers 401: a reuse ends the chain
        pair = None if claims is None else await refresh_session(Users(db), claims)
    if pair is None:
        raise unauthorized()
    return pair


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out everywhere",
    description="Revokes every access and refresh token of the caller issued before now.",
    responses=errors(401, 403),
)
async def logout(user: AnyScopeUser, db: WriteDb) -> None:
    await Users(db).change(user, revoke=True)


class ResetRequest(BaseModel):
    model_config = body_config({"email": "ada@example.com"})

    email: Email


class ResetConfirm(BaseModel):
    model_config = body_config({"token": "token from the mail", "password": "a new passphrase"})

    token: str
    password: Password


class VerifyRequest(BaseModel):
    model_config = body_config({"token": "token from the mail"})

    token: str


BAD_TOKEN = "Invalid or expired token"


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Mail a password reset token",
    description="The same answer whether or not the email is registered; an active user "
    "with it gets a mail. Counted per email and client address: past the limits, 429.",
    responses=errors(429),
)
async def request_reset(body: ResetRequest, address: ClientAddress) -> dict[str, str]:
    await limited(f"reset:{body.email}", address)
    async with begin() as db:  # the same row for every email: the user is looked up later
        await Outbox(db).queue("reset-request", body.email)
    return {"detail": "If the email is registered, a reset mail is on its way"}


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with a reset token",
    description="Revokes every earlier token of the user, and verifies the email the token "
    "was mailed to. A token works once, only the newest one requested, until "
    "PASSWORD_RESET_EXPIRE_MINUTES.",
)
async def confirm_reset(body: ResetConfirm) -> None:
    hashed = await hash_password(body.password)
    async with begin() as db:
        token = await Tokens(db).redeem("reset", body.token)
        user = None if token is None else await Users(db).get(token.user_id)
        if token is None or user is None or not user.is_active:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, BAD_TOKEN)
        # The token came by mail to this address: that verifies it, so a user whose
        # verification mail was lost is not locked out under EMAIL_VERIFICATION_REQUIRED.
        verified = user.email_verified or token.email == user.email
        await Users(db).change(user, hashed_password=hashed, revoke=True, email_verified=verified)


@router.post(
    "/verify-email",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Confirm an email address with the mailed token",
)
async def verify_email(body: VerifyRequest) -> None:
    async with begin() as db:
        token = await Tokens(db).redeem("verify", body.token)
        user = None if token is None else await Users(db).get(token.user_id)
        if token is None or user is None or user.email != token.email:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, BAD_TOKEN)
        await Users(db).change(user, email_verified=True)


@router.post(
    "/verify-email/resend",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Mail a new verification token",
    description="204 and no mail when the email is verified already.",
    responses={204: {"description": "Already verified"}, **errors(401, 403)},
)
async def resend_verification(user: CurrentUser, db: WriteDb) -> Response:
    if user.email_verified:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    await Tokens(db).mail("verify", user.id, user.email)
    return Response(status_code=status.HTTP_202_ACCEPTED)
