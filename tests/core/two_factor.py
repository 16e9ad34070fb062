"""What the two-factor tests share: turning it on for a user, and TOTP codes of a chosen
30 s step, computed with pyotp from the secret the setup answered."""

import asyncio
import time
from dataclasses import dataclass

import pyotp
from httpx import AsyncClient, Response

from tests.helpers import PASSWORD, User

STEP = 30


async def steady_step(margin: float = 6) -> int:
    """The current 30 s step, with at least `margin` seconds of it left, so the codes a test
    computes from it mean the same to the server a moment later."""
    if STEP - time.time() % STEP < margin:
        await asyncio.sleep(STEP - time.time() % STEP + 0.05)
    return int(time.time()) // STEP


@dataclass
class Factor:
    secret: str
    recovery_codes: list[str]
    step: int  # the step whose code enabled it: codes of later steps work, once each

    def code(self, offset: int = 1) -> str:
        """The code of the step `offset` steps after the one that enabled it."""
        return pyotp.TOTP(self.secret).generate_otp(self.step + offset)


async def set_up(client: AsyncClient, user: User) -> str:
    r = await client.post("/api/auth/2fa/setup", json={"password": PASSWORD}, headers=user.headers)
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def turn_on(client: AsyncClient, user: User, offset: int = -1) -> Factor:
    """Two-factor login on for `user`, enabled with the code of the step `offset` from now
    (by default the one before: the codes of now and of the next step are left)."""
    secret = await set_up(client, user)
    step = await steady_step() + offset
    code = pyotp.TOTP(secret).generate_otp(step)
    r = await client.post("/api/auth/2fa/enable", json={"code": code}, headers=user.headers)
    assert r.status_code == 200, r.text
    return Factor(secret, r.json()["recovery_codes"], step)


async def log_in(
    client: AsyncClient, email: str, otp: str | None = None, password: str = PASSWORD
) -> Response:
    form = {"username": email, "password": password}
    if otp is not None:
        form["otp"] = otp
    return await client.post("/api/auth/token", data=form)


REQUIRED = {"detail": "Two-factor code required"}
INVALID = {"detail": "Invalid two-factor code"}
WRONG_PASSWORD = {"detail": "Incorrect email or password"}
