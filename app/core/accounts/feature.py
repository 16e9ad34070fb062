"""Accounts, as the app is assembled from them: users, logins, tokens and their mail."""

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts import admin, auth_routes, service, twofactor, user_routes
from app.core.accounts.tokens import callers
from app.core.accounts.users import MailTokens, Users
from app.core.db import transaction
from app.core.events import Listening, UserChanged, on, on_commit
from app.core.feature import Feature

MAILS = {
    "verify": (
        "Confirm your email address",
        "Confirm this email address by opening\n\n{url}/verify-email?token={token}\n\n"
        "or by entering this token: {token}\n\nIf you did not ask for it, ignore this mail.",
    ),
    "reset": (
        "Reset your password",
        "Choose a new password at\n\n{url}/reset-password?token={token}\n\n"
        "or with this token: {token}\n\nIt works once. If you did not ask for it, ignore "
        "this mail: your password stays as it is.",
    ),
    "email-change": (
        "Your email address is being changed",
        "Someone with your password asked to change your account's email address to "
        "{new_email}. It changes once that address confirms it.\n\nIf it was not you, "
        "reset your password now at {url}/reset-password: that cancels the change.",
    ),
}


async def prune(conn: AsyncConnection) -> None:
    async with transaction(conn):
        await Users(conn).prune()
        await MailTokens(conn).prune()
        await twofactor.prune(conn)


accounts = Feature(
    name="accounts",
    routers=[auth_routes.router, user_routes.router],
    subscriptions=[
        # The caller cache forgets a changed user as the change commits here, and as the
        # event reaches every other process; it is off while events may be missed.
        on_commit(UserChanged, callers.changed),
        on(UserChanged, callers.changed),
        on(Listening, callers.listening),
    ],
    jobs={"reset-request": service.reset_requested},
    mails=MAILS,
    chores=[prune],
    startup=[admin.ensure_first_superuser],
)
