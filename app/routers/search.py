from fastapi import APIRouter

from app.deps import CurrentUser, IdCursor, Limit, ReadDb, SearchText
from app.models.base import Id, Page
from app.models.message import MessageOut
from app.repositories.messages import Messages
from app.routers import errors

router = APIRouter(prefix="/messages", tags=["messages"], responses=errors(400, 401, 403, 404))


@router.get(
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
    return await Messages(db).search(user.id, q, thread_id, limit, cursor)
