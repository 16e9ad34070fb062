"""What happens to uploads over time, run by the job runner (app.core.jobs) in every
process: unattached ones expire, a deleted one's bytes are deleted by an outbox job of its
own (claimed by one process, retried until the storage says yes), and an hourly sweep
finds what a crash left behind either way: bytes without a row, rows without bytes. Each
process then sets its gauge of bytes stored from the database."""

import logging
from contextlib import nullcontext
from datetime import timedelta

from sqlalchemy import bindparam, false, func, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core import metrics
from app.core.db import transaction
from app.core.models import UTCDateTime, utcnow
from app.core.outbox import MailRow, Outbox
from app.core.repository import live
from app.core.settings import settings
from app.core.storage import files
from app.messenger.uploads import PURGE, fresh, uploads

log = logging.getLogger(__name__)
SWEEP_LOCK = 0x75706C6F  # one sweep at a time, whichever process (a PostgreSQL advisory lock)
SWEEP_PAGE = 1000
ORPHAN_AGE = timedelta(hours=1)  # older bytes without a row are no save still in flight

_expire = (
    update(uploads)
    .where(uploads.c.message_id.is_(None), live(uploads))
    .where(uploads.c.created_at <= bindparam("fresh", type_=UTCDateTime()))
    .values(deleted=True, updated_at=bindparam("now", type_=UTCDateTime()))
    .returning(uploads.c.id)
)
# Claimed by one job: whoever sets `purged` deletes the bytes, and if that fails, the
# rollback hands them to the job's retry.
_purge = (
    update(uploads)
    .where(uploads.c.id == bindparam("upload"), uploads.c.deleted == true())
    .where(uploads.c.purged == false())
    .values(purged=True)
    .returning(uploads.c.key, uploads.c.size)
)
_live_keys = (
    select(uploads.c.id, uploads.c.key, uploads.c.created_at)
    .where(live(uploads), uploads.c.id > bindparam("after"))
    .order_by(uploads.c.id)
    .limit(SWEEP_PAGE)
)
_stored = select(func.coalesce(func.sum(uploads.c.size), 0)).where(uploads.c.purged == false())


async def purge(conn: AsyncConnection, job: MailRow) -> None:
    """The outbox job (PURGE): one deleted upload's bytes."""
    row = (await conn.execute(_purge, {"upload": int(job.data["id"])})).first()
    if row is not None:  # else done by an earlier run
        try:
            await files().delete(row.key)
        except Exception as exc:  # its text may name the key (a path on disk): logged by id
            name = type(exc).__name__
            raise RuntimeError(f"upload {job.data['id']}: bytes not deleted: {name}") from None
        metrics.UPLOAD_BYTES.dec(row.size)


async def expire(conn: AsyncConnection) -> None:
    """Hourly: unattached uploads past UPLOAD_EXPIRE_MINUTES go, their bytes by jobs.
    (Requests already treat them as gone.)"""
    async with transaction(conn):
        result = await conn.execute(_expire, {"fresh": fresh(), "now": utcnow()})
        await Outbox(conn).queue_jobs(PURGE, [{"id": i} for i in result.scalars()])


async def sweep(conn: AsyncConnection) -> None:
    """Hourly: bytes an hour old that no live row names are deleted (a save a crash cut
    short too), and live rows whose bytes are missing are marked deleted. The storage's keys
    are held in memory meanwhile (about 100 bytes each). A storage that cannot be reached
    fails no other chore, and holds no write: on SQLite (one process, so no lock to take)
    only the marking is a transaction, not the minutes a storage away may take to list."""
    if settings.is_sqlite:
        await _sweep(conn)
        return
    async with transaction(conn):  # the lock is held until it ends
        lock = text("SELECT pg_try_advisory_xact_lock(:key)")
        if (await conn.execute(lock, {"key": SWEEP_LOCK})).scalar_one():
            await _sweep(conn)  # else another process is sweeping


async def _sweep(conn: AsyncConnection) -> None:
    started = utcnow()
    try:
        listing = files().keys()
        stored = {key: when async for key, when in listing}
    except Exception as exc:  # the storage is away: the next hour's sweep, then
        log.warning("upload sweep could not list the storage: %s", type(exc).__name__)
        return
    missing, after = [], 0
    while rows := (await conn.execute(_live_keys, {"after": after})).all():
        for row in rows:
            # A row newer than the listing may name bytes saved after it was taken.
            if stored.pop(row.key, None) is None and row.created_at < started:
                missing.append(row.id)
        after = rows[-1].id
    if missing:
        log.warning("%d uploads lost their bytes; marked deleted", len(missing))
        stmt = update(uploads).where(uploads.c.id.in_(missing))
        async with transaction(conn) if settings.is_sqlite else nullcontext():
            await conn.execute(stmt.values(deleted=True, purged=True, updated_at=utcnow()))
    for key, when in stored.items():
        if when < started - ORPHAN_AGE:
            try:
                await files().delete(key)
            except Exception as exc:  # left for the next sweep
                log.warning("upload sweep could not delete an orphan: %s", type(exc).__name__)


async def measure(conn: AsyncConnection) -> None:
    """Hourly, in every process (after the sweep, whichever process swept): the bytes
    stored, from the database, so each process's gauge comes back to the truth however many
    uploads other processes took meanwhile."""
    if settings.metrics_enabled:
        metrics.UPLOAD_BYTES.set((await conn.execute(_stored)).scalar_one())
