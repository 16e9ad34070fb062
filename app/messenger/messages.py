"""Messages: idempotent send (replies, mentions, a rate limit), history pages, one message,
edits, deletion, reactions (the changes feed is in app.messenger.feeds)."""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Integer, Select, String, and_, any_, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from app.core import limits
from app.core.db import EACH_STATEMENT_COMMITS, publish_committed, transaction
from app.core.driver import fetch
from app.core.errors import Conflict, Forbidden, Invalid, NotFound
from app.core.models import UTCDateTime, table, utcnow
from app.core.repository import Repository, builder, live, upsert
from app.core.settings import settings
from app.messenger.events import changed, thread_event
from app.messenger.markers import Markers
from app.messenger.mentions import Mentions
from app.messenger.message_models import (
    Message,
    MessageCreate,
    MessageOut,
    MessagePage,
)
from app.messenger.message_send import send_statement
from app.messenger.reactions import Reactions
from app.messenger.settings import messenger_settings
from app.messenger.thread_models import Membership, Thread
from app.messenger.threads import Threads, readable
from app.messenger.uploads import Uploads

M = TypeVar("M", bound=MessageOut)
messages, threads, memberships = table(Message), table(Thread), table(Membership)
MINUTE = timedelta(seconds=60)
columns = [c for c in messages.c if c.name != "deleted"]
of_thread = messages.c.thread_id == bindparam("thread_id")
# Who may read is asked in the read's own statement (a live thread, the caller a live
# member): one round trip, and no gap in which a member removed after a check would read
# what was written after. A read that finds nothing asks again (Messages._nothing).
reader = exists().where(*readable(bindparam("thread_id"), bindparam("user_id")))
# A history page's thread, for a reader only. Pages order by (thread_id, id), the one
# index that fits every page shape. On PostgreSQL the thread is named as `= ANY(ARRAY[:id])`:
# with a plain `=` the planner may walk the primary key backwards instead, filtering out
# every newer message of other threads (10 ms for a quiet big thread); `reader` runs once.
# SQLite tests such a condition on every row it scans: the thread is the key only for a
# reader, or an outsider's 404 would first walk it all.
readers_thread = (
    messages.c.thread_id == select(bindparam("thread_id")).where(reader).scalar_subquery()
    if settings.is_sqlite
    else and_(
        messages.c.thread_id == any_(postgresql.array([bindparam("thread_id", type_=Integer())])),
        reader,
    )
)


