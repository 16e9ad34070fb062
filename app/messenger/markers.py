"""Read markers: how far each member has read a thread (they only move forward), what lies
past them (the unread counts of the thread list), and the members' list that shows them."""

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import User
from app.core.errors import Invalid, NotFound
from app.core.models import table
from app.core.repository import live
from app.messenger.events import changed
from app.messenger.message_models import Mention, Message
from app.messenger.thread_models import Member, Membership, Thread

threads, memberships, users = table(Thread), table(Membership), table(User)
messages, mentions = table(Message), table(Mention)

# Messages after the caller's read marker, by others, not deleted: correlated to the outer
# thread and membership, so a whole page is counted in one statement.
unread = (
    select(func.count())
    .where(
        messages.c.thread_id == threads.c.id,
        messages.c.id > memberships.c.last_read_message_id,
        messages.c.author_id != memberships.c.user_id,
        live(messages),
    )
    .correlate(threads, memberships)
    .scalar_subquery()
)
# Of those, the ones that mention the caller: one range of the caller's mentions of this
# thread (an index on user, thread and message), so a thread without any costs one probe.
unread_mentions = (
    select(func.count())
    .select_from(mentions.join(messages, messages.c.id == mentions.c.message_id))
    .where(
        mentions.c.user_id == memberships.c.user_id,
        mentions.c.thread_id == threads.c.id,
        mentions.c.message_id > memberships.c.last_read_message_id,
        live(messages),
    )
    .correlate(threads, memberships)
    .scalar_subquery()
)


class Markers:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # Forward only, in one statement, so concurrent requests cannot move it back.
    _mark_read = (
        update(memberships)
        .where(
            memberships.c.thread_id == bindparam("thread"),
            memberships.c.user_id == bindparam("user"),
            live(memberships),
            memberships.c.last_read_message_id < bindparam("message"),
        )
        .values(last_read_message_id=bindparam("message"))
    )

    _message_in_thread = select(messages.c.id).where(
        messages.c.id == bindparam("message"),
        messages.c.thread_id == bindparam("thread"),
        live(messages),
    )

    async def mark_read(self, thread_id: int, user_id: int, message_id: int) -> None:
        """Everything up to `message_id` (a live message of the thread, or 0) is read."""
        params = {"thread": thread_id, "user": user_id, "message": message_id}
        if message_id and not (await self.conn.execute(self._message_in_thread, params)).first():
            raise Invalid("message_id", "No such message in this thread")
        if await self.move_marker(thread_id, user_id, message_id):
            data = {"user_id": user_id, "message_id": message_id}
            changed(self.conn, "thread.read", thread_id, data)

    async def move_marker(self, thread_id: int, user_id: int, message_id: int) -> bool:
        params = {"thread": thread_id, "user": user_id, "message": message_id}
        return (await self.conn.execute(self._mark_read, params)).rowcount > 0

    _receipts = (
        select(users.c.id, users.c.full_name, memberships.c.last_read_message_id)
        .join(memberships, memberships.c.user_id == users.c.id)
        .where(memberships.c.thread_id == bindparam("thread"), live(memberships))
        .order_by(memberships.c.id)
    )

    async def receipts(self, thread_id: int, user_id: int) -> list[Member]:
        """The thread's members with their markers, if `user_id` is one of them still: on
        PostgreSQL one removed after its route's check would read what came after."""
        rows = await self.conn.execute(self._receipts, {"thread": thread_id})
        members = [Member.model_construct(**r._mapping) for r in rows]
        if all(m.id != user_id for m in members):
            raise NotFound("Thread not found")
        return members
