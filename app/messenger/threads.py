"""Threads and their memberships: every rule of who may see and change a thread lives
here (members see it, its owner renames and deletes it, anyone leaves), with versions,
pages and leaving. A deleted thread's uploads go with it (app.messenger.uploads)."""

from collections import defaultdict
from contextlib import suppress
from functools import cache
from typing import Any

from sqlalchemy import Update, bindparam, exists, func, literal_column, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import User, UserPublic
from app.core.driver import Rows, fetch
from app.core.errors import Forbidden, Invalid, NotFound
from app.core.events import UserDeleted
from app.core.models import Page, table, utcnow
from app.core.repository import (
    Keyset,
    Repository,
    builder,
    encode_cursor,
    fill,
    in_ids,
    live,
    upsert,
)
from app.core.settings import settings
from app.messenger.events import changed
from app.messenger.markers import unread, unread_mentions
from app.messenger.thread_models import Block, Membership, Thread, ThreadOut, ThreadRow
from app.messenger.uploads import Uploads

threads, memberships = table(Thread), table(Membership)
blocks, users = table(Block), table(User)
OWNER_ONLY = "Only the thread owner may do this"
UNKNOWN_USER = "Unknown, inactive or deleted user id"


def is_member(thread_id: Any, user_id: Any) -> Any:
    of = memberships.c
    return exists().where(of.thread_id == thread_id, of.user_id == user_id, live(memberships))


def readable(thread_id: Any, user_id: Any) -> list[Any]:
    """Who may read a thread: it is live, and the user a live member of it."""
    return [threads.c.id == thread_id, live(threads), is_member(threads.c.id, user_id)]


activity = func.coalesce(threads.c.last_message_at, threads.c.created_at)
columns = [c for c in threads.c if c.name != "deleted"]


