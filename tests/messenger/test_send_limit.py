"""The send limit: MESSAGES_PER_MINUTE sends per user within 60 seconds, counted across
processes, repeats of a client_id included; past it 429, nothing stored, no event."""

import asyncio

import pytest
from httpx import AsyncClient

from app.messenger.settings import messenger_settings
from tests.helpers import (
    MakeUser,
    assert_silent,
    fetch,
    listen,
    new_thread,
    next_event,
    send,
    sign_up,
)
from tests.messenger.conftest import SENDS_PER_MINUTE


def messages(thread_id: int) -> str:
    return f"/api/threads/{thread_id}/messages"


async def test_past_the_limit_nothing_is_sent(
    client: AsyncClient, live_server: str, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messenger_settings, "messages_per_minute", 3)
    me, b = await make_user(), await make_user()
    ws = await listen(live_server, b)
    thread, other = await new_thread(client, me, b), await new_thread(client, me, b)
    assert [(await next_event(ws))["type"] for _ in range(2)] == ["thread.created"] * 2
    await send(client, me, thread["id"], "one", client_id="c1")
    r = await client.post(
        messages(thread["id"]), json={"body": "one", "client_id": "c1"}, headers=me.headers
    )
    assert r.status_code == 200  # a repeat: it counts too
    await send(client, me, other["id"], "three")  # in any thread
    version = (await client.get(f"/api/threads/{thread['id']}", headers=me.headers)).json()[
        "version"
    ]
    for body in ({"body": "four"}, {"body": "one", "client_id": "c1"}):
        r = await client.post(messages(thread["id"]), json=body, headers=me.headers)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert [(await next_event(ws))["data"]["body"] for _ in range(2)] == ["one", "three"]
    await assert_silent(ws)
    rows = await fetch("SELECT body FROM message WHERE author_id = :a ORDER BY id", a=me["id"])
    assert [r.body for r in rows] == ["one", "three"]
    r = await client.get(f"/api/threads/{thread['id']}", headers=me.headers)
    assert r.json()["version"] == version
    # Others send as before.
    await send(client, b, thread["id"], "b is not limited")
    await ws.close()


async def test_the_limit_holds_across_processes(processes: list[str]) -> None:
    one, two = (AsyncClient(base_url=base) for base in processes)
    async with one, two:
        me = await sign_up(one, "sender@example.com", "Sender")
        thread = await new_thread(one, me)
        url = messages(thread["id"])
        sent = await asyncio.gather(
            *(
                client.post(url, json={"body": f"m{n}"}, headers=me.headers)
                for n in range(SENDS_PER_MINUTE + 3)
                for client in ([one, two][n % 2],)
            )
        )
        codes = sorted(r.status_code for r in sent)
        assert codes == [201] * SENDS_PER_MINUTE + [429] * 3, [r.text for r in sent]
        assert all("Retry-After" in r.headers for r in sent if r.status_code == 429)
        rows = await fetch("SELECT count(*) FROM message WHERE thread_id = :t", t=thread["id"])
        assert rows[0][0] == SENDS_PER_MINUTE
