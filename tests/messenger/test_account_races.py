"""An account that goes while its threads change: the deletion waits for each thread's lock
and must still end with the user in no live thread, whatever committed meanwhile."""

import asyncio

import pytest
from httpx import AsyncClient
from sqlalchemy import text

from app.core.db import engine
from tests.helpers import MakeUser, fetch, new_thread, pg_only


@pg_only
@pytest.mark.parametrize("meanwhile", ["thread deleted", "member removed"])
async def test_a_deletion_waiting_on_a_thread_that_changes_still_deletes(
    client: AsyncClient, make_user: MakeUser, meanwhile: str
) -> None:
    """The owner deletes the thread, or removes the member, while the member's account
    deletion waits for that thread's lock (made as Threads.delete and Threads.leave make
    them): the thread is no longer the member's to leave, and the deletion goes on."""
    owner, member, third = await make_user(), await make_user(), await make_user()
    changing = await new_thread(client, owner, member)
    kept = await new_thread(client, owner, member, third)
    ids = {"t": changing["id"], "u": member["id"]}
    async with engine.connect() as other:
        await other.execute(text("UPDATE thread SET version = version + 1 WHERE id = :t"), ids)
        deleting = asyncio.create_task(client.delete("/api/users/me", headers=member.headers))
        await asyncio.sleep(0.3)
        assert not deleting.done()  # it waits for the thread's lock
        if meanwhile == "thread deleted":
            await other.execute(text("UPDATE thread SET deleted = true WHERE id = :t"), ids)
        else:
            sql = "UPDATE membership SET deleted = true WHERE thread_id = :t AND user_id = :u"
            await other.execute(text(sql), ids)
        await other.commit()
    r = await deleting
    assert r.status_code == 204, r.text
    assert await fetch('SELECT id FROM "user" WHERE id = :u AND NOT deleted', **ids) == []
    live = "SELECT thread_id FROM membership WHERE user_id = :u AND NOT deleted"
    assert [t for (t,) in await fetch(live, **ids)] in ([], [changing["id"]])
    assert await fetch(live + " AND thread_id = :k", u=member["id"], k=kept["id"]) == []
    # The thread that changed meanwhile counted no change for the deletion: no gap.
    [(version,)] = await fetch("SELECT version FROM thread WHERE id = :t", **ids)
    assert version == changing["version"] + 1
