"""Liveness and readiness probes."""

from fastapi import APIRouter

from app.core.db import connect
from app.core.errors import Unavailable
from app.core.http import Route
from app.core.repository import ping

router = APIRouter(prefix="/health", tags=["health"], route_class=Route)


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
        raise Unavailable("Database unavailable") from exc
    return {"status": "ok"}
