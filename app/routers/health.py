from fastapi import APIRouter, HTTPException, status

from app.db import connect
from app.repositories.base import ping

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", summary="The process is serving")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="The database answers",
    responses={503: {"description": "The database does not answer"}},
)
async def ready() -> dict[str, str]:
    try:
        async with connect() as conn:
            await ping(conn)
    except Exception as exc:  # any failure to reach the database means "not ready"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Database unavailable") from exc
    return {"status": "ok"}
