"""Mentions: the users a message names, checked and written with it, and their ids on
messages."""

from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import bindparam, exists, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.driver import fetch
from app.core.errors import Invalid
from app.core.models import table
from app.core.repository import fill, in_ids, live
from app.messenger.message_models import Mention, MessageOut
from app.messenger.thread_models import Block, Membership

M = TypeVar("M", bound=MessageOut)
mentions, memberships, blocks = table(Mention), table(Membership), table(Block)


class Mentions:
    _of = (
        select(mentions.c.message_id, mentions.c.user_id)
        .where(in_ids(mentions.c.message_id, "ids"))
        .order_by(mentions.c.message_id, mentions.c.user_id)
    )
    # The thread's members among `ids`, each with whether it blocks the author.
    _members = select(
        memberships.c.user_id,
        exists()
        .where(
            blocks.c.user_id == memberships.c.user_id,
            blocks.c.blocked_id == bindparam("author_id"),
        )
        .label("blocks"),
    ).where(
        memberships.c.thread_id == bindparam("thread_id"),
        in_ids(memberships.c.user_id, "ids"),
        live(memberships),
    )

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def allowed(self, thread_id: int, author_id: int, ids: Sequence[int]) -> list[int]:
        """Whom of `ids` a message of `author_id` mentions, ascending. Each must be a member
        of the thread (else Invalid); duplicates and the author go, and so, silently, does
        anyone who blocks the author."""
        wanted = set(ids) - {author_id}
        if not wanted:
            return []
        params = {"thread_id": thread_id, "author_id": author_id, "ids": sorted(wanted)}
        found = (await self.conn.execute(self._members, params)).all()
        if len(found) != len(wanted):
            raise Invalid("mention_ids", "Only members of the thread can be mentioned")
        return sorted(r.user_id for r in found if not r.blocks)

    async def add(self, message: MessageOut, user_ids: list[int]) -> None:
        if user_ids:  # one statement for them all
            rows = [
                {"message_id": message.id, "user_id": u, "thread_id": message.thread_id}
                for u in user_ids
            ]
            await self.conn.execute(insert(mentions).values(rows))

    async def of(self, items: Sequence[M]) -> list[M]:
        """`items` with their `mention_ids` filled in: one statement, however many."""
        found: dict[int, list[int]] = defaultdict(list)
        if items:
            ids = [m.id for m in items]
            for message_id, user_id in (await fetch(self.conn, self._of, {"ids": ids})).rows:
                found[message_id].append(user_id)
        return fill(items, "mention_ids", found)
