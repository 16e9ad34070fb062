"""Uploads: every rule of who may read, delete or attach one lives here. Their bytes are
written before their row (app.messenger.upload_intake) and deleted after it: here when the
uploader deletes one, by a job each when their message or thread was deleted or they expired
(app.messenger.upload_lifecycle)."""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from app.core.accounts.models import User
from app.core.accounts.users import Users
from app.core.driver import fetch
from app.core.errors import Conflict, Forbidden, Invalid, NotFound, TooMany
from app.core.models import UTCDateTime, table, utcnow
from app.core.outbox import Outbox
from app.core.repository import Repository, fill, in_ids, live
from app.messenger.message_models import Message, MessageOut
from app.messenger.settings import messenger_settings
from app.messenger.thread_models import Membership, Thread
from app.messenger.upload_models import Upload, UploadOut, UploadRow

M = TypeVar("M", bound=MessageOut)
uploads, users = table(Upload), table(User)
messages, memberships, threads = table(Message), table(Membership), table(Thread)
names = list(UploadOut.model_fields)
shown = [uploads.c[name] for name in names]
kept = [*shown, uploads.c.key, uploads.c.uploader_id, uploads.c.message_id]
PURGE = "upload.purge"  # the outbox job that deletes one deleted upload's bytes
NOT_YOURS = "Each must be an upload of yours that no message carries yet"
STAMPS = ("created_at", "updated_at")
HELD = "Too many uploads that no message carries; send or delete some"

# No message carries it, it is not deleted and not past UPLOAD_EXPIRE_MINUTES.
pending = and_(
    uploads.c.message_id.is_(None),
    live(uploads),
    uploads.c.created_at > bindparam("fresh", type_=UTCDateTime()),
)
# A live message of a live thread the user is a live member of carries it.
carried_for_member = exists().where(
    messages.c.id == uploads.c.message_id,
    live(messages),
    threads.c.id == messages.c.thread_id,
    live(threads),
    memberships.c.thread_id == messages.c.thread_id,
    memberships.c.user_id == bindparam("user_id"),
    live(memberships),
)


def shape(values: Sequence[Any]) -> UploadOut:
    """An UploadOut of the `shown` columns' values, in their order."""
    return UploadOut.model_construct(**dict(zip(names, values, strict=True)))


def fresh() -> datetime:
    """Uploads created before this that no message carries have expired."""
    return utcnow() - timedelta(minutes=messenger_settings.upload_expire_minutes)


