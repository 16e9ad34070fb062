"""The outbox's runner: a task in every server process that claims due rows, runs jobs
and sends mail over SMTP, retrying with backoff, and does the hourly chores (pruning).
Features hand it their job kinds, mail templates and chores at start-up (app/main.py).
It wakes when a row is queued (the `MailQueued` event), and polls every few seconds for
retries and missed wake-ups."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core import metrics
from app.core.db import begin, connect
from app.core.events import Event
from app.core.outbox import MailRow, Outbox
from app.core.settings import settings

log = logging.getLogger("app.mail")
POLL_SECONDS, BATCH, LEASE = 5.0, 50, timedelta(minutes=2)
CHORE_ROUNDS = 720  # about hourly, at one round per poll

# A job runs in a transaction that also marks its row done; mail is rendered from a
# template (subject, body with `str.format` fields: `url` and the row's data). A chore gets
# a connection and takes the transactions its writes need (app.core.db.transaction): one
# that waits on something else (the storage) must not hold a transaction meanwhile, which
# on SQLite is the one write lock of every request.
Job = Callable[[AsyncConnection, MailRow], Awaitable[None]]
Chore = Callable[[AsyncConnection], Awaitable[None]]
Template = tuple[str, str]


class Runner:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.templates: dict[str, Template] = {}
        self.chores: list[Chore] = []
        self.awake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def wake(self, _: Event | None = None) -> None:
        self.awake.set()

    def render(self, row: MailRow) -> EmailMessage:
        subject, body = self.templates[row.kind]
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = settings.mail_from, row.to, subject
        message.set_content(body.format(url=settings.frontend_url.rstrip("/"), **row.data))
        return message

    async def deliver(self, rows: list[MailRow], sent: list[int], deadline: float) -> set[int]:
        """Send over one SMTP connection until `deadline` (the event loop's clock), adding
        to `sent` what went out. Without SMTP_HOST: the log in development, nowhere in
        production. Returned: the rows that the server, unreachable, never refused."""
        if not settings.smtp_host:
            for row in rows:
                if settings.environment == "development":
                    msg = self.render(row)
                    log.info(
                        "mail to %s (SMTP_HOST unset, not sent):\n%s",
                        row.to,
                        msg.get_content(),
                        extra={"fields": {"mail": msg.as_string()}},
                    )
                sent.append(row.id)
            return set()
        tried: set[int] = set()  # failed on their own: a refusal, or no template
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
            async with asyncio.timeout_at(deadline), smtp:
                for row in rows:
                    try:
                        message = self.render(row)
                    except Exception:  # a row no template fits: it alone fails
                        log.exception("mail %d cannot be rendered, will retry", row.id)
                        tried.add(row.id)
                        continue
                    try:
                        await smtp.send_message(message)
                    except (OSError, TimeoutError):
                        # The connection is lost (aiosmtplib's disconnects and timeouts are
                        # these too): the rest waits its retry.
                        raise
                    except Exception as exc:
                        # This one alone: refused, or it cannot go to this server (a non-ASCII
                        # address without SMTPUTF8); the connection still serves the others.
                        log.warning("mail %d not sent, will retry: %s", row.id, type(exc).__name__)
                        tried.add(row.id)
                        continue
                    sent.append(row.id)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("mail not delivered, will retry: %s", type(exc).__name__)
            return {r.id for r in rows} - tried - set(sent)
        return set()

    async def batch(self) -> bool:
        """One round: claim, run, send, mark. False when nothing was due or some failed."""
        async with begin(queued=False) as conn:
            rows = await Outbox(conn).claim(BATCH, LEASE)
        ran: list[int] = []  # jobs: marked done in their own transaction
        sent: list[int] = []
        # All of the round within half its lease: past the lease another process claims the
        # same rows, and would send the mail again. Mail first: a job that hangs (storage
        # away) must not take its time, and is cut short (rolled back) at the deadline.
        deadline = asyncio.get_running_loop().time() + LEASE.total_seconds() / 2
        unreachable: set[int] = set()  # and jobs the round had no time for: never tried
        try:
            mail = [r for r in rows if r.kind not in self.jobs]
            unreachable = await self.deliver(mail, sent, deadline)
            jobs = [r for r in rows if r.kind in self.jobs]
            for i, job in enumerate(jobs):
                if asyncio.get_running_loop().time() >= deadline:
                    log.warning("round out of time: its remaining jobs wait their retry")
                    unreachable |= {r.id for r in jobs[i:]}
                    break
                try:
                    async with begin(queued=False) as conn:
                        # The job, not its commit: one cut short there may have committed.
                        async with asyncio.timeout_at(deadline):
                            await self.jobs[job.kind](conn, job)
                        await Outbox(conn).done([job.id])
                    ran.append(job.id)
                except Exception:
                    log.exception("job %s failed, will retry", job.kind)
        finally:
            # Whatever happened, what went out is marked so, and the rest waits its retry:
            # a row left leased would be sent again once the lease ran out.
            failed = [r for r in rows if r.id not in ran and r.id not in sent]
            async with begin(queued=False) as conn:
                if sent:
                    await Outbox(conn).done(sent)
                for row in failed:
                    await Outbox(conn).retry(row, give_up=row.id not in unreachable)
        return bool(rows) and not failed

    async def chore(self) -> None:
        async with begin(queued=False) as conn:
            await Outbox(conn).prune(timedelta(days=settings.mail_retention_days))
        for chore in self.chores:
            async with connect(queued=False) as conn:
                await chore(conn)

    async def run(self) -> None:
        rounds = 0
        while True:
            self.awake.clear()
            try:
                while await self.batch():
                    pass
                if (rounds := rounds + 1) % CHORE_ROUNDS == 1:  # at start, then about hourly
                    await self.chore()
                if settings.metrics_enabled:
                    async with connect(queued=False) as conn:
                        metrics.MAIL_QUEUE.set(await Outbox(conn).waiting())
            except Exception:  # the database may be away: try again at the next poll
                log.exception("job runner round failed")
            with suppress(TimeoutError):  # not wait_for: on 3.11 it may drop a stop's cancel
                async with asyncio.timeout(POLL_SECONDS):
                    await self.awake.wait()

    async def start(self) -> None:
        if not settings.smtp_host and settings.environment == "production":
            log.warning("SMTP_HOST is unset: no mail is sent (verification, password reset)")
        self.tasks.append(asyncio.create_task(self.run()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


runner = Runner()
