"""The storage layer on both backends: a folder in tmp_path, and S3 as moto's real HTTP
server on a free port (the s3_endpoint fixture; no mocks of the client: requests go over
the wire)."""

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from app.core.settings import settings
from app.core.storage import KEY, DiskStorage, S3Storage, Storage, make_storage
from tests.helpers import S3_BUCKET

MiB = 1024 * 1024
BAD_KEYS = ["../etc/passwd", "A" * 32, "a" * 31, "a" * 33, "a" * 32 + "\n", ""]


@dataclass
class Backend:
    name: str
    storage: Storage
    # Everything a save of this key left in the backend: files and temp files on disk;
    # objects and pending multipart uploads on S3.
    leftovers: Callable[[str], Awaitable[list[str]]]


def s3_storage_at(endpoint: str) -> S3Storage:
    return S3Storage(
        S3_BUCKET,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
    )


@pytest.fixture(scope="session")
async def s3_storage(s3_client: Any, s3_endpoint: str) -> AsyncIterator[S3Storage]:
    storage = s3_storage_at(s3_endpoint)
    yield storage
    await storage.close()


@pytest.fixture(params=["disk", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "disk":
        root = tmp_path / "uploads"

        async def on_disk(key: str) -> list[str]:
            return [str(p.relative_to(root)) for p in root.rglob(f"*{key}*")]

        return Backend("disk", DiskStorage(root), on_disk)

    client = request.getfixturevalue("s3_client")

    async def in_bucket(key: str) -> list[str]:
        objects = await client.list_objects_v2(Bucket=S3_BUCKET, Prefix=key)
        uploads = await client.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=key)
        return [o["Key"] for o in objects.get("Contents", [])] + [
            f"upload of {u['Key']}" for u in uploads.get("Uploads", [])
        ]

    return Backend("s3", request.getfixturevalue("s3_storage"), in_bucket)


def new_key() -> str:
    return secrets.token_hex(16)


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def stored(storage: Storage) -> dict[str, datetime]:
    listing = storage.keys()  # (a variable: ruff's SIM118 takes `.keys()` for a dict's)
    return {key: when async for key, when in listing}


async def read(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.open(key)])


@pytest.mark.parametrize("size", [0, 1000, 12 * MiB + 123], ids=["empty", "small", "3-parts"])
async def test_round_trip(backend: Backend, size: int) -> None:
    key, data = new_key(), secrets.token_bytes(size)
    await backend.storage.save(key, chunked(data, 100_000))  # chunks that do not divide a part
    assert await read(backend.storage, key) == data
    assert await backend.leftovers(key) == (
        [f"{key[:2]}/{key}"] if backend.name == "disk" else [key]
    )


async def test_a_large_file_goes_up_in_parts(s3_storage: S3Storage, s3_client: Any) -> None:
    key = new_key()
    await s3_storage.save(key, chunked(secrets.token_bytes(12 * MiB)))
    head = await s3_client.head_object(Bucket=S3_BUCKET, Key=key)
    # A multipart object's ETag ends in its part count: 5 + 5 + 2 MiB.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == 12 * MiB


async def test_open_streams_in_chunks(backend: Backend) -> None:
    key = new_key()
    await backend.storage.save(key, chunked(secrets.token_bytes(MiB), MiB))
    sizes = [len(chunk) async for chunk in backend.storage.open(key)]
    assert sum(sizes) == MiB and max(sizes) <= 64 * 1024


async def test_a_failed_save_leaves_nothing(backend: Backend) -> None:
    key = new_key()
    seen_in_flight: list[str] = []

    async def until_the_client_goes_away() -> AsyncIterator[bytes]:
        async for chunk in chunked(secrets.token_bytes(6 * MiB)):  # more than one part
            yield chunk
        # Something is in flight (temp file, multipart upload), but not under the key's name.
        seen_in_flight.extend(await backend.leftovers(key))
        with pytest.raises(FileNotFoundError):
            await read(backend.storage, key)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError, match="client went away"):
        await backend.storage.save(key, until_the_client_goes_away())
    assert seen_in_flight  # else the check below proves nothing
    assert await backend.leftovers(key) == []
    with pytest.raises(FileNotFoundError):
        await read(backend.storage, key)


async def test_delete_is_idempotent(backend: Backend) -> None:
    key = new_key()
    await backend.storage.save(key, chunked(b"bytes"))
    await backend.storage.delete(key)
    with pytest.raises(FileNotFoundError):
        await read(backend.storage, key)
    assert await backend.leftovers(key) == []
    await backend.storage.delete(key)
    await backend.storage.delete(new_key())  # never saved


