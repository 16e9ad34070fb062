"""The outbox and the mail tokens. Mail is queued on the caller's transaction, so it goes
out only if that commits; senders claim due rows with a lease."""

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from app.db import publish
from app.models.base import table, utcnow
from app.models.mail import Mail, MailRow, MailToken, TokenRow
from app.repositories.base import Repository, live
from app.settings import settings

mails, tokens = table(Mail), table(MailToken)
LIFETIMES = {
    "reset": lambda: timedelta(minutes=settings.password_reset_expire_minutes),
    "verify": lambda: timedelta(minutes=settings.email_verify_expire_minutes),
}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Outbox(Repository[MailRow]):
    table, row = mails, MailRow

    async def queue(self, kind: str, to: str, **data: Any) -> None:
        await self.create(kind=kind, to=to, data=data, next_attempt_at=utcnow())
        # Rides the transaction's events: realtime's one listener per process wakes senders.
        publish(self.conn, {"type": "mail.queued"})

    async def claim(self, limit: int, lease: timedelta) -> list[MailRow]:
        """Due rows, leased to the caller: other processes skip them (SKIP LOCKED) and,
        once this commits, see them due only after the lease (a sender that died)."""
        now = utcnow()
        due = (
            select(mails.c.id)
            .where(mails.c.next_attempt_at <= now)
            .order_by(mails.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # SQLite ignores it: one process
        )
        stmt = (
            update(mails)
            .where(mails.c.id.in_(due.scalar_subquery()))
            .values(next_attempt_at=now + lease, attempts=mails.c.attempts + 1, updated_at=now)
            .returning(*mails.c)
        )
        return await self.all(stmt)

    async def done(self, ids: list[int]) -> None:
        now = utcnow()
        await self.conn.execute(
            update(mails)
            .where(mails.c.id.in_(ids))
            .values(next_attempt_at=None, sent_at=now, data={}, updated_at=now)
        )

    async def retry(self, row: MailRow) -> None:
        wait = min(settings.mail_retry_max_seconds, 2 ** min(row.attempts, 20))
        await self.update(row.id, next_attempt_at=utcnow() + timedelta(seconds=wait))

    async def waiting(self) -> int:
        stmt = select(func.count()).where(mails.c.next_attempt_at.is_not(None))
        return int((await self.conn.execute(stmt)).scalar_one())

    async def prune(self, retention: timedelta) -> None:
        """Sent rows after `retention`, and tokens that expired: both tables stay bounded."""
        await self.conn.execute(delete(mails).where(mails.c.sent_at < utcnow() - retention))
        await self.conn.execute(delete(tokens).where(tokens.c.expires_at < utcnow()))


class Tokens(Repository[TokenRow]):
    table, row = tokens, TokenRow

    async def mail(self, kind: str, user_id: int, email: str) -> None:
        """A new token, superseding the user's earlier ones of this kind, and its mail."""
        await self.conn.execute(
            update(tokens)
            .where(tokens.c.user_id == user_id, tokens.c.kind == kind, live(tokens))
            .values(deleted=True, updated_at=utcnow())
        )
        token = secrets.token_urlsafe(32)
        expires = utcnow() + LIFETIMES[kind]()
        await self.create(
            kind=kind, user_id=user_id, email=email, token_hash=digest(token), expires_at=expires
        )
        await Outbox(self.conn).queue(kind, email, token=token)

    async def redeem(self, kind: str, token: str) -> TokenRow | None:
        """Use a token, in one statement, so two requests cannot both use it."""
        stmt = (
            update(tokens)
            .where(
                tokens.c.token_hash == digest(token),
                tokens.c.kind == kind,
                live(tokens),
                tokens.c.expires_at > utcnow(),
            )
            .values(deleted=True, updated_at=utcnow())
            .returning(*tokens.c)
        )
        return await self.first(stmt)
