"""What routes declare in their signatures: the request's connection, the caller, the
client's address, pages."""

import ipaddress
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.accounts.models import SCOPES
from app.core.accounts.tokens import Caller, callers
from app.core.db import connect, transaction
from app.core.errors import DomainError, Forbidden, Unauthorized
from app.core.repository import decode_cursor


class RequestDb:
    """The request's one connection: opened when something first needs it (the caller
    check on a cache miss, or the route), shared by all of them, given back once the route
    is done, before the response is sent."""

    def __init__(self) -> None:
        self.conn: AsyncConnection | None = None
        self.stack = AsyncExitStack()

    async def get(self) -> AsyncConnection:
        if self.conn is None:
            self.conn = await self.stack.enter_async_context(connect())
        return self.conn

    @asynccontextmanager
    async def keep(self) -> AsyncIterator[AsyncConnection]:
        yield await self.get()

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[AsyncConnection]:
        """The request's connection if it has one; else one given back at once."""
        if self.conn is not None:
            yield self.conn
        else:
            async with connect() as conn:
                yield conn


async def request_db() -> AsyncIterator[RequestDb]:
    db = RequestDb()
    async with db.stack:
        yield db


# scope="function": given back (and a transaction committed) before the response is sent,
# so a 2xx means the data is stored.
Db = Annotated[RequestDb, Depends(request_db, scope="function")]


async def _read(db: Db) -> AsyncConnection:
    return await db.get()


async def _write(db: Db) -> AsyncIterator[AsyncConnection]:
    async with transaction(await db.get()) as conn:
        yield conn


ReadDb = Annotated[AsyncConnection, Depends(_read)]
WriteDb = Annotated[AsyncConnection, Depends(_write, scope="function")]


class ScopeMissing(Forbidden):
    def __init__(self, scopes: str) -> None:
        super().__init__("Not enough permissions")
        self.headers = {"WWW-Authenticate": f'Bearer scope="{scopes}"'}


class Bearer(OAuth2PasswordBearer):
    """The caller, in one dependency: bearer header, verified claims, live user row, the
    scopes the route needs. Who a token speaks for is mostly remembered (tokens.Callers);
    on a miss the lookup runs on the request's connection, which the route then shares.
    `holds_none`: for routes that wait (for a password hash, for a streamed body): the
    lookup's connection is given back at once, so none is held while they wait."""

    def __init__(self, holds_none: bool = False) -> None:
        super().__init__(tokenUrl="/api/auth/token", scopes=SCOPES, scheme_name="Bearer")
        self.holds_none = holds_none

    async def __call__(  # type: ignore[override]
        self, request: Request, required: SecurityScopes, db: Db
    ) -> Caller:
        token = await super().__call__(request)
        caller = await callers.get(token or "", db.borrow if self.holds_none else db.keep)
        if caller is None:
            raise Unauthorized()
        if not caller.granted.issuperset(required.scopes):
            raise ScopeMissing(required.scope_str)
        return caller


bearer, waiting_bearer = Bearer(), Bearer(holds_none=True)
AnyScopeUser = Annotated[Caller, Security(bearer)]
CurrentUser = Annotated[Caller, Security(bearer, scopes=["regular"])]
AdminUser = Annotated[Caller, Security(bearer, scopes=["admin"])]
# The caller, for a route that waits (a password hash, a streamed body) holding no connection.
UserNoDb = Annotated[Caller, Security(waiting_bearer, scopes=["regular"])]


def client_address(request: Request) -> str:
    """The socket's peer, or what a trusted proxy says (uvicorn's FORWARDED_ALLOW_IPS)."""
    host = request.client.host if request.client else "unknown"
    if host != "unknown":
        try:
            ipaddress.ip_address(host)
        except ValueError:  # only a trusted proxy's header can say so: still, no 500
            raise DomainError("Malformed client address") from None
    return host


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
            raise DomainError("Malformed cursor") from None

    return Depends(parse)


# Cursors are decoded and checked here, at the edge, never later in a query.
IdCursor = Annotated[list[Any] | None, _cursor((int,))]
ActivityCursor = Annotated[list[Any] | None, _cursor((datetime, int))]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]
