from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response, status
from sqlalchemy import ColumnElement, false, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from app.db import Id, SessionDep
from app.models.message import Message
from app.models.thread import (
    MemberAdd,
    Membership,
    ReadMarker,
    Thread,
    ThreadCreate,
    ThreadOut,
    ThreadUpdate,
)
from app.models.user import User, UserPublic
from app.realtime import publish
from app.repository import Page, Repository, keyset_page
from app.routers import Cursor, Limit, errors, invalid
from app.security import CurrentUser

router = APIRouter(prefix="/threads", tags=["threads"], responses=errors(400, 401, 403, 404, 413))


def is_member(thread_id: Any, user_id: Any) -> ColumnElement[bool]:
    return (
        select(Membership.id)
        .where(
            Membership.thread_id == thread_id,
            Membership.user_id == user_id,
            Membership.deleted == false(),
        )
        .exists()
    )


async def member_thread(session: SessionDep, user: CurrentUser, thread_id: Id) -> Thread:
    """The thread, if the caller is a member; otherwise 404, exactly as for a thread that
    never existed, so ids reveal nothing."""
    threads = Repository(session, Thread)
    stmt = threads.select().where(Thread.id == thread_id, is_member(Thread.id, user.id))
    if (thread := (await session.exec(stmt)).first()) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Thread not found")
    return thread


MemberThread = Annotated[Thread, Depends(member_thread)]


def require_owner(thread: Thread, user: User) -> None:
    if thread.owner_id != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Only the thread owner may do this")


def unread_count(user_id: int) -> Any:
    """Messages after the caller's read marker, by others, not deleted (correlated to the
    Thread and Membership of the outer query, so a whole page is counted in one statement)."""
    return (
        select(func.count())
        .where(
            Message.thread_id == Thread.id,
            Message.id > Membership.last_read_message_id,
            Message.author_id != user_id,
            Message.deleted == false(),
        )
        .correlate(Thread, Membership)
        .scalar_subquery()
    )


def my_threads(session: SessionDep, user: User, *columns: Any) -> Any:
    """The caller's live threads as rows of (thread, unread count, *columns)."""
    return (
        Repository(session, Thread)
        .select_columns(Thread, unread_count(user.id), *columns)
        .join(Membership, col(Membership.thread_id) == Thread.id)
        .where(col(Membership.user_id) == user.id, col(Membership.deleted) == false())
    )


async def thread_views(session: SessionDep, rows: Sequence[tuple[Thread, int]]) -> list[ThreadOut]:
    """ThreadOut for each (thread, unread count), with every thread's members in one query."""
    members: dict[int, list[UserPublic]] = defaultdict(list)
    if rows:
        stmt = (  # columns, not User rows: pages list thousands of members
            Repository(session, User)
            .select_columns(Membership.thread_id, User.id, User.full_name)
            .join(Membership, col(Membership.user_id) == User.id)
            .where(
                col(Membership.thread_id).in_([t.id for t, _ in rows]),
                col(Membership.deleted) == false(),
            )
            .order_by(col(Membership.id))
        )
        for thread_id, user_id, full_name in await session.exec(stmt):
            members[thread_id].append(UserPublic.model_construct(id=user_id, full_name=full_name))
    return [
        ThreadOut.model_validate(thread, update={"members": members[thread.id], "unread_count": n})
        for thread, n in rows
    ]


async def thread_view(session: SessionDep, user: User, thread: Thread) -> ThreadOut:
    stmt = my_threads(session, user).where(Thread.id == thread.id)
    return (await thread_views(session, (await session.exec(stmt)).all()))[0]


async def live_users(session: SessionDep, ids: set[int]) -> list[User]:
    users = Repository(session, User)
    return list(
        (await session.exec(users.select().where(col(User.id).in_(ids), User.is_active))).all()
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ThreadOut,
    summary="Start a thread",
    description="The caller becomes owner and member. Duplicate ids are ignored; an "
    "unknown, inactive or deleted member id is a 422.",
)
async def create_thread(session: SessionDep, user: CurrentUser, body: ThreadCreate) -> ThreadOut:
    others = set(body.member_ids) - {user.id}
    if len(await live_users(session, others)) != len(others):
        raise invalid("member_ids", "Unknown, inactive or deleted user id")
    thread = await Repository(session, Thread).create(Thread(title=body.title, owner_id=user.id))
    session.add_all(Membership(thread_id=thread.id, user_id=uid) for uid in [user.id, *others])
    await session.flush()
    view = await thread_view(session, user, thread)
    publish(session, "thread.created", thread.id, view)
    return view


@router.get(
    "",
    response_model=Page[ThreadOut],
    summary="The caller's threads, most recent activity first",
    description="Activity is the last message, else the creation. Each thread carries the "
    "caller's `unread_count`.",
)
async def list_threads(
    session: SessionDep,
    user: CurrentUser,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ThreadOut]:
    activity = func.coalesce(Thread.last_message_at, Thread.created_at)
    rows, next_cursor = await keyset_page(
        session,
        my_threads(session, user, activity),
        keys=[activity, Thread.id],  # type: ignore[list-item]
        key_of=lambda row: (row[2], row[0].id),
        limit=limit,
        cursor=cursor,
        descending=True,
    )
    items = await thread_views(session, [(t, n) for t, n, _ in rows])
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{thread_id}", response_model=ThreadOut, summary="A thread")
async def read_thread(session: SessionDep, user: CurrentUser, thread: MemberThread) -> ThreadOut:
    return await thread_view(session, user, thread)


