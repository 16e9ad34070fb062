"""Apps that share one Redis for their events (EVENTS_URL) hear only their own: Redis
pub/sub ignores the database number, so the channel's name has to tell them apart."""

from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url

from app.core.settings import settings
from tests.helpers import API1, assert_silent, listen, new_thread, next_event, send, sign_up
from tests.servers import serve


@API1
@pytest.mark.parametrize(
    ("other_db", "folders"),
    [(False, ("a", "b")), (True, ("a", "b")), (False, ("my app", "my_app"))],
    ids=["same-redis-db", "other-redis-db", "names-alike-in-a-client-name"],
)
async def test_apps_sharing_a_redis_hear_only_their_own_events(
    tmp_path: Path, other_db: bool, folders: tuple[str, str]
) -> None:
    if not settings.events_url:
        pytest.skip("needs a Redis (EVENTS_URL)")
    url = make_url(settings.events_url)
    number = int(url.database or 0)
    other = url.set(database=str((number + 1) % 16)) if other_db else url
    urls = [settings.events_url, other.render_as_string(hide_password=False)]
    # Two apps, each with an SQLite file named as the other's, in a folder of its own: the
    # same ids, the same thread, different people.
    # (A Redis client's name has no spaces: a channel named as it is would be both apps'.)
    (tmp_path / folders[0]).mkdir()
    (tmp_path / folders[1]).mkdir()
    with (
        serve(tmp_path / folders[0], EVENTS_URL=urls[0]) as a,
        serve(tmp_path / folders[1], EVENTS_URL=urls[1]) as b,
    ):
        async with httpx.AsyncClient(base_url=a) as http_a, httpx.AsyncClient(base_url=b) as http_b:
            ada = await sign_up(http_a, "ada@example.com", "A")
            alan = await sign_up(http_a, "alan@example.com", "A2")
            thread_a = await new_thread(http_a, ada, alan)
            bob = await sign_up(http_b, "bob@example.com", "B")
            bea = await sign_up(http_b, "bea@example.com", "B2")
            thread_b = await new_thread(http_b, bob, bea)
            assert thread_a["id"] == thread_b["id"] and ada["id"] == bob["id"]
            ws_a = await listen(a.removeprefix("http://"), ada)
            ws_b = await listen(b.removeprefix("http://"), bob)
            await send(http_b, bea, thread_b["id"], "for b only")
            event = await next_event(ws_b)
            assert event["type"] == "message.created" and event["data"]["body"] == "for b only"
            await assert_silent(ws_a, 1)
            await ws_a.close()
            await ws_b.close()
