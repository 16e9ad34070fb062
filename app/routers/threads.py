from fastapi import APIRouter, HTTPException, Response, status

from app.deps import ActivityCursor, CurrentUser, Limit, MemberThread, ReadDb, WriteDb
from app.models.base import Id, Page
from app.models.thread import Member, MemberAdd, ReadMarker, ThreadCreate, ThreadOut, ThreadUpdate
from app.models.user import UserPublic
from app.realtime import publish
from app.repositories.messages import Messages
from app.repositories.threads import Threads
from app.repositories.users import Users
from app.routers import errors, invalid

router = APIRouter(prefix="/threads", tags=["threads"], responses=errors(400, 401, 403, 404, 413))

OWNER_ONLY = "Only the thread owner may do this"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ThreadOut,
    summary="Start a thread",
    description="The caller becomes owner and member. Duplicate ids are ignored; an "
    "unknown, inactive or deleted member id is a 422.",
)
async def create_thread(user: CurrentUser, db: WriteDb, body: ThreadCreate) -> ThreadOut:
    others = set(body.member_ids) - {user.id}
    if await Users(db).active_ids(others) != others:
        raise invalid("member_ids", "Unknown, inactive or deleted user id")
    threads = Threads(db)
    thread = await threads.start(user.id, body.title, sorted(others))
    view = await threads.view(thread.id, user.id)
    publish(db, "thread.created", thread.id, view, view.version)
    return view


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
    return await Threads(db).view(thread.id, user.id)


@router.patch("/{thread_id}", response_model=ThreadOut, summary="Rename a thread (owner)")
async def update_thread(
    user: CurrentUser, db: WriteDb, thread_id: Id, body: ThreadUpdate
) -> ThreadOut:
    threads = Threads(db)
    thread = await threads.bump(thread_id, user.id, **body.model_dump(exclude_unset=True))
    if thread.owner_id != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, OWNER_ONLY)
    view = await threads.view(thread_id, user.id)
    publish(db, "thread.updated", thread_id, view, view.version)
    return view


@router.delete("/{thread_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a thread")
async def delete_thread(user: CurrentUser, db: WriteDb, thread_id: Id) -> None:
    threads = Threads(db)
    thread = await threads.bump(thread_id, user.id, deleted=True)
    if thread.owner_id != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, OWNER_ONLY)
    publish(db, "thread.deleted", thread_id, await threads.view(thread_id, user.id), thread.version)


@router.get(
    "/{thread_id}/members",
    response_model=list[Member],
    summary="A thread's members, with their read markers (read receipts)",
)
async def list_members(db: ReadDb, thread: MemberThread) -> list[Member]:
    return await Threads(db).members(thread.id)


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
    threads = Threads(db)
    thread = await threads.bump(thread_id, user.id)  # 404 for non-members, as everywhere
    found = await Users(db).get(body.user_id)
    if found is None or not found.is_active:
        raise invalid("user_id", "Unknown, inactive or deleted user id")
    if await threads.add_member(thread_id, body.user_id):
        publish(db, "member.added", thread_id, {"user_id": body.user_id}, thread.version)
    else:
        response.status_code = status.HTTP_200_OK
    return UserPublic.model_construct(id=found.id, full_name=found.full_name)


@router.delete(
    "/{thread_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a member, or leave",
    description="The owner may remove anyone; anyone may remove themselves. When the owner "
    "leaves, the member who joined earliest becomes owner; a thread left empty is deleted.",
)
async def remove_member(user: CurrentUser, db: WriteDb, thread_id: Id, user_id: Id) -> None:
    for event in await Threads(db).leave(thread_id, user_id, user.id):
        publish(db, *event)


@router.post(
    "/{thread_id}/read",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Mark messages read",
    description="Everything up to `message_id` is read. The marker never moves backwards; "
    "when it moves, every member's sockets get `thread.read` (read receipts).",
)
async def mark_read(user: CurrentUser, db: WriteDb, thread: MemberThread, body: ReadMarker) -> None:
    if body.message_id and not await Messages(db).exists_in(thread.id, body.message_id):
        raise invalid("message_id", "No such message in this thread")
    if await Threads(db).mark_read(thread.id, user.id, body.message_id):
        publish(db, "thread.read", thread.id, {"user_id": user.id, "message_id": body.message_id})
