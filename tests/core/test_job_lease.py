"""A round of the job runner runs its jobs, then sends its mail, all under one lease:
a slow job (storage that hangs) must not let the lease run out before the mail goes, or
another process claims the same mail and both send it."""

import asyncio
from datetime import timedelta

import pytest

from app.core import jobs
from app.core.db import begin
from app.core.jobs import Runner, runner
from app.core.outbox import MailRow, Outbox
from app.core.settings import settings
from tests.helpers import fetch, pg_only
from tests.servers import Inbox


@pg_only  # SQLite: the job's transaction holds the one write lock; no other claims
async def test_a_slow_job_lets_no_other_runner_send_its_rounds_mail(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "LEASE", timedelta(seconds=2))
    started, release, calls = asyncio.Event(), asyncio.Event(), []

    async def slow(conn: object, job: MailRow) -> None:
        calls.append(job.id)
        if len(calls) == 1:  # the first run hangs past the lease, as on a storage outage
            started.set()
            await release.wait()

    monkeypatch.setitem(runner.jobs, "test.slow", slow)
    other = Runner()  # another process's runner, on the same table
    other.jobs, other.templates = dict(runner.jobs), runner.templates
    async with begin() as conn:
        await Outbox(conn).queue_jobs("test.slow", [{}])
        await Outbox(conn).queue("verify", "once@example.com", token="t")
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(2.5)  # the lease of the first round has run out
    try:
        await other.batch()
    finally:
        release.set()
    await inbox.wait("once@example.com")
    for _ in range(50):  # the first round, let go, finishes
        if (await fetch("SELECT count(*) FROM mail WHERE sent_at IS NULL"))[0][0] == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    assert len(inbox.to("once@example.com")) == 1


async def test_a_job_the_round_had_no_time_for_is_not_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job left for a later round, because one before it took the round's time, never
    ran: no attempt of it failed, so MAIL_MAX_ATTEMPTS must not give it up."""
    monkeypatch.setattr(jobs, "LEASE", timedelta(seconds=1))
    monkeypatch.setattr(settings, "mail_max_attempts", 1)
    ran: list[int] = []

    async def first_hangs(conn: object, job: MailRow) -> None:
        ran.append(job.id)
        if len(ran) == 1:
            await asyncio.Event().wait()  # a storage that never answers

    monkeypatch.setitem(runner.jobs, "test.job", first_hangs)
    async with begin() as conn:
        await Outbox(conn).queue_jobs("test.job", [{}, {}])
    for _ in range(100):  # the first claimed hangs, is cut short at the round's deadline
        if ran:
            [(sent_at, failed_at)] = await fetch(
                "SELECT sent_at, failed_at FROM mail WHERE id != :id", id=ran[0]
            )
            if sent_at is not None or failed_at is not None:
                break
        await asyncio.sleep(0.1)
    assert failed_at is None and sent_at is not None
