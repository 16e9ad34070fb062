from contextlib import nullcontext
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from app.db import MAX_ID, Id, SessionDep, utcnow
from app.models.message import Message, MessageCreate, MessageOut, MessagePage, MessageUpdate
from app.models.thread import Thread
from app.realtime import publish
from app.repository import Repository
from app.routers import Limit, errors, invalid
from app.routers.threads import MemberThread, move_read_marker
from app.security import Claims, CurrentUser, token_has

router = APIRouter(
    prefix="/threads/{thread_id}/messages",
    tags=["messages"],
    responses=errors(400, 401, 403, 404, 413),
)


async def find_by_client_id(
    session: SessionDep, thread_id: int, author_id: int, client_id: str
) -> Message | None:
    stmt = (
        Repository(session, Message)
        .select(include_deleted=True)
        .where(
            Message.thread_id == thread_id,
            Message.author_id == author_id,
            Message.client_id == client_id,
        )
    )
    return (await session.exec(stmt)).first()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    summary="Send a message",
    description="`body` is 1..4000 characters after trimming. Sending again with the same "
    "`client_id` returns the original message with 200 instead of a duplicate, even when "
    "the two requests race.",
    responses={200: {"description": "A repeat: the original", "model": MessageOut}},
)
async def send_message(
    session: SessionDep,
    user: CurrentUser,
    thread: MemberThread,
    body: MessageCreate,
    response: Response,
) -> Message:
    # Plain ids: a rolled-back savepoint expires the loaded rows.
    thread_id, user_id = thread.id, user.id
    message = Message.model_validate(body, update={"thread_id": thread_id, "author_id": user_id})
    try:
        # Only a client_id can collide; without one, no savepoint (two round trips).
        async with session.begin_nested() if body.client_id else nullcontext():
            # Updating the thread first locks its row: sends to one thread take turns, so
            # message ids grow in commit order (what realtime subscribers rely on).
            now = utcnow()
            await session.exec(
                update(Thread).where(col(Thread.id) == thread_id).values(last_message_at=now)
            )
            message.created_at = message.updated_at = now
            await Repository(session, Message).create(message)
    except IntegrityError:  # a repeat: sent before, or a concurrent twin won the race
        if body.client_id is None:
            raise
        original = await find_by_client_id(session, thread_id, user_id, body.client_id)
        if original is None:
            raise
        response.status_code = status.HTTP_200_OK
        return original
    await move_read_marker(session, thread_id, user_id, message.id)
    publish(session, "message.created", thread_id, MessageOut.model_validate(message))
    return message


@router.get(
    "",
    response_model=MessagePage,
    summary="A page of a thread's messages, oldest first",
    description="No cursor: the newest `limit` messages. `before`: the `limit` messages just "
    "older than that message id; `after`: the `limit` just newer. `has_more` says whether "
    "more lie beyond the page in the direction of travel.",
)
async def list_messages(
    session: SessionDep,
    thread: MemberThread,
    limit: Limit = 50,
    before: Annotated[Id | None, Query()] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> MessagePage:
    if before is not None and after is not None:
        raise invalid("before", "Give before or after, not both", where="query")
    # Served by the (thread_id, id) index: `limit + 1` rows, whatever the depth.
    stmt = Repository(session, Message).select().where(Message.thread_id == thread.id)
    if after is not None:
        stmt = stmt.where(col(Message.id) > after).order_by(col(Message.id))
    else:
        if before is not None:
            stmt = stmt.where(col(Message.id) < before)
        stmt = stmt.order_by(col(Message.id).desc())
    rows = list((await session.exec(stmt.limit(limit + 1))).all())
    page = rows[:limit] if after is not None else rows[:limit][::-1]
    return MessagePage(
        items=[MessageOut.model_validate(m) for m in page], has_more=len(rows) > limit
    )


async def thread_message(session: SessionDep, thread: MemberThread, message_id: Id) -> Message:
    stmt = (
        Repository(session, Message)
        .select()
        .where(Message.id == message_id, Message.thread_id == thread.id)
    )
    if (message := (await session.exec(stmt)).first()) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Message not found")
    return message


ThreadMessage = Annotated[Message, Depends(thread_message)]


@router.patch(
    "/{message_id}",
    response_model=MessageOut,
    summary="Edit a message (author only)",
)
async def edit_message(
    session: SessionDep, user: CurrentUser, message: ThreadMessage, body: MessageUpdate
) -> Message:
    if message.author_id != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Only the author may edit a message")
    await Repository(session, Message).update(message, {"body": body.body, "edited_at": utcnow()})
    publish(session, "message.updated", message.thread_id, MessageOut.model_validate(message))
    return message


@router.delete(
    "/{message_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a message (author, thread owner, or admin)",
)
async def delete_message(
    session: SessionDep,
    user: CurrentUser,
    claims: Claims,
    thread: MemberThread,
    message: ThreadMessage,
) -> None:
    if user.id not in (message.author_id, thread.owner_id) and not token_has(claims, user, "admin"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "You may not delete this message")
    await Repository(session, Message).delete(message)
    publish(session, "message.deleted", message.thread_id, MessageOut.model_validate(message))
