"""Messages: sending, pages, one message, edits, deletion, reactions, the changes feed,
search and mentions: each route hands its request to app.messenger.messages, where the
rules live."""

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.core.deps import CurrentUser, IdCursor, Limit, ReadDb, WriteDb
from app.core.errors import Invalid
from app.core.http import Route, errors
from app.core.models import MAX_ID, Id, Page
from app.messenger.deps import Emoji, MemberThread, SearchText
from app.messenger.feeds import Feeds
from app.messenger.message_models import (
    ChangesPage,
    MessageCreate,
    MessageOut,
    MessagePage,
    MessageUpdate,
)
from app.messenger.messages import Messages

router = APIRouter(
    prefix="/threads/{thread_id}",
    tags=["messages"],
    responses=errors(400, 401, 403, 404, 408, 413),
    route_class=Route,
)
search = APIRouter(
    prefix="/messages", tags=["messages"], responses=errors(400, 401, 403, 404), route_class=Route
)
mentions = APIRouter(
    prefix="/mentions", tags=["messages"], responses=errors(400, 401, 403), route_class=Route
)


@router.post(
    "/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    summary="Send a message",
    description="`body` is 1..4000 characters after trimming (0..4000 with an attachment). "
    "Sending again with the same `client_id` returns the original message with 200 instead "
    "of a duplicate, even when the two requests race; 409 if that original was deleted since. "
    "`reply_to_id`: a live message of the thread; `mention_ids`: members of the thread (at "
    "most 50), each of whom gets the message in `/api/mentions` and in its thread's "
    "`unread_mention_count`; `attachment_ids`: at most 10 uploads of the caller's (POST "
    "/api/uploads) that no message carries yet, shown in that order. More than "
    "`MESSAGES_PER_MINUTE` sends by one user within 60 seconds: 429.",
    responses={
        200: {"description": "A repeat: the original", "model": MessageOut},
        **errors(409, 429),
    },
)
async def send_message(
    user: CurrentUser, db: ReadDb, thread_id: Id, body: MessageCreate, response: Response
) -> MessageOut:
    message, created = await Messages(db).send(thread_id, user.id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return message


@router.get(
    "/messages",
    response_model=MessagePage,
    summary="A page of a thread's messages, oldest first",
    description="No cursor: the newest `limit` messages. `before`: the `limit` messages just "
    "older than that message id; `after`: the `limit` just newer. `has_more` says whether "
    "more lie beyond the page in the direction of travel.",
)
async def list_messages(
    db: ReadDb,
    user: CurrentUser,
    thread_id: Id,
    limit: Limit = 50,
    before: Id | None = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> MessagePage:
    if before is not None and after is not None:
        raise Invalid("before", "Give before or after, not both", where="query")
    return await Messages(db).page(thread_id, user.id, limit, before, after)


@router.get(
    "/messages/{message_id}",
    response_model=MessageOut,
    summary="One message",
    description="404 when it is deleted or not in this thread (a message a reply answers "
    "may be either).",
)
async def read_message(db: ReadDb, user: CurrentUser, thread_id: Id, message_id: Id) -> MessageOut:
    return await Messages(db).one(thread_id, message_id, user.id)


@router.patch(
    "/messages/{message_id}", response_model=MessageOut, summary="Edit a message (author only)"
)
async def edit_message(
    user: CurrentUser, db: WriteDb, thread_id: Id, message_id: Id, body: MessageUpdate
) -> MessageOut:
    return await Messages(db).edit(thread_id, message_id, user.id, body.body)


@router.delete(
    "/messages/{message_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a message (author, thread owner, or admin)",
)
async def delete_message(user: CurrentUser, db: WriteDb, thread_id: Id, message_id: Id) -> None:
    await Messages(db).remove(thread_id, message_id, user.id, "admin" in user.granted)


REACTION = "/messages/{message_id}/reactions/{emoji:text}"
EVENTS_SAY_NO_ME = (
    " The `reaction.added` / `reaction.removed` event carries the Message too, with every "
    "`me` false: events go to every member alike; each reads its own `me` from REST."
)


@router.put(
    REACTION,
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    summary="React to a message",
    description="201 when added, 200 when the caller had reacted so already; the Message in "
    "both. A message carries at most 20 different emoji (409 for one more)." + EVENTS_SAY_NO_ME,
    responses={200: {"description": "Already so", "model": MessageOut}, **errors(409)},
)
async def add_reaction(
    user: CurrentUser, db: WriteDb, thread_id: Id, message_id: Id, emoji: Emoji, response: Response
) -> MessageOut:
    message, added = await Messages(db).react(thread_id, message_id, user.id, emoji, add=True)
    if not added:
        response.status_code = status.HTTP_200_OK
    return message


@router.delete(
    REACTION,
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Take back a reaction",
    description="204 whether or not the caller had reacted so; only a change counts as one "
    "(a new version, an event)." + EVENTS_SAY_NO_ME,
)
async def remove_reaction(
    user: CurrentUser, db: WriteDb, thread_id: Id, message_id: Id, emoji: Emoji
) -> None:
    await Messages(db).react(thread_id, message_id, user.id, emoji, add=False)


@router.get(
    "/changes",
    response_model=ChangesPage,
    summary="What changed in a thread since a version (catching up)",
    description="Every message created, edited, reacted to or deleted after thread version "
    "`since`, once each in its latest state, oldest change first; deleted ones as tombstones "
    "(`deleted: true`, empty body). `version` is what the page brings the client up to: "
    "pass it back as `since` while `has_more`.",
    tags=["threads"],
)
async def list_changes(
    db: ReadDb,
    user: CurrentUser,
    thread: MemberThread,
    since: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Limit = 50,
) -> ChangesPage:
    return await Feeds(db).changes(thread.id, user.id, since, thread.version, limit)


@search.get(
    "/search",
    response_model=Page[MessageOut],
    summary="Search the messages of your threads",
    description="Messages of the caller's threads (or of `thread_id`, one of them: else 404) "
    "holding every word of `q` as a whole word, in any case, newest first. Deleted ones never.",
)
async def search_messages(
    db: ReadDb,
    user: CurrentUser,
    q: SearchText,
    thread_id: Id | None = None,
    cursor: IdCursor = None,
    limit: Limit = 50,
) -> Page[MessageOut]:
    return await Feeds(db).search(user.id, q, thread_id, limit, cursor)


@mentions.get(
    "",
    response_model=Page[MessageOut],
    summary="Messages that mention you",
    description="Messages of the caller's live threads that mention the caller, newest "
    "first. Deleted ones never.",
)
async def list_mentions(
    db: ReadDb, user: CurrentUser, cursor: IdCursor = None, limit: Limit = 50
) -> Page[MessageOut]:
    return await Feeds(db).mentioning(user.id, limit, cursor)
