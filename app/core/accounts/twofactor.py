"""Two-factor login: TOTP codes (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of clock
drift either way) and single-use recovery codes. The TOTP secret is stored encrypted, the
recovery codes only as keyed hashes. Every code is accepted by the one statement that
uses it up, so two requests racing with one code, on any processes, cannot both pass."""

import base64
import hashlib
import hmac
import secrets
import time
from functools import cache

import pyotp
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel
from sqlalchemy import bindparam, delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import RecoveryCode, UsedStep, UserRow
from app.core.accounts.users import Users
from app.core.errors import Conflict, DomainError
from app.core.models import table
from app.core.repository import upsert
from app.core.settings import settings

STEP_SECONDS, DRIFT = 30, 1
# Ten recovery codes of ten base32 characters: 50 random bits each, shown as xxxxx-xxxxx.
RECOVERY_CODES, CODE_LENGTH = 10, 10
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
NO_SETUP = "No pending two-factor setup"

codes, steps = table(RecoveryCode), table(UsedStep)


class TwoFactorSetup(BaseModel):
    secret: str
    otpauth_url: str


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


@cache
def _keys(secret_key: str) -> tuple[Fernet, bytes]:
    """A key of its own for each use, derived from SECRET_KEY by HKDF-SHA256 with a fixed
    label, so none of them is the key that signs tokens. A new SECRET_KEY makes stored
    secrets and recovery codes unreadable: a superuser then turns those users' two-factor
    login off (PATCH /api/users/{id}) and they set it up again."""

    def derive(label: bytes) -> bytes:
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label)
        return kdf.derive(secret_key.encode())

    fernet = Fernet(base64.urlsafe_b64encode(derive(b"fastapi-boilerplate totp-secret")))
    return fernet, derive(b"fastapi-boilerplate recovery-code")


def seal(secret: str) -> str:
    return _keys(settings.secret_key)[0].encrypt(secret.encode()).decode()


def unseal(sealed: str | None) -> str | None:
    if sealed is None:
        return None
    try:
        return _keys(settings.secret_key)[0].decrypt(sealed).decode()
    except InvalidToken:  # sealed under another SECRET_KEY
        return None


def digest(user_id: int, code: str) -> str:
    """HMAC-SHA256 under a key derived from SECRET_KEY, not Argon2: a code holds 50 random
    bits, so without the key a stolen table cannot be searched at all, and with it each
    code still takes ~2^49 guesses; a slow hash would only put a hashing slot in front of
    every login that uses one. The user's id goes in: one code of two users hashes apart."""
    key = _keys(settings.secret_key)[1]
    return hmac.new(key, f"{user_id}:{code}".encode(), hashlib.sha256).hexdigest()


def matching_step(secret: str, code: str) -> int | None:
    """The newest 30 s step within DRIFT of now whose code `code` is, or None."""
    if not (len(code) == 6 and code.isascii() and code.isdigit()):  # "١٢٣٤٥٦" is digits too
        return None
    totp, now = pyotp.TOTP(secret), int(time.time()) // STEP_SECONDS
    found = None
    for step in range(now - DRIFT, now + DRIFT + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def _plain(code: str) -> str:
    """As typed: spaces and dashes dropped, any case (recovery codes are shown lower case)."""
    return "".join(code.split()).replace("-", "").lower()


class TwoFactor:
    """A user's second factor, on one connection: setting it up, turning it on and off,
    and using a code up."""

    # Accepts a step only if it was never accepted for the user: a replay (even within its
    # 30 s, even on another process) finds its row there, or waits for it to commit.
    _accept_step = (
        upsert(steps)
        .values(user_id=bindparam("b_id"), step=bindparam("b_step"))
        .on_conflict_do_nothing()
        .returning(steps.c.user_id)
    )
    _use_code = (
        delete(codes)
        .where(codes.c.user_id == bindparam("b_id"), codes.c.code_hash == bindparam("b_hash"))
        .returning(codes.c.user_id)
    )

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.users = Users(conn)

    async def set_up(self, user_id: int) -> TwoFactorSetup:
        """A new secret, pending until a code of it comes back (`enable`); it replaces a
        pending one. 409 once two-factor login is on."""
        user = await self.users.lock(user_id)
        if user.two_factor_enabled:
            raise Conflict("Two-factor login is already on")
        secret = pyotp.random_base32()  # 160 bits, as RFC 4226 recommends
        await self.users.change(user.id, totp_secret=seal(secret))
        totp = pyotp.TOTP(secret)
        uri = totp.provisioning_uri(name=user.email, issuer_name=settings.project_name)
        return TwoFactorSetup(secret=secret, otpauth_url=uri)

    async def enable(self, user_id: int, code: str) -> RecoveryCodes:
        """On, with a code of the pending secret; the new recovery codes, shown this once."""
        user = await self.users.lock(user_id)  # a setup racing this one waits
        if user.two_factor_enabled or user.totp_secret is None:
            raise DomainError(NO_SETUP)
        if not await self._totp(user, _plain(code)):
            raise DomainError("Invalid two-factor code")
        await self.users.change(user.id, two_factor_enabled=True)
        await self.conn.execute(delete(codes).where(codes.c.user_id == user.id))
        plain = [
            "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
            for _ in range(RECOVERY_CODES)
        ]
        rows = [{"user_id": user.id, "code_hash": digest(user.id, c)} for c in plain]
        await self.conn.execute(insert(codes), rows)
        return RecoveryCodes(recovery_codes=[f"{c[:5]}-{c[5:]}" for c in plain])

    async def accept(self, user: UserRow, code: str) -> bool:
        """Use up `code` of a user whose two-factor login is on: a TOTP code of a step
        never accepted before, or an unused recovery code. False, with nothing
        used up, for anything else."""
        if not user.two_factor_enabled:
            return False
        code = _plain(code)
        if len(code) == 6:
            return await self._totp(user, code)
        if len(code) != CODE_LENGTH:
            return False
        params = {"b_id": user.id, "b_hash": digest(user.id, code)}
        return (await self.conn.execute(self._use_code, params)).first() is not None

    async def _totp(self, user: UserRow, code: str) -> bool:
        secret = unseal(user.totp_secret)
        step = None if secret is None else matching_step(secret, code)
        if step is None:
            return False
        params = {"b_id": user.id, "b_step": step}
        return (await self.conn.execute(self._accept_step, params)).first() is not None

    async def turn_off(self, user_id: int) -> UserRow:
        """Off: the secret and the recovery codes are deleted. The accepted steps stay: a
        step once accepted for a user never works again, whatever its secret."""
        await self.conn.execute(delete(codes).where(codes.c.user_id == user_id))
        return await self.users.change(user_id, two_factor_enabled=False, totp_secret=None)


async def prune(conn: AsyncConnection) -> None:
    """Accepted steps that have left every process's window: the table stays bounded.
    Kept a few minutes more than needed, for clocks that disagree a little."""
    oldest = int(time.time()) // STEP_SECONDS - DRIFT - 10
    await conn.execute(delete(steps).where(steps.c.step < oldest))