class Threads(Repository[ThreadRow]):
    table, row = threads, ThreadRow

    _visible = select(*columns).where(*readable(bindparam("id"), bindparam("user_id")))
    _mine = (
        select(
            *columns,
            unread.label("unread_count"),
            unread_mentions.label("unread_mention_count"),
            activity.label("activity"),
        )
        .join(memberships, memberships.c.thread_id == threads.c.id)
        .where(memberships.c.user_id == bindparam("user_id"), live(memberships), live(threads))
    )
    _one = _mine.where(threads.c.id == bindparam("id"))
    _as_seen = select(  # deleted too; nothing unread for one who is no member
        *columns, *(literal_column("0").label(n) for n in ("unread_count", "unread_mention_count"))
    ).where(threads.c.id == bindparam("id"))
    _members = (
        select(memberships.c.thread_id, users.c.id, users.c.full_name)
        .join(users, users.c.id == memberships.c.user_id)
        .where(in_ids(memberships.c.thread_id, "ids"), live(memberships))
        .order_by(memberships.c.id)
    )

    async def visible(self, thread_id: int, user_id: int) -> ThreadRow:
        """The thread, if the caller is a member; otherwise NotFound, exactly as for a
        thread that never existed, so ids reveal nothing."""
        thread = await self.first(self._visible, id=thread_id, user_id=user_id)
        if thread is None:
            raise NotFound("Thread not found")
        return thread

    @staticmethod
    @cache
    def _bump(names: frozenset[str], admin: bool) -> Update:
        """The bump that also sets `names` (of any live thread, for an admin): built once
        for each set of them."""
        stmt = update(threads).where(threads.c.id == bindparam("thread_id"), live(threads))
        if not admin:
            stmt = stmt.where(is_member(bindparam("thread_id"), bindparam("member_id")))
        return (
            stmt.values(version=threads.c.version + bindparam("step"))
            .values({name: bindparam(f"new_{name}") for name in names})
            .returning(*columns)
        )

    # Asked again once the lock is held: a bump that waited for it rereads the thread's row,
    # but PostgreSQL reads the membership as of the bump's start, before a leave committed
    # meanwhile. A new statement sees it; membership changes take turns on the lock, so the
    # answer holds until the commit. (SQLite runs one writer at a time: nothing to wait for.)
    _still_member = select(is_member(bindparam("thread_id"), bindparam("member_id")))

    async def bump(
        self, thread_id: int, member_id: int, step: int = 1, *, admin: bool = False, **values: Any
    ) -> ThreadRow:
        """Lock a live thread the caller is a member of (any live thread, for an admin) and
        count a change: versions are handed out in commit order. NotFound when it is gone
        (deleted, or left, a moment ago). `step=0` only locks it, for a change that may
        turn out to be none."""
        params = {f"new_{name}": value for name, value in values.items()}
        params |= {"thread_id": thread_id, "member_id": member_id, "step": step}
        row = (await self.conn.execute(self._bump(frozenset(values), admin), params)).first()
        recheck = row is not None and not admin and not settings.is_sqlite
        if recheck and not (await self.conn.execute(self._still_member, params)).scalar():
            row = None
        if row is None:
            raise NotFound("Thread not found")
        return self.load(row)

    async def views(self, found: Rows) -> list[ThreadOut]:
        """ThreadOut of rows of `_mine` or `_as_seen`, members in one more statement."""
        make = builder(ThreadOut, found.keys)
        views = [make(row) for row in found.rows]
        members: dict[int, list[UserPublic]] = defaultdict(list)
        if views:
            listed = await fetch(self.conn, self._members, {"ids": [v.id for v in views]})
            member = builder(UserPublic, listed.keys)  # a page may list thousands
            for row in listed.rows:
                members[row[0]].append(member(row))
        return fill(views, "members", members)

    async def view(self, thread_id: int, user_id: int) -> ThreadOut:
        found = await fetch(self.conn, self._one, {"id": thread_id, "user_id": user_id})
        if not found.rows:  # not the caller's (left it): as others see it
            found = await fetch(self.conn, self._as_seen, {"id": thread_id})
        return (await self.views(found))[0]

    async def seen(self, thread_id: int, user_id: int) -> ThreadOut:
        """The thread as a member reads it. Each statement finds the caller a member still:
        on PostgreSQL one removed after its route's check would read what came after."""
        found = await fetch(self.conn, self._one, {"id": thread_id, "user_id": user_id})
        views = await self.views(found)
        if not views or all(m.id != user_id for m in views[0].members):
            raise NotFound("Thread not found")
        return views[0]

    _pages = Keyset(_mine, [activity, threads.c.id], descending=True)

    async def page_for(self, user_id: int, limit: int, after: list[Any] | None) -> Page[ThreadOut]:
        found, more = await self._pages.page(self.conn, limit, after, user_id=user_id)
        last = dict(zip(found.keys, found.rows[-1], strict=True)) if more else {}
        cursor = encode_cursor([last["activity"], last["id"]]) if more else None
        return Page(items=await self.views(found), next_cursor=cursor)

    # Live, active users among `ids` that do not block `by`: one that does looks like one
    # that is not there. Share-locked first, until the transaction ends: a deletion of one
    # of them waits, then finds it in its threads (and leaves them); a block by one waits,
    # then holds. The lock is a statement of its own because PostgreSQL reads a statement's
    # rows as of its start, even after it waited for a lock: a block committed during the
    # wait would go unseen. (SQLite runs one writer at a time: nothing to wait for.)
    _lock = (
        select(users.c.id)
        .where(in_ids(users.c.id, "ids"))
        .order_by(users.c.id)
        .with_for_update(read=True)
    )
    _joinable = (
        select(users.c.id, users.c.full_name)
        .where(in_ids(users.c.id, "ids"), live(users), users.c.is_active == true())
        .where(
            ~exists().where(blocks.c.user_id == users.c.id, blocks.c.blocked_id == bindparam("by"))
        )
        .order_by(users.c.id)
    )

    async def _joinable_users(self, ids: set[int], by: int, field: str) -> list[UserPublic]:
        """`by` among `ids` (a new thread's owner) is locked and checked with them: deleted
        a moment ago, it gets NotFound, as a caller does from Users.lock."""
        if not ids:
            return []
        params = {"ids": sorted(ids), "by": by}
        if not settings.is_sqlite:
            await self.conn.execute(self._lock, params)
        found = (await self.conn.execute(self._joinable, params)).all()
        if len(found) != len(ids):
            if by in ids and by not in {r.id for r in found}:
                raise NotFound("User not found")
            raise Invalid(field, UNKNOWN_USER)
        return [UserPublic.model_construct(id=r.id, full_name=r.full_name) for r in found]

    async def start(self, owner_id: int, title: str | None, member_ids: list[int]) -> ThreadOut:
        """A thread of the owner and `member_ids`; an unknown, inactive or deleted one: 422.
        The owner is locked as the members are: a deletion of it waits for this thread,
        then leaves it; or went first, and the owner starts nothing."""
        others = set(member_ids) - {owner_id}
        await self._joinable_users({owner_id, *others}, owner_id, "member_ids")
        thread = await self.create(owner_id=owner_id, title=title)
        now = utcnow()
        joined = {"thread_id": thread.id, "created_at": now, "updated_at": now}
        rows = [{**joined, "user_id": uid} for uid in [owner_id, *sorted(others)]]
        await self.conn.execute(memberships.insert(), rows)
        view = await self.view(thread.id, owner_id)
        changed(self.conn, "thread.created", thread.id, view, view.version)
        return view

    async def rename(self, thread_id: int, user_id: int, **values: Any) -> ThreadOut:
        thread = await self.bump(thread_id, user_id, **values)
        if thread.owner_id != user_id:
            raise Forbidden(OWNER_ONLY)
        view = await self.view(thread_id, user_id)
        changed(self.conn, "thread.updated", thread_id, view, view.version)
        return view

    async def delete(self, thread_id: int, user_id: int) -> None:
        thread = await self.bump(thread_id, user_id, deleted=True)
        if thread.owner_id != user_id:
            raise Forbidden(OWNER_ONLY)
        await Uploads(self.conn).release_thread(thread_id)
        view = await self.view(thread_id, user_id)
        changed(self.conn, "thread.deleted", thread_id, view, thread.version)

    async def add_member(self, thread_id: int, by: int, user_id: int) -> tuple[UserPublic, bool]:
        """Any member adds a live, active user: (the user, False if already a member). The
        user is share-locked before the thread (the order a deletion takes them in); the
        partial unique index makes two racing adds one membership."""
        # 404 for non-members before a word about the user (whether it blocks them); the
        # lock below checks again, for a member who left meanwhile.
        await self.visible(thread_id, by)
        [user] = await self._joinable_users({user_id}, by, "user_id")
        await self.bump(thread_id, by, step=0)
        now = utcnow()
        stmt = (
            upsert(memberships)
            .values(thread_id=thread_id, user_id=user_id, created_at=now, updated_at=now)
            .on_conflict_do_nothing(
                index_elements=["thread_id", "user_id"], index_where=text("NOT deleted")
            )
            .returning(memberships.c.id)
        )
        added = (await self.conn.execute(stmt)).first() is not None
        if added:  # a change, so a version; a repeat counts none (no gap in the versions)
            thread = await self.bump(thread_id, by)
            changed(self.conn, "member.added", thread_id, {"user_id": user_id}, thread.version)
        return user, added

    async def leave(self, thread_id: int, user_id: int, by: int) -> None:
        """`user_id` leaves (or the owner `by` removes it). Membership changes of one thread
        take turns on its row lock, so it always keeps an owner: the earliest joined
        member when the owner goes; a thread left empty is deleted."""
        thread = await self.bump(thread_id, by)
        if user_id != by and thread.owner_id != by:
            raise Forbidden(OWNER_ONLY)
        stmt = (
            select(memberships.c.id, memberships.c.user_id)
            .where(memberships.c.thread_id == thread_id, live(memberships))
            .order_by(memberships.c.created_at, memberships.c.id)
        )
        members = (await self.conn.execute(stmt)).all()
        leaving = next((m for m in members if m.user_id == user_id), None)
        if leaving is None:
            raise NotFound("Not a member of this thread")
        await self.conn.execute(
            update(memberships).where(memberships.c.id == leaving.id).values(deleted=True)
        )
        changed(self.conn, "member.removed", thread_id, {"user_id": user_id}, thread.version)
        remaining = [m for m in members if m is not leaving]
        if remaining and thread.owner_id != user_id:
            return
        if remaining:  # the owner left: the member who joined earliest takes over
            await self.update(thread_id, owner_id=remaining[0].user_id)
        else:  # the last one out: the thread goes with them
            await self.update(thread_id, deleted=True)
            await Uploads(self.conn).release_thread(thread_id)
        kind = "thread.updated" if remaining else "thread.deleted"
        changed(self.conn, kind, thread_id, await self.view(thread_id, by), thread.version)

    async def ids_of(self, user_id: int) -> list[int]:
        """The user's live threads, by id: two deletions lock shared ones in one order."""
        stmt = (
            select(memberships.c.thread_id)
            .join(threads, threads.c.id == memberships.c.thread_id)
            .where(memberships.c.user_id == user_id, live(memberships), live(threads))
            .order_by(memberships.c.thread_id)
        )
        return list((await self.conn.execute(stmt)).scalars())


async def leave_all(conn: AsyncConnection, event: UserDeleted) -> None:
    """A deleted user leaves every thread as a leave would, in the deletion's transaction:
    no thread is kept alive, or owned, by a deleted user."""
    threads = Threads(conn)
    for thread_id in await threads.ids_of(event.user_id):
        with suppress(NotFound):  # deleted, or left, while this waited for it: none to leave
            await threads.bump(thread_id, event.user_id, step=0)  # locked, nothing counted
            await threads.leave(thread_id, event.user_id, event.user_id)
