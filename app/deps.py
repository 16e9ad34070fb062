"""What routes declare in their signatures: the database, the caller, the thread."""

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, Security, status
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import connect, transaction
from app.models.base import Id
from app.models.message import words
from app.models.thread import ThreadRow
from app.models.user import SCOPES
from app.repositories.base import decode_cursor
from app.repositories.threads import Threads
from app.tokens import Caller, callers


async def _connection(request: Request) -> AsyncIterator[AsyncConnection]:
    async with connect() as conn:
        request.state.db = conn  # the caller's check uses it too, if it needs one
        yield conn


# One connection per request, shared by the caller's check and the route. scope="function":
# a transaction commits before the response is sent, so a 2xx means the data is stored.
ReadDb = Annotated[AsyncConnection, Depends(_connection, scope="function")]


async def _transaction(conn: ReadDb) -> AsyncIterator[AsyncConnection]:
    async with transaction(conn):
        yield conn


WriteDb = Annotated[AsyncConnection, Depends(_transaction, scope="function")]


def unauthorized(detail: str = "Could not validate credentials") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


class Bearer(OAuth2PasswordBearer):
    """The caller, in one dependency: bearer header, verified claims, live user row, the
    scopes the route needs. It holds no connection of its own after the check: a route
    that waits for a password hash declares no database and holds none meanwhile."""

    async def __call__(self, request: Request, required: SecurityScopes) -> Caller:  # type: ignore[override]
        token = await super().__call__(request)
        caller = await callers.get(token or "", getattr(request.state, "db", None))
        if caller is None:
            raise unauthorized()
        if not caller.granted.issuperset(required.scopes):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "Not enough permissions",
                headers={"WWW-Authenticate": f'Bearer scope="{required.scope_str}"'},
            )
        return caller


bearer = Bearer(tokenUrl="/api/auth/token", scopes=SCOPES)
AnyScopeUser = Annotated[Caller, Security(bearer)]
CurrentUser = Annotated[Caller, Security(bearer, scopes=["regular"])]
AdminUser = Annotated[Caller, Security(bearer, scopes=["admin"])]


async def member_thread(db: ReadDb, user: CurrentUser, thread_id: Id) -> ThreadRow:
    """The thread, if the caller is a member; otherwise 404, exactly as for a thread that
    never existed, so ids reveal nothing."""
    thread = await Threads(db).visible(thread_id, user.id)
    if thread is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Thread not found")
    return thread


MemberThread = Annotated[ThreadRow, Depends(member_thread)]


def client_address(request: Request) -> str:
    """The socket's peer, or what a trusted proxy says (uvicorn's FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]

CursorText = Annotated[
    str | None, Query(max_length=500, description="`next_cursor` of the previous page")
]


def _cursor(kinds: tuple[type, ...]) -> Any:
    def parse(cursor: CursorText = None) -> list[Any] | None:
        if cursor is None:
            return None
        try:
            return decode_cursor(cursor, kinds)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Malformed cursor") from None

    return Depends(parse)


# Cursors are decoded and checked here, at the edge, never later in a query.
IdCursor = Annotated[list[Any] | None, _cursor((int,))]
ActivityCursor = Annotated[list[Any] | None, _cursor((datetime, int))]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]

Emoji = Annotated[
    str,
    Path(
        min_length=1,
        max_length=32,
        pattern=r"^[^\s/\x00]+$",
        description="An emoji, or a short name such as `thumbs_up`: no whitespace, no `/`",
        examples=["👍"],
    ),
]


def _has_words(q: str) -> str:
    if not words(q):
        raise ValueError("q needs at least one word (letters or digits)")
    return q


SearchText = Annotated[
    str,
    Query(min_length=1, max_length=200, description="Words that must all occur, in any case"),
    AfterValidator(_has_words),
]
