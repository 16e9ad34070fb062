"""Signing up, logging in and out, refreshing, resets, verification and two-factor login:
each route hands its request to app.core.accounts.service (or .twofactor)."""

from typing import Annotated

from fastapi import APIRouter, Form, Response, status
from pydantic import BaseModel, Field

from app.core.accounts import service
from app.core.accounts.models import Email, Password, UserCreate, UserPrivate, UserRow
from app.core.accounts.tokens import TokenPair
from app.core.accounts.twofactor import RecoveryCodes, TwoFactor, TwoFactorSetup
from app.core.accounts.users import Users
from app.core.deps import AnyScopeUser, ClientAddress, CurrentUser, UserNoDb, WriteDb
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
    # An extra parameter of the token request, as OAuth2 allows (RFC 6749, 4.3.2).
    otp: Annotated[str, NoNul] | None = Field(
        default=None,
        max_length=64,
        description="With two-factor login on: a current TOTP code or an unused recovery code",
    )


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Log in (OAuth2 password flow)",
    description="`username` is the email. `scope` narrows the token to some of the "
    "user's scopes (space-separated); without it the token carries all of them. Every "
    "attempt counts against the email and the client address before the password is "
    "checked; past the limits: 429.\n\n"
    "**Two-factor login**: a user who turned it on (/api/auth/2fa/enable) sends one more "
    "form field, `otp`: the 6-digit code of the authenticator app (each code works once) "
    "or an unused recovery code. Without it, a correct password answers 401 `Two-factor "
    "code required`; a wrong code, 401 `Invalid two-factor code` (a failed login). "
    "Swagger's Authorize dialog has no such field: authorize there as a user without "
    "two-factor login, or try this route here with `otp` and paste the `access_token`.",
    responses=errors(401, 403, 429),
)
async def login(address: ClientAddress, form: Annotated[LoginForm, Form()]) -> TokenPair:
    return await service.log_in(form.username, form.password, form.scope, address, form.otp)


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


class SetupRequest(BaseModel):
    model_config = body_config({"password": "correct horse battery"})

    password: str = Field(max_length=128, description="The caller's password")


Code = Annotated[
    str,
    NoNul,
    Field(max_length=64, description="A 6-digit code of the authenticator app, or a recovery code"),
]


class EnableRequest(BaseModel):
    model_config = body_config({"code": "123456"})

    code: Code


class DisableRequest(BaseModel):
    model_config = body_config({"password": "correct horse battery", "code": "123456"})

    password: str = Field(max_length=128, description="The caller's password")
    code: Code


@router.post(
    "/2fa/setup",
    response_model=TwoFactorSetup,
    summary="Start setting up two-factor login",
    description="A new TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s) and its `otpauth://` "
    "URI for an authenticator app (show it as a QR code); shown this once. Needs the "
    "caller's password (wrong: 403, counted as a failed login). Replaces an earlier setup "
    "not yet enabled; 409 once two-factor login is on.",
    responses=errors(401, 403, 409, 429),
)
async def set_up_two_factor(
    user: UserNoDb, address: ClientAddress, body: SetupRequest
) -> TwoFactorSetup:
    return await service.set_up_two_factor(user, body.password, address)


@router.post(
    "/2fa/enable",
    response_model=RecoveryCodes,
    summary="Turn two-factor login on",
    description="With a current code of the pending secret (wrong, or no setup pending: "
    "400). Answers 10 single-use recovery codes, shown this once: each logs in once in "
    "place of a code, for a user without the device.",
    responses=errors(401, 403),
)
async def enable_two_factor(user: CurrentUser, db: WriteDb, body: EnableRequest) -> RecoveryCodes:
    return await TwoFactor(db).enable(user.id, body.code)


@router.post(
    "/2fa/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Turn two-factor login off",
    description="Needs the password and a current code or an unused recovery code (either "
    "wrong: 403, counted as a failed login). Deletes the secret and the recovery codes.",
    responses=errors(401, 403, 429),
)
async def disable_two_factor(user: UserNoDb, address: ClientAddress, body: DisableRequest) -> None:
    await service.disable_two_factor(user, body.password, body.code, address)
