from fastapi import APIRouter, WebSocket

from app.realtime import CLOSE_BAD_TOKEN, serve
from app.tokens import callers

router = APIRouter(tags=["realtime"])


@router.websocket("/ws")
async def events(websocket: WebSocket, token: str = "") -> None:
    """Events of the caller's threads; see the API description for their shapes."""
    # Accept first: a close code can only travel on an accepted socket.
    await websocket.accept()
    caller = await callers.get(token, None)
    if caller is None or "regular" not in caller.granted:
        await websocket.close(CLOSE_BAD_TOKEN)
        return
    await serve(websocket, caller.id, caller.expires)