async def test_keys_lists_what_was_saved(backend: Backend) -> None:
    saved = {new_key() for _ in range(3)}
    for key in saved:
        await backend.storage.save(key, chunked(b"x"))
    deleted = saved.pop()
    await backend.storage.delete(deleted)
    listed = await stored(backend.storage)
    assert saved <= set(listed) and deleted not in listed
    for key in saved:
        assert listed[key].utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - listed[key]) < timedelta(minutes=1)


async def test_keys_skips_what_is_not_a_key(backend: Backend, s3_client: Any) -> None:
    """A stranger's file is no orphan for the sweep to delete."""
    key = new_key()
    await backend.storage.save(key, chunked(b"x"))
    if isinstance(backend.storage, DiskStorage):
        folder = backend.storage.root / key[:2]
        (folder / ".DS_Store").write_bytes(b"x")
        (folder / ("ff" * 16 if key[:2] != "ff" else "00" * 16)).write_bytes(b"x")  # misplaced
        (folder / "notes.txt").write_bytes(b"x")
    else:
        await s3_client.put_object(Bucket=S3_BUCKET, Key="someone-elses.txt", Body=b"x")
        await s3_client.put_object(Bucket=S3_BUCKET, Key=f"{key}/x", Body=b"x")
    listed = list(await stored(backend.storage))
    assert key in listed and all(KEY.fullmatch(k) for k in listed)
    if backend.name == "disk":  # the bucket is shared with the other tests
        assert listed == [key]


async def test_a_save_cut_short_is_listed_and_deleted_by_its_key(tmp_path: Path) -> None:
    """A killed process leaves its save's temp file on disk: listed under its key, the sweep
    can tell a save in flight (young) from one cut short (old) and delete it by its key."""
    storage = DiskStorage(tmp_path)
    key = new_key()
    temp = tmp_path / key[:2] / f".{key}.k3x9_a1b.part"  # as save names it
    temp.parent.mkdir()
    temp.write_bytes(b"half a file")
    assert list(await stored(storage)) == [key]
    await storage.delete(key)
    assert not temp.exists()


@pytest.mark.parametrize("bad", BAD_KEYS)
async def test_a_bad_key_is_refused(backend: Backend, bad: str) -> None:
    storage = backend.storage
    with pytest.raises(ValueError):
        await storage.save(bad, chunked(b"x"))
    with pytest.raises(ValueError):
        storage.open(bad)  # at the call, before any read
    with pytest.raises(ValueError):
        await storage.delete(bad)
    with pytest.raises(ValueError):
        await storage.url(bad, filename="a", content_type="text/plain", inline=True)


@pytest.mark.parametrize("inline", [True, False])
async def test_url_is_a_short_lived_presigned_get(s3_storage: S3Storage, inline: bool) -> None:
    key, data = new_key(), secrets.token_bytes(3000)
    await s3_storage.save(key, chunked(data))
    name = 'Résumé, final "v2"; 100%.pdf'
    url = await s3_storage.url(key, filename=name, content_type="application/pdf", inline=inline)
    query = parse_qs(urlsplit(url).query)
    expires = int((query.get("X-Amz-Expires") or query["Expires"])[0])
    assert 0 < expires <= 600
    async with httpx.AsyncClient() as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["content-type"] == "application/pdf"
    kind = "inline" if inline else "attachment"
    assert r.headers["content-disposition"] == f"{kind}; filename*=UTF-8''{quote(name, safe='')}"


async def test_disk_has_no_url(tmp_path: Path) -> None:
    storage: Storage = DiskStorage(tmp_path)
    key = new_key()
    await storage.save(key, chunked(b"x"))
    assert await storage.url(key, filename="a", content_type="text/plain", inline=True) is None


async def test_s3_reopens_after_close(s3_client: Any, s3_endpoint: str) -> None:
    storage = s3_storage_at(s3_endpoint)
    key = new_key()
    await storage.save(key, chunked(b"before"))
    await storage.close()
    assert await read(storage, key) == b"before"
    await storage.close()


def test_make_storage_follows_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "upload_dir", "some/where")
    monkeypatch.setattr(settings, "s3_bucket", None)
    disk = make_storage()
    assert isinstance(disk, DiskStorage) and disk.root == Path("some/where")
    monkeypatch.setattr(settings, "s3_bucket", "b")
    s3 = make_storage()
    assert isinstance(s3, S3Storage) and s3.bucket == "b"
