"""The outbox's sender: a task in every server process that claims due rows, runs jobs
and sends mail over SMTP, retrying with backoff. Woken by the `mail.queued` event that a
queued mail publishes (app.realtime's one listener per process hands it over), it polls
every few seconds as well, for retries and missed wake-ups."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncConnection

from app import db, metrics
from app.models.mail import MailRow
from app.repositories.mail import Outbox, Tokens
from app.repositories.users import Users
from app.settings import settings

log = logging.getLogger(__name__)
POLL_SECONDS, BATCH, LEASE = 5.0, 50, timedelta(minutes=2)

TEMPLATES = {
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
}


async def reset_requested(conn: AsyncConnection, row: MailRow) -> None:
    """A reset asked for `row.to`: a token and its mail if an active user has that email.
    Done here, not in the request, so known and unknown emails cost the request the same."""
    user = await Users(conn).by_email(row.to)
    if user is not None and user.is_active:
        await Tokens(conn).mail("reset", user.id, user.email)


# Rows whose kind is here are jobs, run in a transaction that marks them done.
JOBS: dict[str, Callable[[AsyncConnection, MailRow], Awaitable[None]]] = {
    "reset-request": reset_requested,
}


def render(row: MailRow) -> EmailMessage:
    subject, body = TEMPLATES[row.kind]
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = settings.mail_from, row.to, subject
    message.set_content(body.format(url=settings.frontend_url.rstrip("/"), **row.data))
    return message


class Sender:
    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def deliver(self, rows: list[MailRow]) -> list[int]:
        """Send over one SMTP connection; the ids that went out. Without SMTP_HOST: the
        log in development, nowhere in production."""
        if not settings.smtp_host:
            for row in rows:
                if settings.environment == "development":
                    msg = render(row)
                    log.info(
                        "mail to %s (SMTP_HOST unset, not sent):\n%s",
                        row.to,
                        msg.get_content(),
                        extra={"fields": {"mail": msg.as_string()}},
                    )
            return [r.id for r in rows]
        sent: list[int] = []
        smtp = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            use_tls=settings.smtp_security == "tls",
            start_tls=settings.smtp_security == "starttls",
            timeout=10,
        )
        try:
            async with asyncio.timeout(LEASE.total_seconds() / 2), smtp:
                for row in rows:
                    await smtp.send_message(render(row))
                    sent.append(row.id)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("mail not delivered, will retry: %s", type(exc).__name__)
        return sent

    async def batch(self) -> bool:
        """One round: claim, run, send, mark. False when nothing was due."""
        async with db.begin() as conn:
            rows = await Outbox(conn).claim(BATCH, LEASE)
        mails = [r for r in rows if r.kind not in JOBS]
        failed = []
        for job in (r for r in rows if r.kind in JOBS):
            try:
                async with db.begin() as conn:
                    await JOBS[job.kind](conn, job)
                    await Outbox(conn).done([job.id])
            except Exception:
                log.exception("job %s failed, will retry", job.kind)
                failed.append(job)
        sent = await self.deliver(mails) if mails else []
        failed += [r for r in mails if r.id not in sent]
        async with db.begin() as conn:
            outbox = Outbox(conn)
            if sent:
                await outbox.done(sent)
            for row in failed:
                await outbox.retry(row)
        return bool(rows) and not failed

    async def run(self) -> None:
        rounds = 0
        while True:
            self.wake.clear()
            try:
                while await self.batch():
                    pass
                if (rounds := rounds + 1) % 720 == 1:  # at start, then about hourly
                    async with db.begin() as conn:  # the outbox, tokens, logins, counters
                        await Outbox(conn).prune(timedelta(days=settings.mail_retention_days))
                        window = timedelta(seconds=settings.login_failure_window_seconds)
                        await Users(conn).prune(window)
                if settings.metrics_enabled:
                    async with db.connect() as conn:
                        metrics.MAIL_QUEUE.set(await Outbox(conn).waiting())
            except Exception:  # the database may be away: try again at the next poll
                log.exception("mail sender round failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)

    async def start(self) -> None:
        if not settings.smtp_host and settings.environment == "production":
            log.warning("SMTP_HOST is unset: no mail is sent (verification, password reset)")
        self.tasks.append(asyncio.create_task(self.run()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


sender = Sender()
