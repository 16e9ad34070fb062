"""An upload streams: its bytes reach storage while the body is still arriving, the server
holds no connection or request slot meanwhile, its memory does not grow with the file,
and a body that stops (too large, too slow) leaves nothing behind. Over real sockets: a
uvicorn in this process, and a `python -m app` of its own."""

import asyncio
import hashlib
import os
from pathlib import Path

import httpx
import pytest

from app.core import metrics
from app.core.db import turn
from app.core.settings import settings
from app.core.storage import files
from app.messenger.settings import messenger_settings
from tests.helpers import MakeUser, User, bearer, fetch, multipart, sign_up, upload
from tests.messenger.conftest import Backend, post_upload
from tests.servers import clean_env, free_port, start

MiB = 1024 * 1024


def in_flight(root: Path) -> list[Path]:
    """Saves not finished: temporary files beside where their key will be."""
    return list(root.rglob(".*.part"))


async def raw_upload(
    server: str, user: User, body: bytes, headers: dict[str, str], *, stop_after: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send the request, its whole body or `stop_after` bytes of it."""
    host, port = server.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = {**headers, **user.headers, "Host": server, "Content-Length": str(len(body))}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    writer.write(f"POST /api/uploads HTTP/1.1\r\n{lines}\r\n".encode())
    writer.write(body if stop_after is None else body[:stop_after])
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), 10)
    return int(line.split()[1])


async def test_bytes_reach_storage_while_the_body_arrives(
    live_server: str, make_user: MakeUser, disk: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On disk, where a save in flight can be watched growing (a temporary file)."""
    monkeypatch.setattr(settings, "max_upload_bytes", 16 * MiB)
    me = await make_user()
    data = os.urandom(12 * MiB)
    body, headers = multipart(data, "big.bin")
    reader, writer = await raw_upload(live_server, me, body, headers, stop_after=6 * MiB)

    async def partly_saved() -> list[Path]:
        for _ in range(200):
            if (parts := in_flight(disk.root)) and parts[0].stat().st_size >= 5 * MiB:
                return parts
            await asyncio.sleep(0.02)
        raise AssertionError("nothing reached storage while the body was arriving")

    await partly_saved()
    # Half the body is in: nothing held but the socket and the file being written.
    assert turn.slots._value == settings.max_concurrent_requests
    assert metrics.UPLOADS_IN_FLIGHT._value.get() == 1
    writer.write(body[6 * MiB :])
    await writer.drain()
    assert await status_of(reader) == 201
    writer.close()
    assert in_flight(disk.root) == []
    [stored] = [p for p in disk.root.rglob("*") if p.is_file()]
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert metrics.UPLOADS_IN_FLIGHT._value.get() == 0


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_past_the_limit_stops_at_once(
    live_server: str,
    make_user: MakeUser,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    declared: bool,
) -> None:
    """Answered while the client is still sending, and nothing is kept."""
    monkeypatch.setattr(settings, "max_upload_bytes", MiB)
    me = await make_user()
    before = await backend.contents()
    body, headers = multipart(os.urandom(3 * MiB))
    if declared:  # a Content-Length that lies about what follows: counted all the same
        body = body[: 2 * MiB]
    reader, writer = await raw_upload(live_server, me, body, headers, stop_after=2 * MiB)
    assert await status_of(reader) == 413
    writer.close()
    assert await backend.contents() == before


async def test_a_slow_body_times_out_and_leaves_nothing(
    live_server: str, make_user: MakeUser, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "request_body_timeout_seconds", 1.0)
    me = await make_user()
    before = await backend.contents()
    body, headers = multipart(os.urandom(MiB))
    reader, writer = await raw_upload(live_server, me, body, headers, stop_after=MiB // 2)
    assert await status_of(reader) == 408
    writer.close()
    assert await backend.contents() == before
    assert metrics.UPLOADS_IN_FLIGHT._value.get() == 0


async def test_a_download_may_take_longer_than_a_body_may(
    client: httpx.AsyncClient,
    live_server: str,
    make_user: MakeUser,
    disk: Backend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body deadline is for what the client sends: a slow reader gets the whole file.
    (While it streams, the response listens for the client leaving: the request's receive.)"""
    me = await make_user()
    data = os.urandom(8 * MiB)  # more than the sockets' buffers hold
    up = await upload(client, me, data, "big.bin")
    monkeypatch.setattr(settings, "request_body_timeout_seconds", 1.0)
    async with (
        httpx.AsyncClient(base_url=f"http://{live_server}") as http,
        http.stream("GET", f"/api/uploads/{up['id']}", headers=me.headers) as r,
    ):
        assert r.status_code == 200
        await asyncio.sleep(1.5)  # the server waits on a full socket past the deadline
        got = await r.aread()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_the_limit_is_decided_as_the_row_is_written(
    client: httpx.AsyncClient,
    live_server: str,
    make_user: MakeUser,
    disk: Backend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Room for one more when a body starts, none when it ends: 429, and its bytes go.
    On disk, where the save in flight shows (a temporary file) before the body ends."""
    monkeypatch.setattr(messenger_settings, "max_pending_uploads", 1)
    me = await make_user()
    body, headers = multipart(os.urandom(2 * MiB))
    reader, writer = await raw_upload(live_server, me, body, headers, stop_after=MiB)
    while not in_flight(disk.root):
        await asyncio.sleep(0.01)
    other = await upload(client, me, b"quicker")  # takes the last place meanwhile
    writer.write(body[MiB:])
    await writer.drain()
    assert await status_of(reader) == 429
    writer.close()
    [kept] = [p for p in disk.root.rglob("*") if p.is_file()]
    assert kept.read_bytes() == b"quicker"
    assert [r.id for r in await fetch("SELECT id FROM upload")] == [other["id"]]


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


async def test_a_server_process_streams_a_12_mib_file_in_and_out(tmp_path: Path) -> None:
    """Memory does not grow with the file: neither the upload nor the download holds it."""
    env = clean_env(MAX_UPLOAD_BYTES=str(16 * MiB), UPLOAD_DIR=str(tmp_path / "files"))
    with start(tmp_path, env) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
            user = await sign_up(http, "streams@example.com", "Streams")
            auth = bearer(user["token"]["access_token"])

            async def round_trip(data: bytes) -> None:
                body, headers = multipart(data, "f.bin")
                r = await http.post("/api/uploads", content=body, headers={**auth, **headers})
                assert r.status_code == 201, r.text
                digest = hashlib.sha256()
                async with http.stream(
                    "GET", f"/api/uploads/{r.json()['id']}", headers=auth
                ) as got:
                    async for chunk in got.aiter_bytes():
                        digest.update(chunk)
                assert digest.hexdigest() == r.json()["sha256"] == hashlib.sha256(data).hexdigest()

            await round_trip(os.urandom(MiB))  # warmed up: code paths, buffers
            before = peak_rss_kib(server.proc.pid)
            await round_trip(os.urandom(12 * MiB))
            grown = (peak_rss_kib(server.proc.pid) - before) / 1024
            assert grown < 6, f"the server's peak memory grew by {grown:.1f} MiB"


async def test_a_storage_away_is_503_and_keeps_nothing(
    client: httpx.AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 endpoint that refuses connections: the upload cannot be kept, and that is the
    server's trouble, not the client's: 503 with Retry-After, as for a database away."""
    me = await make_user()
    for setting, value in {
        "s3_bucket": "away",
        "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",  # nothing listens
        "s3_region": "us-east-1",
        "s3_access_key_id": "key",
        "s3_secret_access_key": "secret",
    }.items():
        monkeypatch.setattr(settings, setting, value)
    await files.stop()
    try:
        r = await post_upload(client, me, *multipart(b"data"))
    finally:
        await files.stop()
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] and r.json() == {"detail": "Service temporarily unavailable"}
    assert await fetch("SELECT id FROM upload") == []
