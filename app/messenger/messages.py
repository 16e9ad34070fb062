"""Messages: idempotent send, history pages, edits, deletion, reactions, the changes
feed, search."""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from app.core.errors import Conflict, Forbidden, NotFound
from app.core.models import Page, UTCDateTime, table, utcnow
from app.core.repository import Keyset, Repository, encode_cursor, live, upsert
from app.core.settings import settings
from app.messenger.events import changed
from app.messenger.message_models import (
    ChangesPage,
    Message,
    MessageChange,
    MessageOut,
    MessagePage,
    words,
)
from app.messenger.reactions import Reactions
from app.messenger.thread_models import Membership, Thread
from app.messenger.threads import Threads
from app.messenger.uploads import Uploads

messages, memberships, threads = table(Message), table(Membership), table(Thread)
columns = [c for c in messages.c if c.name != "deleted"]
of_thread = messages.c.thread_id == bindparam("thread_id")
# History pages order by (thread_id, id), the one index that fits every page shape. On
# PostgreSQL the thread is named as `= ANY(ARRAY[:id])`: with a plain `=` the planner drops
# the known thread_id from the order and may walk the primary key backwards instead,
# filtering out every newer message of other threads (10 ms for a quiet big thread).
this_thread = (
    of_thread
    if settings.is_sqlite
    else messages.c.thread_id == any_(postgresql.array([bindparam("thread_id", type_=Integer())]))
)
# The full-text index of each database (see the reactions_and_search migration).
matches: ColumnElement[bool]
newest_first: ColumnElement[int] = messages.c.id
if settings.is_sqlite:
    fts = sa.table("message_fts", sa.column("rowid"))
    matches = messages.c.id.in_(
        select(fts.c.rowid).where(literal_column("message_fts").op("MATCH")(bindparam("q")))
    )
else:
    # A literal, not a parameter: the index's very expression.
    simple: ColumnElement[Any] = literal_column("'simple'::regconfig")
    matches = func.to_tsvector(simple, messages.c.body).op("@@")(
        func.plainto_tsquery(simple, bindparam("q"))
    )
    # Not the primary key's order: else PostgreSQL may walk the whole table backwards,
    # hoping to meet matches soon (a guess: prepared plans know no word), which for a rare
    # word reads every row. This way the matches come from the index and are sorted.
    newest_first = messages.c.id + literal_column("0")


