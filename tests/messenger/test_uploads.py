"""Uploads over HTTP on both storage backends: what is stored and how it is served, sizes,
the pending limit, who may read and delete (names and types: test_upload_names.py)."""

import asyncio
import hashlib
from typing import Any

import httpx
import pytest
from httpx import AsyncClient

from app.core.settings import settings
from app.messenger.settings import messenger_settings
from tests.helpers import MakeUser, User, fetch, multipart, new_thread, upload
from tests.messenger.conftest import Backend, download, post_upload

UPLOAD = {"id", "filename", "content_type", "size", "sha256", "created_at"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
MiB = 1024 * 1024


async def test_upload_and_download(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    data = PNG + bytes(range(256)) * 100
    body, headers = multipart(data, "holiday.png", content_type="text/html")
    r = await post_upload(client, me, body, headers)
    assert r.status_code == 201, r.text
    up = r.json()
    assert set(up) == UPLOAD
    assert up["filename"] == "holiday.png" and up["content_type"] == "image/png"
    assert up["size"] == len(data) and up["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["created_at"].endswith(("Z", "+00:00"))
    [row] = await fetch("SELECT key FROM upload WHERE id = :id", id=up["id"])
    assert await backend.holds(row.key)

    got = await download(client, me, up["id"])
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"] == "inline; filename*=UTF-8''holiday.png"
    if backend.name == "disk":  # the signed URL's response is S3's own
        assert got.headers["content-length"] == str(len(data))
        assert got.headers["etag"] == f'"{up["sha256"]}"'
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-security-policy"] == "sandbox"


async def test_s3_answers_with_a_short_lived_signed_url(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    up = await upload(client, me, b"some bytes", "notes.txt")
    r = await client.get(f"/api/uploads/{up['id']}", headers=me.headers)
    if backend.name == "disk":
        assert r.status_code == 200
        return
    assert r.status_code == 307
    query = httpx.URL(r.headers["location"]).params
    assert 0 < int(query["X-Amz-Expires"]) <= 600


async def test_too_large_leaves_nothing(
    client: AsyncClient, make_user: MakeUser, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = await make_user()
    monkeypatch.setattr(settings, "max_upload_bytes", 6 * MiB)  # more than one S3 part
    before = await backend.contents()
    body, headers = multipart(b"\x89PNG\r\n\x1a\n" + b"x" * (6 * MiB - 8))
    r = await post_upload(client, me, body, headers)
    assert r.status_code == 201, r.text  # exactly the limit
    kept = await backend.contents()
    for size, declared in [(6 * MiB + 1, True), (6 * MiB + 1, False), (12 * MiB, False)]:
        body, headers = multipart(b"y" * size)

        async def chunks(body: bytes = body) -> Any:  # no Content-Length: counted as it comes
            for i in range(0, len(body), 64 * 1024):
                yield body[i : i + 64 * 1024]

        content: Any = body if declared else chunks()
        r = await client.post("/api/uploads", content=content, headers={**me.headers, **headers})
        assert r.status_code == 413, r.text
        assert await backend.contents() == kept
    assert len(await fetch("SELECT id FROM upload")) == 1
    assert len(kept - before) == 1


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "no file part",
        "other name",
        "json",
        "no boundary",
        "long boundary",
        "garbage",
        "cut short",
    ],
)
async def test_no_file_is_422(
    client: AsyncClient, make_user: MakeUser, backend: Backend, case: str
) -> None:
    me = await make_user()
    before = await backend.contents()
    body, headers = multipart(b"" if case == "empty" else b"data", field="file")
    if case == "no file part":
        body, headers = multipart(b"data", None, field="title", content_type="text/plain")
    elif case == "other name":
        body, headers = multipart(b"data", "a.txt", field="attachment")
    elif case == "json":
        body, headers = b'{"file": "data"}', {"Content-Type": "application/json"}
    elif case == "no boundary":
        headers = {"Content-Type": "multipart/form-data"}
    elif case == "long boundary":  # over the parser's 256 bytes
        boundary = headers["Content-Type"].split("boundary=")[1]
        body = body.replace(boundary.encode(), b"b" * 257)
        headers = {"Content-Type": "multipart/form-data; boundary=" + "b" * 257}
    elif case == "garbage":
        body = b"--nothing like the boundary\r\n\r\n"
    elif case == "cut short":  # no closing boundary: the file may have lost its end
        body = body[: body.rindex(b"\r\n--")]
    r = await post_upload(client, me, body, headers)
    assert r.status_code == 422, r.text
    assert await backend.contents() == before
    assert await fetch("SELECT id FROM upload") == []


async def test_a_media_type_in_capitals_is_an_upload_too(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    """Media types are case-insensitive: past the 1 MiB of other bodies, it still counts."""
    me = await make_user()
    body, headers = multipart(b"x" * (2 * MiB))
    kind = headers["Content-Type"].replace("multipart/form-data", "Multipart/Form-Data")
    r = await post_upload(client, me, body, {"Content-Type": kind})
    assert r.status_code == 201, r.text
    assert r.json()["size"] == 2 * MiB


async def test_only_the_first_file_part_counts(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    first, headers = multipart(b"first", "one.txt")
    second, _ = multipart(b"second", "two.txt")
    boundary = headers["Content-Type"].split("boundary=")[1]
    other = second.split(b"\r\n", 1)[1].replace(
        second.split(b"\r\n", 1)[0], f"--{boundary}".encode()
    )
    body = first.removesuffix(f"--{boundary}--\r\n".encode()) + f"--{boundary}\r\n".encode() + other
    r = await post_upload(client, me, body, headers)
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "one.txt" and r.json()["size"] == 5


async def test_pending_uploads_are_limited(
    client: AsyncClient, make_user: MakeUser, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messenger_settings, "max_pending_uploads", 2)
    me, other = await make_user(), await make_user()
    before = await backend.contents()
    thread = await new_thread(client, me)
    a, b = await upload(client, me), await upload(client, me)
    body, headers = multipart(b"third")
    r = await post_upload(client, me, body, headers)
    assert r.status_code == 429 and "retry-after" in r.headers
    assert len(await backend.contents() - before) == 2  # its bytes were never kept
    await upload(client, other)  # a limit per user
    # Attached or deleted, an upload no longer counts.
    r = await client.post(
        f"/api/threads/{thread['id']}/messages",
        json={"body": "", "attachment_ids": [a["id"]]},
        headers=me.headers,
    )
    assert r.status_code == 201, r.text
    c = await upload(client, me)
    assert (await post_upload(client, me, *multipart(b"x"))).status_code == 429
    r = await client.delete(f"/api/uploads/{b['id']}", headers=me.headers)
    assert r.status_code == 204
    await upload(client, me)
    assert {c["id"]} < {u.id for u in await fetch("SELECT id FROM upload WHERE NOT deleted")}


async def test_racing_uploads_cannot_pass_the_limit(
    client: AsyncClient, make_user: MakeUser, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messenger_settings, "max_pending_uploads", 2)
    me = await make_user()
    before = await backend.contents()
    for _ in range(3):
        results = await asyncio.gather(
            *(post_upload(client, me, *multipart(b"x" * 100_000)) for _ in range(6))
        )
        assert sorted(r.status_code for r in results) == [201, 201, 429, 429, 429, 429]
        assert len(await backend.contents() - before) == 2  # the others' bytes went
        for r in results:
            if r.status_code == 201:
                await client.delete(f"/api/uploads/{r.json()['id']}", headers=me.headers)


async def test_who_may_read_and_delete(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me, member, stranger = await make_user(), await make_user(), await make_user()
    thread = await new_thread(client, me, member)
    mine, kept = await upload(client, me, b"mine"), await upload(client, me, b"kept")

    async def status(user: User, upload_id: int, method: str = "GET") -> int:
        r = await client.request(method, f"/api/uploads/{upload_id}", headers=user.headers)
        return r.status_code

    # Unattached: the uploader's alone.
    assert await status(me, mine["id"]) in (200, 307)
    assert await status(member, mine["id"]) == 404
    assert await status(member, mine["id"], "DELETE") == 404
    assert await status(me, 2_000_000) == 404

    r = await client.post(
        f"/api/threads/{thread['id']}/messages",
        json={"body": "look", "attachment_ids": [mine["id"]]},
        headers=me.headers,
    )
    message = r.json()
    # Attached: every member reads it; no one deletes it but through the message.
    assert await status(member, mine["id"]) in (200, 307)
    assert await status(stranger, mine["id"]) == 404
    assert await status(stranger, mine["id"], "DELETE") == 404
    assert await status(member, mine["id"], "DELETE") == 403
    assert await status(me, mine["id"], "DELETE") == 409
    r = await client.delete(
        f"/api/threads/{thread['id']}/members/{member['id']}", headers=me.headers
    )
    assert r.status_code == 204
    assert await status(member, mine["id"]) == 404  # no longer a member

    # The message deleted: gone for everyone, and its bytes too.
    [row] = await fetch("SELECT key FROM upload WHERE id = :id", id=mine["id"])
    url = f"/api/threads/{thread['id']}/messages/{message['id']}"
    assert (await client.delete(url, headers=me.headers)).status_code == 204
    assert await status(me, mine["id"]) == 404
    assert await status(me, mine["id"], "DELETE") == 404

    # Deleting an unattached one deletes its bytes.
    [kept_row] = await fetch("SELECT key FROM upload WHERE id = :id", id=kept["id"])
    assert await backend.holds(kept_row.key)
    assert await status(me, kept["id"], "DELETE") == 204
    assert not await backend.holds(kept_row.key)
    assert await status(me, kept["id"]) == 404
    assert await status(me, kept["id"], "DELETE") == 404
    assert await gone(backend, row.key)  # by a job, soon after the message's deletion


async def gone(backend: Backend, key: str, seconds: float = 5) -> bool:
    for _ in range(int(seconds * 20)):
        if not await backend.holds(key):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_etag_and_if_none_match(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    up = await upload(client, me, b"cache me")
    etag = f'"{up["sha256"]}"'
    url = f"/api/uploads/{up['id']}"
    for given in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = await client.get(url, headers={**me.headers, "If-None-Match": given})
        assert r.status_code == 304 and r.content == b""
        assert r.headers["etag"] == etag
        # What a 200 would say: a browser's copy stays cached, to be asked about again.
        assert r.headers["cache-control"] == "private, no-cache"
    r = await client.get(url, headers={**me.headers, "If-None-Match": '"other"'})
    assert r.status_code == (200 if backend.name == "disk" else 307)


async def test_uploading_needs_a_login(client: AsyncClient, backend: Backend) -> None:
    before = await backend.contents()
    body, headers = multipart(b"data")
    r = await client.post("/api/uploads", content=body, headers=headers)
    assert r.status_code == 401
    assert (await client.get("/api/uploads/1")).status_code == 401
    assert await backend.contents() == before
