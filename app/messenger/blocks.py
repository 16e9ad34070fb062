"""Blocks: the users a user blocks. What a block forbids is checked where it applies:
`Threads._joinable` (starting a thread with the blocker, adding it to one), `Mentions.allowed`
(mentions of it are dropped) and `Blocks.blockers_in` (typing does not reach it)."""

from sqlalchemy import Integer, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import User, UserPublic
from app.core.accounts.users import Users
from app.core.errors import Invalid, NotFound
from app.core.models import UTCDateTime, table, utcnow
from app.core.repository import live, upsert
from app.messenger.thread_models import Block, Membership

blocks, users, memberships = table(Block), table(User), table(Membership)
mine = (
    blocks.c.user_id == bindparam("user_id"),
    blocks.c.blocked_id == bindparam("blocked_id"),
)


class Blocks:
    # A row for a live user (none for an unknown or deleted one); blocking again keeps the
    # first row, and still answers with it.
    _add = (
        upsert(blocks)
        .from_select(
            ["user_id", "blocked_id", "created_at"],
            select(
                bindparam("user_id", type_=Integer()),
                users.c.id,
                bindparam("now", type_=UTCDateTime()),
            ).where(users.c.id == bindparam("blocked_id"), live(users)),
        )
        .on_conflict_do_update(
            index_elements=["user_id", "blocked_id"], set_={"created_at": blocks.c.created_at}
        )
        .returning(blocks.c.blocked_id)
    )
    _remove = delete(blocks).where(*mine)
    _of = (
        select(users.c.id, users.c.full_name)
        .join(blocks, blocks.c.blocked_id == users.c.id)
        .where(blocks.c.user_id == bindparam("user_id"), live(users))
        .order_by(blocks.c.blocked_id)
    )
    # Members of a thread who block a user: from the thread's members, one key probe each.
    _blockers_in = (
        select(blocks.c.user_id)
        .join(memberships, memberships.c.user_id == blocks.c.user_id)
        .where(
            memberships.c.thread_id == bindparam("thread_id"),
            live(memberships),
            blocks.c.blocked_id == bindparam("blocked_id"),
        )
    )

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def block(self, user_id: int, blocked_id: int) -> None:
        """`user_id` blocks `blocked_id` (again: nothing changes). Not itself; a user that
        does not exist or is deleted: NotFound."""
        if blocked_id == user_id:
            raise Invalid("user_id", "You cannot block yourself", where="path")
        params = {"user_id": user_id, "blocked_id": blocked_id}
        # The blocker's own row, locked as an update would lock it. An add of the blocker to
        # a thread share-locks that row (`Threads._joinable`): one that locked it first
        # commits before the block; one that comes later waits for the block, then sees it.
        await Users(self.conn).lock(user_id)
        if (await self.conn.execute(self._add, {**params, "now": utcnow()})).first() is None:
            raise NotFound("User not found")

    async def unblock(self, user_id: int, blocked_id: int) -> None:
        await self.conn.execute(self._remove, {"user_id": user_id, "blocked_id": blocked_id})

    async def of(self, user_id: int) -> list[UserPublic]:
        """The live users `user_id` blocks."""
        rows = await self.conn.execute(self._of, {"user_id": user_id})
        return [UserPublic.model_construct(id=r.id, full_name=r.full_name) for r in rows]

    async def blockers_in(self, thread_id: int, user_id: int) -> list[int]:
        """The members of the thread who block `user_id`."""
        params = {"thread_id": thread_id, "blocked_id": user_id}
        return list((await self.conn.execute(self._blockers_in, params)).scalars())