@router.patch("/{thread_id}", response_model=ThreadOut, summary="Rename a thread (owner)")
async def update_thread(
    session: SessionDep, user: CurrentUser, thread: MemberThread, body: ThreadUpdate
) -> ThreadOut:
    require_owner(thread, user)
    await Repository(session, Thread).update(thread, body.model_dump(exclude_unset=True))
    view = await thread_view(session, user, thread)
    publish(session, "thread.updated", thread.id, view)
    return view


@router.delete(
    "/{thread_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a thread",
)
async def delete_thread(session: SessionDep, user: CurrentUser, thread: MemberThread) -> None:
    require_owner(thread, user)
    publish(session, "thread.deleted", thread.id, await thread_view(session, user, thread))
    await Repository(session, Thread).delete(thread)


def members_of(session: SessionDep, thread: Thread) -> Any:
    return (
        Repository(session, Membership)
        .select()
        .where(Membership.thread_id == thread.id)
        .order_by(col(Membership.created_at), col(Membership.id))  # earliest joined first
    )


@router.get(
    "/{thread_id}/members",
    response_model=list[UserPublic],
    summary="A thread's members",
)
async def list_members(session: SessionDep, thread: MemberThread) -> list[User]:
    stmt = (
        Repository(session, User)
        .select()
        .join(Membership, col(Membership.user_id) == User.id)
        .where(Membership.thread_id == thread.id, Membership.deleted == false())
        .order_by(col(Membership.id))
    )
    return list((await session.exec(stmt)).all())


@router.post(
    "/{thread_id}/members",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    summary="Add a member",
    description="Any member may add a user: 201, or 200 if already a member. An unknown, "
    "inactive or deleted user id is a 422.",
    responses={200: {"description": "Already a member", "model": UserPublic}},
)
async def add_member(
    session: SessionDep, thread: MemberThread, body: MemberAdd, response: Response
) -> UserPublic:
    found = await live_users(session, {body.user_id})
    if not found:
        raise invalid("user_id", "Unknown, inactive or deleted user id")
    member = UserPublic.model_validate(found[0])  # before a rollback could expire the row
    try:
        async with session.begin_nested():
            await Repository(session, Membership).create(
                Membership(thread_id=thread.id, user_id=body.user_id)
            )
    except IntegrityError:  # already a member (the index allows one live row per pair)
        response.status_code = status.HTTP_200_OK
    else:
        publish(session, "member.added", thread.id, {"user_id": body.user_id})
    return member


@router.delete(
    "/{thread_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a member, or leave",
    description="The owner may remove anyone; anyone may remove themselves. When the owner "
    "leaves, the member who joined earliest becomes owner; a thread left empty is deleted.",
)
async def remove_member(
    session: SessionDep, user: CurrentUser, thread: MemberThread, user_id: Id
) -> None:
    # Membership changes of one thread take turns, so it always keeps an owner.
    await session.refresh(thread, with_for_update=True)
    if user_id != user.id:
        require_owner(thread, user)
    members = list((await session.exec(members_of(session, thread))).all())
    leaving = next((m for m in members if m.user_id == user_id), None)
    if leaving is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not a member of this thread")
    await Repository(session, Membership).delete(leaving)
    publish(session, "member.removed", thread.id, {"user_id": user_id})
    remaining = [m for m in members if m is not leaving]
    threads = Repository(session, Thread)
    if not remaining:
        await threads.delete(thread)
        publish(
            session, "thread.deleted", thread.id, (await thread_views(session, [(thread, 0)]))[0]
        )
    elif thread.owner_id == user_id:
        await threads.update(thread, {"owner_id": remaining[0].user_id})
        publish(
            session, "thread.updated", thread.id, (await thread_views(session, [(thread, 0)]))[0]
        )


@router.post(
    "/{thread_id}/read",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Mark messages read",
    description="Everything up to `message_id` is read. The marker never moves backwards.",
)
async def mark_read(
    session: SessionDep, user: CurrentUser, thread: MemberThread, body: ReadMarker
) -> None:
    in_thread = select(Message.id).where(
        Message.id == body.message_id, Message.thread_id == thread.id
    )
    if body.message_id and (await session.exec(in_thread)).first() is None:
        raise invalid("message_id", "No such message in this thread")
    await move_read_marker(session, thread.id, user.id, body.message_id)


async def move_read_marker(
    session: SessionDep, thread_id: int, user_id: int, message_id: int
) -> None:
    """Forward only, in one statement, so concurrent requests cannot move it back."""
    await session.exec(
        update(Membership)
        .where(
            col(Membership.thread_id) == thread_id,
            col(Membership.user_id) == user_id,
            col(Membership.deleted) == false(),
            col(Membership.last_read_message_id) < message_id,
        )
        .values(last_read_message_id=message_id)
    )
