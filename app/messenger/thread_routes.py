"""Threads, their members and read markers: each route hands its request to
app.messenger.threads, where the rules live."""

from fastapi import APIRouter, Response, status

from app.core.accounts.models import UserPublic
from app.core.deps import ActivityCursor, CurrentUser, Limit, ReadDb, WriteDb
from app.core.http import Route, errors
from app.core.models import Id, Page
from app.messenger import indicators
from app.messenger.deps import MemberThread
from app.messenger.markers import Markers
from app.messenger.thread_models import (
    Member,
    MemberAdd,
    ReadMarker,
    ThreadCreate,
    ThreadOut,
    ThreadUpdate,
)
from app.messenger.threads import Threads

router = APIRouter(
    prefix="/threads",
    tags=["threads"],
    responses=errors(400, 401, 403, 404, 408, 413),
    route_class=Route,
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ThreadOut,
    summary="Start a thread",
    description="The caller becomes owner and member. Duplicate ids are ignored; an "
    "unknown, inactive or deleted member id is a 422.",
)
async def create_thread(user: CurrentUser, db: WriteDb, body: ThreadCreate) -> ThreadOut:
    return await Threads(db).start(user.id, body.title, body.member_ids)


@router.get(
    "",
    response_model=Page[ThreadOut],
    summary="The caller's threads, most recent activity first",
    description="Activity is the last message, else the creation. Each thread carries the "
    "caller's `unread_count` and its `version`: a thread whose version is above the one a "
    "client has seen has changes to catch up on.",
)
async def list_threads(
    user: CurrentUser, db: ReadDb, limit: Limit = 50, cursor: ActivityCursor = None
) -> Page[ThreadOut]:
    return await Threads(db).page_for(user.id, limit, cursor)


@router.get("/{thread_id}", response_model=ThreadOut, summary="A thread")
async def read_thread(user: CurrentUser, db: ReadDb, thread: MemberThread) -> ThreadOut:
    return await Threads(db).seen(thread.id, user.id)


@router.patch("/{thread_id}", response_model=ThreadOut, summary="Rename a thread (owner)")
async def update_thread(
    user: CurrentUser, db: WriteDb, thread_id: Id, body: ThreadUpdate
) -> ThreadOut:
    return await Threads(db).rename(thread_id, user.id, **body.model_dump(exclude_unset=True))


@router.delete("/{thread_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a thread")
async def delete_thread(user: CurrentUser, db: WriteDb, thread_id: Id) -> None:
    await Threads(db).delete(thread_id, user.id)


@router.get(
    "/{thread_id}/members",
    response_model=list[Member],
    summary="A thread's members, with their read markers (read receipts)",
)
async def list_members(user: CurrentUser, db: ReadDb, thread: MemberThread) -> list[Member]:
    return await Markers(db).receipts(thread.id, user.id)


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
    user: CurrentUser, db: WriteDb, thread_id: Id, body: MemberAdd, response: Response
) -> UserPublic:
    added, new = await Threads(db).add_member(thread_id, user.id, body.user_id)
    if not new:
        response.status_code = status.HTTP_200_OK
    return added


@router.delete(
    "/{thread_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a member, or leave",
    description="The owner may remove anyone; anyone may remove themselves. When the owner "
    "leaves, the member who joined earliest becomes owner; a thread left empty is deleted.",
)
async def remove_member(user: CurrentUser, db: WriteDb, thread_id: Id, user_id: Id) -> None:
    await Threads(db).leave(thread_id, user_id, user.id)


@router.post(
    "/{thread_id}/read",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Mark messages read",
    description="Everything up to `message_id` is read. The marker never moves backwards; "
    "when it moves, every member's sockets get `thread.read` (read receipts).",
)
async def mark_read(user: CurrentUser, db: WriteDb, thread: MemberThread, body: ReadMarker) -> None:
    await Markers(db).mark_read(thread.id, user.id, body.message_id)


@router.post(
    "/{thread_id}/typing",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Say the caller is typing",
    description="The thread's other members' sockets get `typing` (data `{user_id}`), "
    "except members who block the caller. Nothing is stored. At most one event per user "
    "and thread every 3 seconds: calls in between answer 204 and send nothing.",
)
async def typing(user: CurrentUser, db: WriteDb, thread: MemberThread) -> None:
    await indicators.typing(db, thread.id, user.id)
