"""A send's writes on PostgreSQL as one statement (app.messenger.messages.Messages.send)."""

from typing import Any

from sqlalchemy import Integer, Select, String, bindparam, false, func, select, true, update
from sqlalchemy.dialects import postgresql

from app.core import limits
from app.core.models import UTCDateTime, table
from app.core.repository import live
from app.messenger.message_models import Message
from app.messenger.thread_models import Membership, Thread

messages, threads, memberships = table(Message), table(Thread), table(Membership)
columns = [c for c in messages.c if c.name != "deleted"]


def send_statement() -> Select[Any]:
    """PostgreSQL: a send's writes in one statement, one round trip under the thread's lock.
    `counted` counts the send against its sender's limit (app.core.limits: repeats count,
    sends past the limit too), and past the limit nothing else happens; `locked` locks a
    live thread and the author's live membership of it, in that order (a leave's): after a
    wait PostgreSQL rereads the rows it locked, so a leave committed meanwhile counts (a
    sub-select would read the membership as of the statement's start); `inserted` is the
    message at the thread's next version, unless its client_id was sent before; `bumped`
    counts that change on the thread (a repeat changes nothing, so counts nothing); `marked`
    moves the author's read marker to it. One row: the sender's count and its window's start
    (`sent`, `since`), the thread (`locked_id`; null: past the limit, or no such thread) and
    the message (nulls: a repeat, or nothing sent). (Parameters are not named after columns:
    in a WITH, SQLAlchemy would take those for values to set.)"""
    counted = limits.counting.cte("counted")
    locked = (
        select(threads.c.id, threads.c.version, threads.c.last_message_at)
        .join(memberships, memberships.c.thread_id == threads.c.id)
        .where(
            select(counted.c.count).scalar_subquery() <= bindparam("allowed", type_=Integer()),
            threads.c.id == bindparam("to_thread"),
            live(threads),
            memberships.c.user_id == bindparam("by_user"),
            live(memberships),
        )
        .with_for_update(of=[threads, memberships])
        .cte("locked")
    )
    # The send's time is read before it waits (for its thread, or for its sender's other
    # send): one that lands after a later-stamped send must not be older than it, or its
    # thread would move back down the list and its messages out of time order.
    at = func.greatest(bindparam("at", type_=UTCDateTime()), locked.c.last_message_at)
    values = {
        "thread_id": locked.c.id,
        "author_id": bindparam("by_user", type_=Integer()),
        "body": bindparam("text", type_=String()),
        "client_id": bindparam("client", type_=String()),
        "reply_to_id": bindparam("answers", type_=Integer()),
        "version": locked.c.version + 1,
        "created_at": at,
        "updated_at": at,
        "deleted": false(),  # inside a WITH, columns' Python-side defaults are not applied
    }
    inserted = (
        postgresql.insert(messages)
        .from_select(list(values), select(*values.values()))
        .on_conflict_do_nothing(index_elements=["thread_id", "author_id", "client_id"])
        .returning(*columns)
        .cte("inserted")
    )
    bumped = (
        update(threads)
        .where(threads.c.id == inserted.c.thread_id)
        .values(
            version=inserted.c.version,
            last_message_at=inserted.c.created_at,
            updated_at=inserted.c.created_at,
        )
        .cte("bumped")
    )
    marked = (
        update(memberships)
        .where(
            memberships.c.thread_id == inserted.c.thread_id,
            memberships.c.user_id == inserted.c.author_id,
            live(memberships),
            memberships.c.last_read_message_id < inserted.c.id,
        )
        .values(last_read_message_id=inserted.c.id, updated_at=inserted.c.created_at)
        .cte("marked")
    )
    found = counted.outerjoin(locked, true()).outerjoin(inserted, true())
    heads = [counted.c.count.label("sent"), counted.c.window_start.label("since")]
    heads.append(locked.c.id.label("locked_id"))
    return select(*heads, *inserted.c).select_from(found).add_cte(bumped, marked)
