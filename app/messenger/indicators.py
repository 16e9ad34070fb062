"""Typing indicators: told to the other members of a thread as they happen, stored
nowhere, at most one per user and thread every few seconds."""

import time
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncConnection

from app.messenger.blocks import Blocks
from app.messenger.events import changed

TYPING_SECONDS = 3.0
# Users an event names to be skipped: beyond this many it would not fit in a notification
# between processes, and then no one is told.
MAX_SKIP = 500


class Throttle:
    """At most one pass per key every `seconds`, in this process. It remembers only the
    keys that passed within the last `seconds`, and never more than `size` of them."""

    def __init__(self, seconds: float, size: int) -> None:
        self.seconds, self.size = seconds, size
        self.passed: OrderedDict[tuple[int, int], float] = OrderedDict()  # oldest first

    def allow(self, key: tuple[int, int]) -> bool:
        now = time.monotonic()
        while self.passed and (
            len(self.passed) >= self.size or now - next(iter(self.passed.values())) >= self.seconds
        ):
            self.passed.popitem(last=False)
        if key in self.passed:
            return False
        self.passed[key] = now
        return True


throttle = Throttle(TYPING_SECONDS, 100_000)


async def typing(conn: AsyncConnection, thread_id: int, user_id: int) -> None:
    """`user_id`, a member, is typing in the thread: a `typing` event to the other members,
    but not to those who block it (sent when the transaction commits, to every process)."""
    if not throttle.allow((user_id, thread_id)):
        return
    skip = (user_id, *await Blocks(conn).blockers_in(thread_id, user_id))
    if len(skip) <= MAX_SKIP:
        changed(conn, "typing", thread_id, {"user_id": user_id}, skip=skip)
