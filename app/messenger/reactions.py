"""Reactions: rows of (message, user, emoji), and their summary on messages."""

from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import Integer, String, bindparam, case, delete, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.driver import fetch
from app.core.errors import Conflict
from app.core.models import UTCDateTime, table, utcnow
from app.core.repository import fill, in_ids, upsert
from app.messenger.message_models import MessageOut, Reaction, ReactionOut

M = TypeVar("M", bound=MessageOut)
reactions = table(Reaction)
MAX_EMOJI = 20  # different emoji on one message
on_message = reactions.c.message_id == bindparam("message_id")
mine = (
    on_message,
    reactions.c.user_id == bindparam("user_id"),
    reactions.c.emoji == bindparam("emoji"),
)


class Reactions:
    # One row per emoji a message carries, first used first; `me`: `user_id` is among them.
    _summary = (
        select(
            reactions.c.message_id,
            reactions.c.emoji,
            func.count().label("uses"),
            func.max(case((reactions.c.user_id == bindparam("user_id"), 1), else_=0)).label("me"),
        )
        .where(in_ids(reactions.c.message_id, "ids"))
        .group_by(reactions.c.message_id, reactions.c.emoji)
        .order_by(reactions.c.message_id, func.min(reactions.c.place))
    )
    # The place of the emoji on the message, else one after the last (callers hold the
    # thread's lock, so no other reaction takes it meanwhile).
    _place = func.coalesce(
        select(func.min(reactions.c.place))
        .where(on_message, reactions.c.emoji == bindparam("emoji"))
        .scalar_subquery(),
        select(func.coalesce(func.max(reactions.c.place), 0) + 1)
        .where(on_message)
        .scalar_subquery(),
    )
    # Added only while the message has fewer than MAX_EMOJI different ones, or this one
    # already; a twin that got there first makes it add nothing.
    _add = (
        upsert(reactions)
        .from_select(
            ["message_id", "user_id", "emoji", "created_at", "place"],
            select(
                bindparam("message_id", type_=Integer()),
                bindparam("user_id", type_=Integer()),
                bindparam("emoji", type_=String()),
                bindparam("now", type_=UTCDateTime()),
                _place,
            ).where(
                or_(
                    select(literal(1))
                    .where(on_message, reactions.c.emoji == bindparam("emoji"))
                    .exists(),
                    select(func.count(reactions.c.emoji.distinct()))
                    .where(on_message)
                    .scalar_subquery()
                    < MAX_EMOJI,
                )
            ),
        )
        .on_conflict_do_nothing(index_elements=["message_id", "user_id", "emoji"])
        .returning(reactions.c.id)
    )
    _had = select(reactions.c.id).where(*mine)
    _remove = delete(reactions).where(*mine)

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, message_id: int, user_id: int, emoji: str) -> bool:
        """True if added, False if the user had reacted so already; Conflict beyond the cap.
        Callers hold the thread's lock, so no other reaction can slip in between."""
        params = {"message_id": message_id, "user_id": user_id, "emoji": emoji}
        if (await self.conn.execute(self._add, {**params, "now": utcnow()})).first():
            return True
        if (await self.conn.execute(self._had, params)).first() is None:
            raise Conflict(f"A message carries at most {MAX_EMOJI} different reactions")
        return False

    async def remove(self, message_id: int, user_id: int, emoji: str) -> bool:
        params = {"message_id": message_id, "user_id": user_id, "emoji": emoji}
        return (await self.conn.execute(self._remove, params)).rowcount > 0

    async def of(self, items: Sequence[M], user_id: int) -> list[M]:
        """`items` with their reactions filled in: one statement, however many."""
        found: dict[int, list[ReactionOut]] = defaultdict(list)
        if items:
            params = {"ids": [m.id for m in items], "user_id": user_id}
            for message_id, emoji, uses, me in (await fetch(self.conn, self._summary, params)).rows:
                found[message_id].append(
                    ReactionOut.model_construct(emoji=emoji, count=uses, me=bool(me))
                )
        return fill(items, "reactions", found)
