"""Feeds of messages: across the caller's threads, newest first, search and the mentions
feed; in one thread, oldest change first, the changes feed (catching up)."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Select, bindparam, func, literal_column, select, true

from app.core.db import time_limit
from app.core.models import Page, table
from app.core.repository import Keyset, Repository, encode_cursor, live
from app.core.settings import settings
from app.messenger.message_models import (
    SIMPLE,
    ChangesPage,
    Mention,
    Message,
    MessageChange,
    MessageOut,
    alnum_runs,
    searchable,
    words,
)
from app.messenger.messages import Messages
from app.messenger.settings import messenger_settings
from app.messenger.thread_models import Membership, Thread
from app.messenger.threads import Threads

messages, memberships, threads = table(Message), table(Membership), table(Thread)
mentions = table(Mention)
columns = [c for c in messages.c if c.name != "deleted"]
my_threads = (  # the caller's live threads
    select(memberships.c.thread_id)
    .join(threads, threads.c.id == memberships.c.thread_id)
    .where(memberships.c.user_id == bindparam("user_id"), live(memberships), live(threads))
)
mine = messages.c.thread_id.in_(my_threads)
# The full-text index of each database (see the reactions_and_search migration).
matches: ColumnElement[bool]
newest_first: ColumnElement[int] = messages.c.id
if settings.is_sqlite:
    fts = sa.table("message_fts", sa.column("rowid"))
    matches = messages.c.id.in_(
        select(fts.c.rowid).where(literal_column("message_fts").op("MATCH")(bindparam("q")))
    )
else:
    # The query split by the index's rule too: Python's letters and the database's may
    # differ at the edges ("x²").
    query = func.plainto_tsquery(SIMPLE, alnum_runs(bindparam("q")))
    matches = searchable(messages.c.body).op("@@")(query)
    # Not the primary key's order: else PostgreSQL may walk the whole table backwards,
    # hoping to meet matches soon (a guess: prepared plans know no word), which for a rare
    # word reads every row. This way the matches come from the index and are sorted.
    newest_first = messages.c.id + literal_column("0")
# The caller's mentions, read in the order of the mention index (user, message), those of
# threads the caller left passed over in the index by their thread. On PostgreSQL the
# threads are one array, found once, and each mention's message is looked up by itself,
# behind an OFFSET 0 fence: joined, the planner may merge the mentions with the message
# table walked down from its newest row, or fetch every mention of the caller and sort
# them, and either grows with the feed.
mentioned: Select[Any]
if settings.is_sqlite:
    mentioned = select(*columns).join(mentions, mentions.c.message_id == messages.c.id)
    mentioned = mentioned.where(live(messages), mentions.c.thread_id.in_(my_threads))
else:
    message = (
        select(*columns)
        .where(messages.c.id == mentions.c.message_id, live(messages))
        .offset(literal_column("0"))
        .lateral("mentioned")
    )
    in_my_threads = mentions.c.thread_id == sa.any_(func.array(my_threads.scalar_subquery()))
    mentioned = select(*message.c).select_from(mentions).join(message, true())
    mentioned = mentioned.where(in_my_threads)


class Feeds(Repository[MessageOut]):
    table, row = messages, MessageOut

    _search = select(*columns).where(live(messages), matches, mine)
    _found = Keyset(_search, [newest_first], descending=True)
    _found_in = Keyset(
        _search.where(messages.c.thread_id == bindparam("thread_id")),
        [newest_first],
        descending=True,
    )
    _mentioning = Keyset(
        mentioned.where(mentions.c.user_id == bindparam("user_id")),
        [mentions.c.message_id],
        descending=True,
    )
    # The thread's version while the caller is a member, in the changes feed's own snapshot.
    _seen = Threads._visible.with_only_columns(threads.c.version).scalar_subquery()
    _changes = (
        select(*columns, messages.c.deleted, _seen.label("upto"))
        .where(messages.c.thread_id == bindparam("thread_id"))
        .where(messages.c.version > bindparam("since"), messages.c.version <= _seen)
        .order_by(messages.c.thread_id, messages.c.version)
        .limit(bindparam("limit"))
    )

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
        # A common word in many threads matches a great many rows: bounded, 503 past it.
        async with time_limit(self.conn, messenger_settings.search_seconds):
            rows, more = await found.page(self.conn, limit, after, **params)
        items = await Messages(self.conn).filled(self.built(rows), user_id)
        return Page(items=items, next_cursor=encode_cursor([items[-1].id]) if more else None)

    async def mentioning(
        self, user_id: int, limit: int, after: list[Any] | None
    ) -> Page[MessageOut]:
        """Messages of the user's live threads that mention it, newest first."""
        rows, more = await self._mentioning.page(self.conn, limit, after, user_id=user_id)
        items = await Messages(self.conn).filled(self.built(rows), user_id)
        return Page(items=items, next_cursor=encode_cursor([items[-1].id]) if more else None)

    async def changes(
        self, thread_id: int, user_id: int, since: int, upto: int, limit: int
    ) -> ChangesPage:
        """Messages changed after version `since`, oldest change first, up to the thread's
        version in the same snapshot: a change committed after `upto` was read (before, on
        PostgreSQL) is in, else the page would miss it and still say the client is past it."""
        params = {"thread_id": thread_id, "id": thread_id, "user_id": user_id, "since": since}
        params["limit"] = limit + 1
        rows = (await self.conn.execute(self._changes, params)).all()
        items = [
            # A tombstone keeps nothing the message said, nor the sender's client_id.
            MessageChange.model_construct(
                **{**r._mapping, "body": "", "client_id": None} if r.deleted else r._mapping
            )
            for r in rows[:limit]
        ]
        await Messages(self.conn).filled([i for i in items if not i.deleted], user_id)
        more = len(rows) > limit
        version = items[-1].version if more else rows[0].upto if rows else upto
        return ChangesPage(items=items, version=version, has_more=more)
