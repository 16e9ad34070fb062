"""What happens to uploads over time: unattached ones expire, a deleted one's bytes are
deleted by a job that is retried until it works, and the hourly sweep deletes bytes
without a row and forgets rows without bytes. The chores are run here as the job runner
runs them every hour (`runner.chore()`); the jobs run in the background as queued."""

import asyncio
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient

from app.core.jobs import runner
from app.core.settings import settings
from app.core.storage import files
from app.messenger import upload_lifecycle
from app.messenger.settings import messenger_settings
from tests.helpers import MakeUser, User, fetch, multipart, new_thread, upload
from tests.messenger.conftest import Backend


async def key_of(upload_id: int) -> str:
    [row] = await fetch("SELECT key FROM upload WHERE id = :id", id=upload_id)
    return str(row.key)


async def until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


async def attach(client: AsyncClient, user: User, thread: Any, ids: list[int]) -> Any:
    r = await client.post(
        f"/api/threads/{thread['id']}/messages",
        json={"body": "", "attachment_ids": ids},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def saved(data: bytes = b"orphan") -> str:
    """Bytes in storage that no row names, as a crash between save and insert leaves."""
    key = secrets.token_hex(16)

    async def chunks() -> Any:
        yield data

    await files().save(key, chunks())
    return key


async def test_unattached_uploads_expire(
    client: AsyncClient, make_user: MakeUser, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    old, sent = await upload(client, me, b"old"), await upload(client, me, b"sent")
    await attach(client, me, thread, [sent["id"]])
    old_key, sent_key = await key_of(old["id"]), await key_of(sent["id"])
    monkeypatch.setattr(messenger_settings, "upload_expire_minutes", 0)
    # Past its time it is gone for requests at once, before any chore ran.
    url = f"/api/uploads/{old['id']}"
    assert (await client.get(url, headers=me.headers)).status_code == 404
    assert (await client.delete(url, headers=me.headers)).status_code == 404
    r = await client.post(
        f"/api/threads/{thread['id']}/messages",
        json={"body": "", "attachment_ids": [old["id"]]},
        headers=me.headers,
    )
    assert r.status_code == 422
    assert await backend.holds(old_key)

    await runner.chore()

    async def old_gone() -> bool:
        return not await backend.holds(old_key)

    await until(old_gone)
    assert await backend.holds(sent_key)  # attached: it stays
    assert (await client.get(f"/api/uploads/{sent['id']}", headers=me.headers)).status_code in (
        200,
        307,
    )
    [row] = await fetch("SELECT deleted, purged FROM upload WHERE id = :id", id=old["id"])
    assert row.deleted and row.purged


async def test_a_deleted_thread_takes_its_attachments_with_it(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    deleted, left = await new_thread(client, me), await new_thread(client, me)
    ups = [await upload(client, me, name.encode()) for name in ("deleted", "left")]
    for thread, up in zip((deleted, left), ups, strict=True):
        await attach(client, me, thread, [up["id"]])
    keys = [await key_of(up["id"]) for up in ups]
    r = await client.delete(f"/api/threads/{deleted['id']}", headers=me.headers)
    assert r.status_code == 204
    # The last one out deletes the thread too.
    url = f"/api/threads/{left['id']}/members/{me['id']}"
    assert (await client.delete(url, headers=me.headers)).status_code == 204

    for up in ups:  # its uploader no longer reads it
        assert (await client.get(f"/api/uploads/{up['id']}", headers=me.headers)).status_code == 404

    async def bytes_gone() -> bool:
        return not [key for key in keys if await backend.holds(key)]

    await until(bytes_gone, seconds=5)  # by a job each, soon after


async def test_the_sweep_deletes_orphans_and_forgets_lost_files(
    client: AsyncClient, make_user: MakeUser, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = await make_user()
    kept, lost = await upload(client, me, b"kept"), await upload(client, me, b"lost")
    kept_key, lost_key = await key_of(kept["id"]), await key_of(lost["id"])
    await files().delete(lost_key)  # behind the app's back
    orphan = await saved()
    # Bytes without a row are swept once they are older than any save in flight could be.
    monkeypatch.setattr(upload_lifecycle, "ORPHAN_AGE", timedelta(0))

    await runner.chore()

    assert not await backend.holds(orphan)
    assert await backend.holds(kept_key)
    r = await client.get(f"/api/uploads/{lost['id']}", headers=me.headers)
    assert r.status_code == 404
    r = await client.get(f"/api/uploads/{kept['id']}", headers=me.headers)
    assert r.status_code in (200, 307)


async def test_the_sweep_spares_young_orphans(disk: Backend) -> None:
    """A save whose row is not written yet looks like an orphan: only old ones go. (On
    disk: a file's time can be set back, an object's cannot.)"""
    young, old = await saved(), await saved()
    hours_ago = time.time() - 2 * 3600
    os.utime(disk.root / old[:2] / old, (hours_ago, hours_ago))
    await runner.chore()
    assert await disk.holds(young) and not await disk.holds(old)


async def test_the_sweep_deletes_what_a_killed_save_left(disk: Backend) -> None:
    """A process killed mid-upload leaves the temp file of its save: once old, it goes;
    young, it may be a save in flight, and stays."""
    keys = secrets.token_hex(16), secrets.token_hex(16)
    young, old = [disk.root / key[:2] / f".{key}.k3x9_a1b.part" for key in keys]
    for temp in young, old:
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(b"half a file")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    await runner.chore()
    assert young.exists() and not old.exists()


async def test_a_failed_purge_is_retried(
    client: AsyncClient,
    make_user: MakeUser,
    disk: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    me = await make_user()
    thread = await new_thread(client, me)
    up = await upload(client, me)
    message = await attach(client, me, thread, [up["id"]])
    key = await key_of(up["id"])
    # A storage that fails to delete (on disk, where a failure can be made): where the
    # key's folder should be lies a file.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / key[:2]).write_bytes(b"")
    monkeypatch.setattr(settings, "upload_dir", str(broken))
    await files.stop()

    url = f"/api/threads/{thread['id']}/messages/{message['id']}"
    assert (await client.delete(url, headers=me.headers)).status_code == 204

    async def claimed() -> bool:
        rows = await fetch("SELECT attempts FROM mail WHERE kind = 'upload.purge'")
        return bool(rows) and rows[0].attempts >= 1

    await until(claimed)
    await asyncio.sleep(0.5)  # it fails within milliseconds; its retry waits 2 seconds
    [job] = await fetch("SELECT attempts, sent_at FROM mail WHERE kind = 'upload.purge'")
    assert (job.attempts, job.sent_at) == (1, None)
    assert await disk.holds(key)
    monkeypatch.setattr(settings, "upload_dir", str(disk.root))
    await files.stop()

    async def purged() -> bool:
        return not await disk.holds(key)

    await until(purged)  # the retry

    async def done() -> bool:
        [job] = await fetch("SELECT attempts, sent_at FROM mail WHERE kind = 'upload.purge'")
        return job.attempts == 2 and job.sent_at is not None

    await until(done)
    # Its failure was logged by the upload's id, never by its key (in a path on disk).
    assert f"upload {up['id']}: bytes not deleted" in caplog.text and key not in caplog.text


async def test_a_sweep_waiting_on_the_storage_holds_up_no_write(
    client: AsyncClient, make_user: MakeUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hourly sweep lists the storage, which may be slow or away for minutes (here an
    S3 endpoint that takes the connection and never answers): meanwhile requests write as
    ever, on SQLite too, where a transaction held that long would hold its one write lock."""
    me = await make_user()
    asked = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.set()
        await reader.read()  # until the client gives up

    hole = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    monkeypatch.setattr(settings, "s3_bucket", "away")
    monkeypatch.setattr(settings, "s3_endpoint_url", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(settings, "s3_region", "us-east-1")
    monkeypatch.setattr(settings, "s3_access_key_id", "key")
    monkeypatch.setattr(settings, "s3_secret_access_key", "secret")
    await files.stop()
    chore = asyncio.create_task(runner.chore())
    try:
        await asyncio.wait_for(asked.wait(), 10)
        await asyncio.wait_for(new_thread(client, me), 5)
    finally:
        chore.cancel()
        await asyncio.gather(chore, return_exceptions=True)
        hole.close()
        await files.stop()


@pytest.mark.parametrize("change", ["deleted", "deactivated"])
async def test_an_upload_whose_uploader_goes_while_it_arrives_keeps_nothing(
    client: AsyncClient, make_user: MakeUser, disk: Backend, change: str
) -> None:
    """The token is checked before the body arrives: an account deleted or deactivated
    meanwhile records no upload (nobody could ever read or delete it), and its bytes go."""
    me, admin = await make_user(), await make_user(scopes=["regular", "admin"])
    body, headers = multipart(b"x" * 1000, "late.txt")
    arrived = asyncio.Event()

    async def slow() -> Any:
        yield body[:100]
        await arrived.wait()
        yield body[100:]

    posting = asyncio.create_task(
        client.post("/api/uploads", content=slow(), headers={**me.headers, **headers})
    )
    await asyncio.sleep(0.3)
    url = f"/api/users/{me['id']}"
    r = await (
        client.delete(url, headers=admin.headers)
        if change == "deleted"
        else client.patch(url, json={"is_active": False}, headers=admin.headers)
    )
    assert r.status_code in (200, 204)
    arrived.set()
    assert (await posting).status_code == 404
    assert await fetch("SELECT id FROM upload") == []
    assert await disk.contents() == set()