class Messages(Repository[MessageOut]):
    table, row = messages, MessageOut

    _insert = (
        upsert(messages)
        .values(
            thread_id=bindparam("thread_id"),
            author_id=bindparam("author_id"),
            body=bindparam("body", type_=String()),
            client_id=bindparam("client_id", type_=String()),
            version=bindparam("version", type_=Integer()),
            created_at=bindparam("now", type_=UTCDateTime()),
            updated_at=bindparam("now", type_=UTCDateTime()),
        )
        # A repeated client_id inserts nothing; without one, nothing can conflict.
        .on_conflict_do_nothing(index_elements=["thread_id", "author_id", "client_id"])
        .returning(*columns)
    )
    _by_client_id = select(*columns, messages.c.deleted).where(
        of_thread,
        messages.c.author_id == bindparam("author_id"),
        messages.c.client_id == bindparam("client_id"),
    )
    _history = select(*columns).where(this_thread, live(messages)).limit(bindparam("limit"))
    _newest = _history.order_by(messages.c.thread_id.desc(), messages.c.id.desc())
    _before = _newest.where(messages.c.id < bindparam("id"))
    _after = _history.where(messages.c.id > bindparam("id")).order_by(
        messages.c.thread_id, messages.c.id
    )
    _one = select(*columns).where(of_thread, live(messages), messages.c.id == bindparam("id"))
    _search = select(*columns).where(
        live(messages),
        matches,
        messages.c.thread_id.in_(
            select(memberships.c.thread_id)
            .join(threads, threads.c.id == memberships.c.thread_id)
            .where(memberships.c.user_id == bindparam("user_id"), live(memberships), live(threads))
        ),
    )
    _found = Keyset(_search, [newest_first], descending=True)
    _found_in = Keyset(_search.where(of_thread), [newest_first], descending=True)
    _changes = (
        select(*columns, messages.c.deleted)
        .where(
            of_thread,
            messages.c.version > bindparam("since"),
            messages.c.version <= bindparam("upto"),
        )
        .order_by(messages.c.thread_id, messages.c.version)
        .limit(bindparam("limit"))
    )

    async def send(
        self,
        thread_id: int,
        author_id: int,
        body: str,
        client_id: str | None,
        attachment_ids: Sequence[int] = (),
    ) -> tuple[MessageOut, bool]:
        """(the message, True) or, for a repeated client_id, (the original, False)."""
        now = utcnow()
        # The thread's row lock first: sends to one thread take turns, so ids and
        # versions grow in commit order (what catching up relies on).
        thread = await Threads(self.conn).bump(thread_id, author_id, last_message_at=now)
        params = {"thread_id": thread_id, "author_id": author_id, "client_id": client_id}
        row = (
            await self.conn.execute(
                self._insert, {**params, "body": body, "version": thread.version, "now": now}
            )
        ).first()
        if row is None:  # sent before, or a concurrent twin won the race
            original = (await self.conn.execute(self._by_client_id, params)).one()
            if original.deleted:
                raise Conflict("The message with this client_id was deleted")
            return (await Uploads(self.conn).of([self.load(original)]))[0], False
        message = self.load(row)
        message.attachments = await Uploads(self.conn).attach(message.id, author_id, attachment_ids)
        await Threads(self.conn).move_marker(thread_id, author_id, message.id)
        changed(self.conn, "message.created", thread_id, message, message.version)
        return message, True

    async def get(self, id: int) -> MessageOut | None:
        """A message as every reader sees it (no reaction is `me`): what events carry."""
        message = await super().get(id)
        if message is None:
            return None
        await Uploads(self.conn).of([message])
        return (await Reactions(self.conn).of([message], 0))[0]

    async def page(
        self, thread_id: int, user_id: int, limit: int, before: int | None, after: int | None
    ) -> MessagePage:
        """`limit` messages, oldest first: the newest, those just before or just after an id."""
        params = {"thread_id": thread_id, "limit": limit + 1, "id": before or after}
        stmt = self._after if after is not None else self._before if before else self._newest
        rows = await self.all(stmt, **params)
        page = rows[:limit] if after is not None else rows[:limit][::-1]
        items = await Reactions(self.conn).of(await Uploads(self.conn).of(page), user_id)
        return MessagePage(items=items, has_more=len(rows) > limit)

    async def _message(self, thread_id: int, message_id: int) -> MessageOut:
        message = await self.first(self._one, thread_id=thread_id, id=message_id)
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
        edited = (await Reactions(self.conn).of(await Uploads(self.conn).of([edited]), user_id))[0]
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
        message = (await rows.of(await Uploads(self.conn).of([message]), user_id))[0]
        if done:
            kind = "reaction.added" if add else "reaction.removed"
            changed(self.conn, kind, thread_id, message, message.version)
        return message, done

    async def remove(
        self, thread_id: int, message_id: int, user_id: int, admin: bool
    ) -> MessageOut:
        """Soft-delete; the author, the thread's owner or an admin may."""
        thread = await Threads(self.conn).bump(thread_id, user_id)
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

    async def changes(
        self, thread_id: int, user_id: int, since: int, upto: int, limit: int
    ) -> ChangesPage:
        """Messages changed after version `since`, up to `upto` (the thread's version read
        before: a change committed meanwhile waits for the next call), oldest change first."""
        params = {"thread_id": thread_id, "since": since, "upto": upto, "limit": limit + 1}
        rows = (await self.conn.execute(self._changes, params)).all()
        items = [
            MessageChange.model_construct(**{**r._mapping, "body": "" if r.deleted else r.body})
            for r in rows[:limit]
        ]
        live_items = await Uploads(self.conn).of([i for i in items if not i.deleted])
        await Reactions(self.conn).of(live_items, user_id)
        more = len(rows) > limit
        return ChangesPage(items=items, version=items[-1].version if more else upto, has_more=more)

    async def search(
        self, user_id: int, q: str, thread_id: int | None, limit: int, after: list[Any] | None
    ) -> Page[MessageOut]:
        """Messages of the user's live threads (or of one of them) holding every word of
        `q`, newest first, found through the full-text index."""
        if thread_id is not None:
            await Threads(self.conn).visible(thread_id, user_id)
        terms = words(q)  # quoted for FTS5: a word is never an operator there
        query = " ".join(f'"{w}"' for w in terms) if settings.is_sqlite else " ".join(terms)
        params = {"user_id": user_id, "q": query, "thread_id": thread_id}
        found = self._found if thread_id is None else self._found_in
        rows, more = await found.page(self.conn, limit, after, **params)
        loaded = await Uploads(self.conn).of([self.load(r) for r in rows])
        items = await Reactions(self.conn).of(loaded, user_id)
        return Page(items=items, next_cursor=encode_cursor([items[-1].id]) if more else None)
