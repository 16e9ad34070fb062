"""The messenger's one event type: a change to a thread, as sockets receive it."""

from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.events import Event, publish
from app.messenger.message_models import MessageOut
from app.messenger.thread_models import ThreadOut


@dataclass(frozen=True, slots=True)
class ThreadEvent(Event):
    """`kind` is what sockets see as `type` (`message.created`, `member.added`, …);
    `version`: the thread's version after the change (None for what changes nothing);
    `skip`: users whose sockets are not told (the typist, and those who block it)."""

    name = "thread"
    kind: str
    thread_id: int
    data: dict[str, Any]
    version: int | None = None
    skip: tuple[int, ...] = ()

    def socket_message(self) -> dict[str, Any]:
        message = {"type": self.kind, "thread_id": self.thread_id, "data": self.data}
        return message if self.version is None else {**message, "version": self.version}

    def compact(self) -> "ThreadEvent":
        """Too big to travel: the id of what changed, read back by each process."""
        return replace(self, data={"id": self.data["id"], "ref": True})


def thread_event(
    kind: str,
    thread_id: int,
    data: BaseModel | dict[str, Any],
    version: int | None = None,
    skip: tuple[int, ...] = (),
) -> ThreadEvent:
    """A change of a thread, as every reader may see it."""
    if isinstance(data, ThreadOut):  # counts differ per reader: they come from REST
        data = data.model_copy(update={"unread_count": 0, "unread_mention_count": 0})
    elif isinstance(data, MessageOut):  # so does each reaction's `me`
        reactions = [r.model_copy(update={"me": False}) for r in data.reactions]
        data = data.model_copy(update={"reactions": reactions})
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return ThreadEvent(kind, thread_id, payload, version, skip)


def changed(
    conn: AsyncConnection,
    kind: str,
    thread_id: int,
    data: BaseModel | dict[str, Any],
    version: int | None = None,
    skip: tuple[int, ...] = (),
) -> None:
    """Publish a change of a thread on the transaction; sent only if it commits."""
    publish(conn, thread_event(kind, thread_id, data, version, skip))
