"""Thread events back in version order (app.messenger.ordering), fed straight to InOrder:
what arrives out of order on the channel is what the hub's sockets get in order."""

import asyncio
import time

import pytest

from app.messenger.events import ThreadEvent
from app.messenger.ordering import HOLD_SECONDS, InOrder

# A busy machine may run the release timer late; it must not run it early.
LATE_BY_AT_MOST = 0.15


class Sockets:
    """What InOrder lets through, with when, and what it calls too late."""

    def __init__(self) -> None:
        self.emitted: list[tuple[int | None, float]] = []
        self.late: list[int | None] = []
        self.in_order = InOrder(self.emit, lambda e: self.late.append(e.version))

    def emit(self, event: ThreadEvent) -> None:
        self.emitted.append((event.version, time.monotonic()))

    def versions(self) -> list[int | None]:
        return [version for version, _ in self.emitted]


def event(version: int, thread_id: int = 1) -> ThreadEvent:
    return ThreadEvent("message.created", thread_id, {"id": version}, version)


@pytest.mark.timing
async def test_a_later_version_waits_for_one_that_never_comes_at_most_the_hold() -> None:
    sockets = Sockets()
    sockets.in_order.add(event(1))
    held_at = time.monotonic()
    sockets.in_order.add(event(3))  # 2 is lost
    sockets.in_order.add(event(1, thread_id=2))  # another thread does not wait
    assert sockets.versions() == [1, 1]
    await asyncio.sleep(HOLD_SECONDS + LATE_BY_AT_MOST)
    assert sockets.versions() == [1, 1, 3]
    waited = sockets.emitted[-1][1] - held_at
    assert HOLD_SECONDS <= waited <= HOLD_SECONDS + LATE_BY_AT_MOST
    sockets.in_order.add(event(2))  # after all, once 3 went out: too late to be in order
    assert sockets.late == [2] and sockets.versions() == [1, 1, 3]


async def test_versions_that_come_in_time_go_out_in_order_at_once() -> None:
    sockets = Sockets()
    sockets.in_order.add(event(1))
    sockets.in_order.add(event(4))
    sockets.in_order.add(event(3))
    await asyncio.sleep(HOLD_SECONDS / 4)
    assert sockets.versions() == [1]
    sockets.in_order.add(event(2))  # the missing one: everything held follows it
    assert sockets.versions() == [1, 2, 3, 4]
    await asyncio.sleep(HOLD_SECONDS + LATE_BY_AT_MOST)  # and the timer adds nothing
    assert sockets.versions() == [1, 2, 3, 4] and sockets.late == []
