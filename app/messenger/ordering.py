"""Thread events back in version order, for channels that do not keep commit order (Redis:
two processes publish right after their commits, and the later commit may arrive first).

An event whose version is not the next of its thread waits, at most HOLD_SECONDS, for the
ones before it; then it goes out anyway, and `gap` is told: a version that never comes (its
event was lost) may have been a member's removal, so the hub closes the thread's sockets,
which catch up from the changes feed. One that comes after all is too late to be in
order: `late` is told (the hub asks that thread's sockets to catch up too)."""

import asyncio
from collections.abc import Callable

from app.messenger.events import ThreadEvent

HOLD_SECONDS = 0.2
REMEMBERED = 100_000  # threads whose last version this process keeps


class InOrder:
    def __init__(
        self,
        emit: Callable[[ThreadEvent], None],
        late: Callable[[ThreadEvent], None],
        gap: Callable[[ThreadEvent], None] = lambda _: None,
    ) -> None:
        self.emit, self.late, self.gap = emit, late, gap
        self.last: dict[int, int] = {}  # thread -> the version last let through
        self.held: dict[int, list[ThreadEvent]] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}

    def add(self, event: ThreadEvent) -> None:
        thread, version = event.thread_id, event.version
        if event.kind == "thread.created":  # its first version: nothing came before
            self.last.pop(thread, None)
        last = self.last.get(thread)
        if version is not None and last is not None and version < last:
            return self.late(event)
        if version is None or last is None or version <= last + 1:
            # What changes no version, the first of a thread seen here, or the next one.
            self._through(event)
            self._release(thread, gaps=False)
            return
        self.held.setdefault(thread, []).append(event)
        if thread not in self.timers:
            loop = asyncio.get_running_loop()
            self.timers[thread] = loop.call_later(HOLD_SECONDS, self._release, thread, True)

    def reset(self) -> None:
        """Forget every thread: what came before the channel was lost says nothing of what
        comes after it (a gap across it is no news: every socket was closed then)."""
        for timer in self.timers.values():
            timer.cancel()
        self.last.clear()
        self.held.clear()
        self.timers.clear()

    def _through(self, event: ThreadEvent) -> None:
        if event.version is not None:
            if len(self.last) >= REMEMBERED and event.thread_id not in self.last:
                self.last.clear()
            self.last[event.thread_id] = max(event.version, self.last.get(event.thread_id, 0))
        self.emit(event)

    def _release(self, thread: int, gaps: bool) -> None:
        """Let through what is now next in line; with `gaps`, everything held, in order."""
        held = sorted(self.held.pop(thread, ()), key=lambda e: e.version or 0)
        while held and (gaps or (held[0].version or 0) <= self.last.get(thread, 0) + 1):
            if (held[0].version or 0) > self.last.get(thread, 0) + 1:
                self.gap(held[0])
            self._through(held.pop(0))
        if held:
            self.held[thread] = held
        elif (timer := self.timers.pop(thread, None)) is not None:
            timer.cancel()
