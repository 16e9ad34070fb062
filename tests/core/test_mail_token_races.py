"""Mail tokens made at once: only the newest of a kind works, however the requests race
(two processes' job runners each running one of two reset requests, on PostgreSQL)."""

import asyncio

import httpx

from app.core.accounts import service
from app.core.db import begin
from app.core.outbox import MailRow
from tests.helpers import API2, MakeUser
from tests.servers import Inbox, token_of

pytestmark = API2


async def test_two_reset_requests_run_at_once_leave_one_token(
    client: httpx.AsyncClient, inbox: Inbox, make_user: MakeUser
) -> None:
    """The second job starts while the first has made its token, uncommitted: it must not
    leave that token working beside its own."""
    user = await make_user()
    row = MailRow(id=0, kind="reset-request", to=user["email"], data={}, attempts=1)
    made, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with begin(queued=False) as conn:
            await service.reset_requested(conn, row)
            made.set()
            await release.wait()

    async def second() -> None:
        async with begin(queued=False) as conn:
            await service.reset_requested(conn, row)

    one = asyncio.create_task(first())
    await made.wait()
    other = asyncio.create_task(second())
    await asyncio.sleep(0.3)  # on PostgreSQL, it has voided what it sees and made its own
    release.set()
    await asyncio.gather(one, other)
    # The signup's verification, then the two resets.
    tokens = [token_of(await inbox.wait(user["email"], nth)) for nth in (2, 3)]
    codes = []
    for token in tokens:
        body = {"token": token, "password": "another passphrase"}
        r = await client.post("/api/auth/password-reset/confirm", json=body)
        codes.append(r.status_code)
    assert sorted(codes) == [204, 400], codes
