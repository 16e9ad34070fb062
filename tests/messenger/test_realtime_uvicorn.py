"""The WebSocket's contract where uvicorn is started without `python -m app`'s options
(its own command line, or a test harness's uvicorn.Server): a client message over 4 KiB,
counted after decompression, still closes the socket with 1009."""

from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from app.core.settings import settings
from tests.helpers import API4, PASSWORD, READY, assert_silent, close_code, next_event, ws_url
from tests.servers import PLAIN_UVICORN, clean_env, start


@API4
@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_plain_uvicorn_closes_a_socket_that_sends_over_4_kib(
    tmp_path: Path, compression: str | None
) -> None:
    env = clean_env(DATABASE_URL=settings.database_url)
    with start(tmp_path, env, argv=PLAIN_UVICORN, log=tmp_path / "uvicorn.log") as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
            body = {"email": "big@example.com", "password": PASSWORD, "full_name": "B"}
            assert (await http.post("/api/auth/signup", json=body)).status_code == 201
            form = {"username": body["email"], "password": PASSWORD}
            token = (await http.post("/api/auth/token", data=form)).json()["access_token"]
        host = server.base.removeprefix("http://")
        async with connect(ws_url(host, token), compression=compression) as ws:
            assert await next_event(ws) == READY
            await ws.send("p" * 4096)  # at the limit: read and ignored
            await assert_silent(ws)
            await ws.send("x" * 4097)  # a few bytes on the wire when compressed
            assert await close_code(ws) == 1009
