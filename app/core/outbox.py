"""The outbox: mail and other background jobs, queued on the transaction of the change
that asks for them (so they go out only if it commits), claimed by job runners with a
lease (app.core.jobs)."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, delete, func, insert, or_, select, update
from sqlmodel import Field, SQLModel

from app.core.events import MailQueued, publish
from app.core.models import Base, UTCDateTime, table, utcnow
from app.core.repository import Repository
from app.core.settings import settings


class Mail(Base, table=True):
    """One queued mail or job. Pending while `next_attempt_at` is set: a runner claims it
    by moving that forward (a lease), and clears it once done, or once it gave up
    (`failed_at`) after MAIL_MAX_ATTEMPTS."""

    kind: str = Field(max_length=32)
    to: str = Field(max_length=320)
    # What the template needs (a token): emptied once done, so no token outlives delivery.
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class MailRow(SQLModel):
    id: int
    kind: str
    to: str
    data: dict[str, Any]
    attempts: int


mails = table(Mail)


class Outbox(Repository[MailRow]):
    table, row = mails, MailRow

    async def queue(self, kind: str, to: str, **data: Any) -> None:
        await self.create(kind=kind, to=to, data=data, next_attempt_at=utcnow())
        publish(self.conn, MailQueued())  # a runner may start at once, in any process

    async def queue_jobs(self, kind: str, items: list[dict[str, Any]]) -> None:
        """One job of `kind` for each item (its data), in one statement and one wake-up."""
        if items:
            now = utcnow()
            times = {"created_at": now, "updated_at": now, "next_attempt_at": now}
            rows = [{"kind": kind, "to": "", "data": data, **times} for data in items]
            await self.conn.execute(insert(mails), rows)
            publish(self.conn, MailQueued())

    async def claim(self, limit: int, lease: timedelta) -> list[MailRow]:
        """Due rows, leased to the caller: other processes skip them (SKIP LOCKED) and,
        once this commits, see them due only after the lease (a runner that died)."""
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

    async def retry(self, row: MailRow, *, give_up: bool = True) -> None:
        """Again after 2, 4, 8 … seconds (at most MAIL_RETRY_MAX_SECONDS), or never again
        after MAIL_MAX_ATTEMPTS: a mail the server refuses for good must not loop. Not
        `give_up`: a mail the server could not be reached for waits out any outage."""
        if give_up and row.attempts >= settings.mail_max_attempts:
            await self.update(row.id, next_attempt_at=None, failed_at=utcnow(), data={})
            return
        wait = min(settings.mail_retry_max_seconds, 2 ** min(row.attempts, 20))
        await self.update(row.id, next_attempt_at=utcnow() + timedelta(seconds=wait))

    async def waiting(self) -> int:
        stmt = select(func.count()).where(mails.c.next_attempt_at.is_not(None))
        return int((await self.conn.execute(stmt)).scalar_one())

    async def prune(self, retention: timedelta) -> None:
        """Done or failed rows after `retention`: the table stays bounded."""
        old = utcnow() - retention
        await self.conn.execute(
            delete(mails).where(or_(mails.c.sent_at < old, mails.c.failed_at < old))
        )
