"""The users the caller blocks: each route hands its request to app.messenger.blocks, where
the rules live."""

from fastapi import APIRouter, status

from app.core.accounts.models import UserPublic
from app.core.deps import CurrentUser, ReadDb, WriteDb
from app.core.http import Route, errors
from app.core.models import Id
from app.messenger.blocks import Blocks

router = APIRouter(
    prefix="/users/me/blocks",
    tags=["users"],
    responses=errors(400, 401, 403, 408, 413),
    route_class=Route,
)


@router.get("", response_model=list[UserPublic], summary="The users you block")
async def list_blocks(user: CurrentUser, db: ReadDb) -> list[UserPublic]:
    return await Blocks(db).of(user.id)


@router.put(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Block a user",
    description="From then on that user cannot start a thread with you or add you to one "
    "(422, as for an unknown user), its mentions of you are dropped, and you get no `typing` "
    "events from it. Blocking yourself: 422; a user that does not exist or is deleted: 404.",
    responses=errors(404),
)
async def block_user(user: CurrentUser, db: WriteDb, user_id: Id) -> None:
    await Blocks(db).block(user.id, user_id)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Unblock a user",
    description="204 whether or not you blocked that user.",
)
async def unblock_user(user: CurrentUser, db: WriteDb, user_id: Id) -> None:
    await Blocks(db).unblock(user.id, user_id)
