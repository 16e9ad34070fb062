"""Reads that race writes on PostgreSQL, where a read route runs one statement after
another, each with its own snapshot: a member removed before its read reads nothing
written after its removal, and one added after its read is not told the thread is empty."""

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text

from app.core.db import engine
from app.messenger.messages import Messages
from tests.helpers import API1, MakeUser, User, new_thread, pg_only, send


async def read_while_removed(
    client: AsyncClient, url: str, member: User, waits: str, write: str, ids: dict[str, int]
) -> Response:
    """`member` reads `url` while a raw connection holds `waits` (a table the read reaches
    after its membership check), then removes it and commits `write`, as the app makes them."""
    async with engine.connect() as removal:
        await removal.execute(text(f"LOCK TABLE {waits} IN ACCESS EXCLUSIVE MODE"))
        reading = asyncio.create_task(client.get(url, headers=member.headers))
        await asyncio.sleep(0.3)
        await removal.execute(text("UPDATE thread SET version = version + 2 WHERE id = :t"), ids)
        sql = "UPDATE membership SET deleted = true WHERE thread_id = :t AND user_id = :u"
        await removal.execute(text(sql), ids)
        await removal.execute(text(write), ids)
        await removal.commit()
    return await reading


@pg_only
@API1
@pytest.mark.parametrize("read", ["page", "one"])
async def test_a_member_removed_while_it_reads_reads_nothing_written_after(
    client: AsyncClient, make_user: MakeUser, read: str
) -> None:
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member)
    sent = await send(client, owner, thread["id"], "before")
    url = f"/api/threads/{thread['id']}/messages"
    url = url if read == "page" else f"{url}/{sent['id']}"
    ids = {"t": thread["id"], "u": member["id"], "m": sent["id"]}
    # The read waits for the messages. The removal, then an edit.
    edit = "UPDATE message SET body = 'after', version = version + 2 WHERE id = :m"
    r = await read_while_removed(client, url, member, "message", edit, ids)
    assert r.status_code == 404, r.text  # its read finds it removed: no thread to read


@pg_only
@API1
@pytest.mark.parametrize("read", ["thread", "members"])
async def test_a_member_removed_while_it_reads_the_thread_gets_404(
    client: AsyncClient, make_user: MakeUser, read: str
) -> None:
    owner, member = await make_user(), await make_user()
    thread = await new_thread(client, owner, member, title="before")
    url = f"/api/threads/{thread['id']}" + ("/members" if read == "members" else "")
    ids = {"t": thread["id"], "u": member["id"]}
    assert (await client.get(url, headers=member.headers)).status_code == 200  # a known caller
    waits = "message" if read == "thread" else '"user"'  # what the check does not read
    rename = "UPDATE thread SET title = 'after' WHERE id = :t"
    r = await read_while_removed(client, url, member, waits, rename, ids)
    assert r.status_code == 404, r.text


@API1
@pytest.mark.parametrize("read", ["page", "one"])
async def test_a_member_added_after_its_read_found_nothing_gets_404(
    client: AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """Not an empty thread: it had none to read when it read, and has messages now."""
    owner, joiner = await make_user(), await make_user()
    thread = await new_thread(client, owner)
    sent = await send(client, owner, thread["id"])
    after_the_read, added = asyncio.Event(), asyncio.Event()
    asks_again = Messages._nothing

    async def paused(self: Messages, read: Any, params: dict[str, Any]) -> None:
        after_the_read.set()  # between the read and asking again
        await added.wait()
        await asks_again(self, read, params)

    monkeypatch.setattr(Messages, "_nothing", paused)
    url = f"/api/threads/{thread['id']}/messages" + (f"/{sent['id']}" if read == "one" else "")
    reading = asyncio.create_task(client.get(url, headers=joiner.headers))
    await asyncio.wait_for(after_the_read.wait(), 10)
    monkeypatch.setattr(Messages, "_nothing", asks_again)
    add = {"user_id": joiner["id"]}
    r = await client.post(f"/api/threads/{thread['id']}/members", json=add, headers=owner.headers)
    assert r.status_code == 201, r.text
    added.set()
    r = await reading
    assert r.status_code == 404 and r.json()["detail"] == "Thread not found", r.text