class Uploads(Repository[UploadRow]):
    table, row = uploads, UploadRow

    # The deletion of a message, or of its thread, deletes its uploads in the same
    # transaction: a live upload with a message has a live message, and its uploader may
    # read it.
    _readable = select(*kept).where(
        uploads.c.id == bindparam("id"),
        live(uploads),
        or_(
            and_(
                uploads.c.uploader_id == bindparam("user_id"),
                or_(uploads.c.message_id.is_not(None), uploads.c.created_at > bindparam("fresh")),
            ),
            carried_for_member,
        ),
    )
    _held = (
        select(func.count())
        .select_from(uploads)
        .where(uploads.c.uploader_id == bindparam("user_id"), pending)
        .scalar_subquery()
    )
    _add = (
        insert(uploads)
        .from_select(
            [*("uploader_id", "key", "filename", "content_type", "size", "sha256"), *STAMPS],
            select(
                bindparam("user_id", type_=Integer()),
                bindparam("key", type_=String()),
                bindparam("filename", type_=String()),
                bindparam("content_type", type_=String()),
                bindparam("size", type_=BigInteger()),
                bindparam("sha256", type_=String()),
                bindparam("now", type_=UTCDateTime()),
                bindparam("now", type_=UTCDateTime()),
            ).where(_held < bindparam("cap")),
        )
        .returning(*shown)
    )
    _of = (
        select(uploads.c.message_id, *shown)
        .where(in_ids(uploads.c.message_id, "ids"), live(uploads))
        .order_by(uploads.c.message_id, uploads.c.position)
    )
    _drop = (
        update(uploads)
        .where(uploads.c.id == bindparam("upload"), uploads.c.uploader_id == bindparam("user_id"))
        .where(pending)
        .values(deleted=True, purged=True, updated_at=bindparam("now", type_=UTCDateTime()))
        .returning(uploads.c.key, uploads.c.size)
    )
    _release = (
        update(uploads)
        .where(live(uploads))
        .values(deleted=True, updated_at=bindparam("now", type_=UTCDateTime()))
        .returning(uploads.c.id)
    )
    _of_message = _release.where(uploads.c.message_id == bindparam("message"))
    _of_thread = _release.where(
        uploads.c.message_id.in_(
            select(messages.c.id).where(messages.c.thread_id == bindparam("thread"))
        )
    )

    async def readable(self, upload_id: int, user_id: int) -> UploadRow:
        """The upload, if its uploader or a member of the thread of its message asks;
        NotFound for anyone else, as for one that never existed."""
        found = await self.first(self._readable, id=upload_id, user_id=user_id, fresh=fresh())
        if found is None:
            raise NotFound("Upload not found")
        return found

    async def room(self, user_id: int) -> None:
        """TooMany when the user holds MAX_PENDING_UPLOADS already: said before a body is
        read, and decided as the row is written (`add`)."""
        held = await self.conn.execute(select(self._held), {"user_id": user_id, "fresh": fresh()})
        if held.scalar_one() >= messenger_settings.max_pending_uploads:
            raise TooMany(60, HELD)

    async def add(self, user_id: int, **values: Any) -> UploadOut:
        """Record an upload whose bytes are saved, unless the user holds
        MAX_PENDING_UPLOADS already: counted under the user's lock, so two racing uploads
        cannot both take the last place."""
        # Uploads of one user take turns on its row (Users.lock: sends, which reference the
        # row, are not held up), so two racing uploads cannot both take the last place. The
        # token was checked before the body arrived: a deletion or deactivation committed
        # meanwhile wins (the deletion's lock is the same one).
        if not (await Users(self.conn).lock(user_id)).is_active:
            raise NotFound("User not found")
        params = {"user_id": user_id, "now": utcnow(), "fresh": fresh(), **values}
        params["cap"] = messenger_settings.max_pending_uploads
        row = (await self.conn.execute(self._add, params)).first()
        if row is None:
            raise TooMany(60, HELD)
        return shape(row)

    async def attach(self, message_id: int, user_id: int, ids: Sequence[int]) -> list[UploadOut]:
        """Give `ids` (uploads of the user's that no message carries) to the message, in
        that order. Decided in the one statement that takes them: of two racing sends, the
        second finds them taken, and its transaction is rolled back with a 422."""
        if not ids:
            return []
        order = case({upload_id: i for i, upload_id in enumerate(ids)}, value=uploads.c.id)
        stmt = (
            update(uploads)
            .where(in_ids(uploads.c.id, "ids"), uploads.c.uploader_id == bindparam("user_id"))
            .where(pending)
            .values(message_id=message_id, position=order, updated_at=utcnow())
            .returning(uploads.c.position, *shown)
        )
        params = {"ids": list(ids), "user_id": user_id, "fresh": fresh()}
        rows = sorted((await self.conn.execute(stmt, params)).all(), key=lambda r: r[0])
        if len(rows) != len(ids):
            raise Invalid("attachment_ids", NOT_YOURS)
        return [shape(row[1:]) for row in rows]

    async def of(self, items: Sequence[M]) -> list[M]:
        """`items` with their attachments filled in: one statement, however many."""
        found: dict[int, list[UploadOut]] = defaultdict(list)
        if items:
            for row in (await fetch(self.conn, self._of, {"ids": [m.id for m in items]})).rows:
                found[row[0]].append(shape(row[1:]))
        return fill(items, "attachments", found)

    async def drop(self, upload_id: int, user_id: int) -> tuple[str, int]:
        """The uploader deletes an upload no message carries: (its key, its size), for the
        caller to delete the bytes once this commits."""
        params = {"upload": upload_id, "user_id": user_id, "fresh": fresh(), "now": utcnow()}
        row = (await self.conn.execute(self._drop, params)).first()
        if row is not None:
            return row.key, row.size
        upload = await self.readable(upload_id, user_id)  # NotFound for anyone else
        if upload.uploader_id != user_id:
            raise Forbidden("Only its uploader may delete an upload")
        raise Conflict("A message carries this upload: delete the message instead")

    async def release(self, message_id: int) -> None:
        """Its message was deleted: the uploads go with it, their bytes by a job each."""
        await self._purge_later(self._of_message, message=message_id)

    async def release_thread(self, thread_id: int) -> None:
        """Its thread was deleted: the uploads of all its messages go, as in `release`."""
        await self._purge_later(self._of_thread, thread=thread_id)

    async def _purge_later(self, stmt: Update, **params: Any) -> None:
        gone = (await self.conn.execute(stmt, {**params, "now": utcnow()})).scalars().all()
        await Outbox(self.conn).queue_jobs(PURGE, [{"id": upload_id} for upload_id in gone])