class Messages(Repository[MessageOut]):
    table, row = messages, MessageOut

    _insert_row = (
        upsert(messages)
        .values(
            thread_id=bindparam("thread_id"),
            author_id=bindparam("author_id"),
            body=bindparam("body", type_=String()),
            client_id=bindparam("client_id", type_=String()),
            version=bindparam("version", type_=Integer()),
            reply_to_id=bindparam("reply_to_id", type_=Integer()),
            created_at=bindparam("now", type_=UTCDateTime()),
            updated_at=bindparam("now", type_=UTCDateTime()),
        )
        # A repeated client_id inserts nothing; without one, nothing can conflict.
        .on_conflict_do_nothing(index_elements=["thread_id", "author_id", "client_id"])
        .returning(*columns)
    )
    _send = send_statement()
    _by_client_id = select(*columns, messages.c.deleted).where(
        of_thread,
        messages.c.author_id == bindparam("author_id"),
        messages.c.client_id == bindparam("client_id"),
    )
    _history = select(*columns).where(readers_thread, live(messages)).limit(bindparam("limit"))
    _newest = _history.order_by(messages.c.thread_id.desc(), messages.c.id.desc())
    _before = _newest.where(messages.c.id < bindparam("id"))
    _after = _history.where(messages.c.id > bindparam("id")).order_by(
        messages.c.thread_id, messages.c.id
    )
    _one = select(*columns).where(of_thread, live(messages), messages.c.id == bindparam("id"))
    _read = _one.where(reader)
    # Whether the caller may read the thread and a read finds nothing there: one statement.
    _empty: ClassVar[dict[Any, Select[Any]]] = {
        read: select(reader & ~read.exists()) for read in (_newest, _before, _after, _read)
    }

    async def send(
        self, thread_id: int, author_id: int, new: MessageCreate
    ) -> tuple[MessageOut, bool]:
        """(the message, True) or, for a repeated client_id, (the original, False).

        Sends to one thread take turns on the thread's row lock, so ids and versions grow
        in commit order (what catching up relies on). A busy thread waits on that lock and
        nothing else, so it is held for as little as it can be: on PostgreSQL one statement
        counts the send (the limit), takes it, counts the change, inserts the message and
        moves the sender's read marker (`_send`). A plain message (no reply, mention or
        attachment: most of them) is that one statement, committed as it runs: the lock is
        let go then, not a round trip later at COMMIT, which lets a busy thread take twice
        the sends. What names other rows is checked after the insert, in a transaction: a
        422 leaves nothing behind. Either way the event goes out after the commit."""
        plain = new.reply_to_id is None and not new.mention_ids and not new.attachment_ids
        if plain and EACH_STATEMENT_COMMITS:
            message, fresh = await self._insert(thread_id, author_id, new)
            if fresh:
                event = thread_event("message.created", thread_id, message, message.version)
                await publish_committed(self.conn, event)
            return message, fresh
        async with transaction(self.conn):
            message, fresh = await self._insert(thread_id, author_id, new)
            if fresh:
                await self._add_what_it_names(message, new)
                changed(self.conn, "message.created", thread_id, message, message.version)
            return message, fresh

    async def _insert(
        self, thread_id: int, author_id: int, new: MessageCreate
    ) -> tuple[MessageOut, bool]:
        params = {
            "thread_id": thread_id,
            "author_id": author_id,
            "client_id": new.client_id,
            "body": new.body,
            "reply_to_id": new.reply_to_id,
            "now": utcnow(),
        }
        steps = self._send_in_steps if settings.is_sqlite else self._send_at_once
        try:
            message = await steps(params, f"send:{author_id}")
        except IntegrityError as exc:  # the only reference a client names: no such message
            raise Invalid("reply_to_id", "No such message in this thread") from exc
        if message is None:  # sent before, or a concurrent twin won the race
            original = (await self.conn.execute(self._by_client_id, params)).one()
            if original.deleted:
                raise Conflict("The message with this client_id was deleted")
            return (await self.filled([self.load(original)], author_id))[0], False
        return message, True

    async def _add_what_it_names(self, message: MessageOut, new: MessageCreate) -> None:
        """Checked now that the caller is known to be a member (a 422 rolls everything
        back): nothing to learn about threads one is not in."""
        if new.reply_to_id == message.id:  # its own id, guessed: no message that was there
            raise Invalid("reply_to_id", "No such message in this thread")
        if new.reply_to_id is not None:
            await self._message(message.thread_id, new.reply_to_id, "reply_to_id")
        mentions = Mentions(self.conn)
        allowed = await mentions.allowed(message.thread_id, message.author_id, new.mention_ids)
        await mentions.add(message, allowed)
        uploads = Uploads(self.conn)
        message.mention_ids = allowed
        message.attachments = await uploads.attach(
            message.id, message.author_id, new.attachment_ids
        )

    async def _send_in_steps(self, params: dict[str, Any], key: str) -> MessageOut | None:
        """SQLite: one writer at a time anyway; the same steps, one statement each."""
        # Counted across processes, repeats too; past the limit nothing else happens.
        await limits.limit(self.conn, key, messenger_settings.messages_per_minute, MINUTE)
        # Locked first, counted once a message is in: a repeat changes nothing, so it
        # neither takes a version nor moves the thread up the list.
        thread_id, author_id, now = params["thread_id"], params["author_id"], params["now"]
        thread = await Threads(self.conn).bump(thread_id, author_id, step=0)
        params = {**params, "version": thread.version + 1}
        row = (await self.conn.execute(self._insert_row, params)).first()
        if row is not None:
            await Threads(self.conn).bump(thread_id, author_id, last_message_at=now, updated_at=now)
            await Markers(self.conn).move_marker(thread_id, author_id, row.id)
        return None if row is None else self.load(row)

    async def _send_at_once(self, params: dict[str, Any], key: str) -> MessageOut | None:
        names = {"thread_id": "to_thread", "author_id": "by_user", "body": "text"}
        names |= {"client_id": "client", "reply_to_id": "answers", "now": "at"}
        bound = {names[name]: value for name, value in params.items()}
        allowed, now = messenger_settings.messages_per_minute, params["now"]
        bound |= {"key": key, "now": now, "stale": now - MINUTE, "allowed": allowed}
        found = await fetch(self.conn, self._send, bound)  # one row: counted, as in steps
        row = dict(zip(found.keys, found.rows[0], strict=True))
        limits.check(row["sent"], row["since"], allowed, MINUTE)
        if row["locked_id"] is None:  # no live thread with the author as a member
            raise NotFound("Thread not found")
        return None if row["id"] is None else builder(self.row, found.keys)(found.rows[0])

    async def filled(self, items: Sequence[M], user_id: int) -> list[M]:
        """`items` with their reactions (`me` for `user_id`), mentions and attachments:
        three statements, however many items."""
        items = await Reactions(self.conn).of(items, user_id)
        return await Uploads(self.conn).of(await Mentions(self.conn).of(items))

    async def get(self, id: int) -> MessageOut | None:
        """A message as every reader sees it (no reaction is `me`): what events carry."""
        message = await super().get(id)
        return None if message is None else (await self.filled([message], 0))[0]

    async def one(self, thread_id: int, message_id: int, user_id: int) -> MessageOut:
        """A live message of the thread, as `user_id` sees it: NotFound unless a member."""
        params = {"thread_id": thread_id, "id": message_id, "user_id": user_id}
        if (message := await self.first(self._read, **params)) is None:
            await self._nothing(self._read, params)
            raise NotFound("Message not found")
        return (await self.filled([message], user_id))[0]

    async def page(
        self, thread_id: int, user_id: int, limit: int, before: int | None, after: int | None
    ) -> MessagePage:
        """`limit` messages, oldest first: the newest, those just before or just after an id;
        NotFound unless `user_id` is a member."""
        params = {"thread_id": thread_id, "user_id": user_id, "id": before or after}
        params["limit"] = limit + 1
        stmt = self._after if after is not None else self._before if before else self._newest
        if not (rows := await self.all(stmt, **params)):
            await self._nothing(stmt, params)
        page = rows[:limit] if after is not None else rows[:limit][::-1]
        items = await self.filled(page, user_id)
        return MessagePage(items=items, has_more=len(rows) > limit)

    async def _nothing(self, read: Select[Any], params: dict[str, Any]) -> None:
        """`read` found nothing: NotFound unless the thread is the caller's to read and there
        is nothing there, asked in one statement (a caller made a member since `read` ran
        was none when it read, and must not be shown an empty thread)."""
        if not (await fetch(self.conn, self._empty[read], params)).rows[0][0]:
            raise NotFound("Thread not found")

    async def _message(self, thread_id: int, message_id: int, field: str = "") -> MessageOut:
        """A live message of the thread; else NotFound, or Invalid(`field`) for one named in
        a body."""
        message = await self.first(self._one, thread_id=thread_id, id=message_id)
        if message is None and field:
            raise Invalid(field, "No such message in this thread")
        if message is None:
            raise NotFound("Message not found")
        return message

    async def edit(self, thread_id: int, message_id: int, user_id: int, body: str) -> MessageOut:
        thread = await Threads(self.conn).bump(thread_id, user_id)  # members only, in turn
        message = await self._message(thread_id, message_id)
        if message.author_id != user_id:
            raise Forbidden("Only the author may edit a message")
        edited = await self._change(
            message_id, body=body, edited_at=utcnow(), version=thread.version
        )
        edited = (await self.filled([edited], user_id))[0]
        changed(self.conn, "message.updated", thread_id, edited, edited.version)
        return edited

    async def react(
        self, thread_id: int, message_id: int, user_id: int, emoji: str, add: bool
    ) -> tuple[MessageOut, bool]:
        """Add or take back the user's `emoji`: (the message, whether that changed anything).
        Only a change counts as one; the thread's lock is taken first all the same, so the
        cap on different emoji sees every concurrent reaction."""
        await Threads(self.conn).bump(thread_id, user_id, step=0)
        message = await self._message(thread_id, message_id)
        rows = Reactions(self.conn)
        done = await (rows.add if add else rows.remove)(message_id, user_id, emoji)
        if done:
            thread = await Threads(self.conn).bump(thread_id, user_id)
            message = await self._change(message_id, version=thread.version)
        message = (await self.filled([message], user_id))[0]
        if done:
            kind = "reaction.added" if add else "reaction.removed"
            changed(self.conn, kind, thread_id, message, message.version)
        return message, done

    async def remove(
        self, thread_id: int, message_id: int, user_id: int, admin: bool
    ) -> MessageOut:
        """Soft-delete; the author, the thread's owner or an admin (a member or not) may."""
        thread = await Threads(self.conn).bump(thread_id, user_id, admin=admin)
        message = await self._message(thread_id, message_id)
        if user_id not in (message.author_id, thread.owner_id) and not admin:
            raise Forbidden("You may not delete this message")
        gone = await self._change(message_id, deleted=True, version=thread.version)
        await Uploads(self.conn).release(message_id)
        gone = gone.model_copy(update={"body": ""})
        changed(self.conn, "message.deleted", thread_id, gone, gone.version)
        return gone

    async def _change(self, message_id: int, **values: Any) -> MessageOut:
        stmt = (
            update(messages)
            .where(messages.c.id == message_id, live(messages))
            .values(updated_at=utcnow(), **values)
            .returning(*columns)
        )
        row = (await self.conn.execute(stmt)).first()
        if row is None:  # deleted a moment ago
            raise NotFound("Message not found")
        return self.load(row)
