"""Where uploaded files live: a folder on disk, or an S3 bucket when S3_BUCKET is set.

Keys are made by the caller (`secrets.token_hex(16)`) and every method refuses anything
else, so no path or object name ever comes from user input and traversal is impossible
by construction. Both backends stream: a file is never held whole in memory, and a save
whose chunks fail midway leaves nothing behind. A missing key reads as FileNotFoundError.

S3 goes through aiobotocore, which aioboto3 is built on: we need only its client.
"""

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol
from urllib.parse import quote

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from app.core.settings import settings

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
KEY = re.compile(r"[0-9a-f]{32}")
URL_EXPIRES_SECONDS = 300


class Storage(Protocol):
    async def save(self, key: str, chunks: AsyncIterable[bytes]) -> None: ...
    def open(self, key: str) -> AsyncIterator[bytes]: ...
    async def delete(self, key: str) -> None: ...
    def keys(self) -> AsyncIterator[tuple[str, datetime]]: ...
    async def url(
        self, key: str, *, filename: str, content_type: str, inline: bool
    ) -> str | None: ...
    async def close(self) -> None: ...


def check_key(key: str) -> str:
    # fullmatch, not `^...$`: `$` would let a trailing newline through.
    if not KEY.fullmatch(key):
        raise ValueError("a storage key is 32 lowercase hex characters")
    return key


class DiskStorage:
    """Files at `root/<key[:2]>/<key>`. Every file operation runs in a thread, so a slow
    disk stalls one upload, not the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        # 256 subfolders keep any one folder small enough to list quickly.
        return self.root / check_key(key)[:2] / key

    async def save(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        path = self._path(key)

        def create() -> tuple[int, str]:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A leading dot and a suffix: the temp name can never pass for a key.
            return tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".part")

        fd, tmp = await asyncio.to_thread(create)
        file = os.fdopen(fd, "wb")
        try:
            async for chunk in chunks:
                await asyncio.to_thread(file.write, chunk)
            await asyncio.to_thread(_finish, file, tmp, path)
        except BaseException:
            # Shielded: a second cancellation must not leave the temp file behind.
            await asyncio.shield(asyncio.to_thread(_discard, file, tmp))
            raise

    def open(self, key: str) -> AsyncIterator[bytes]:
        # Checked here, not in the generator: a bad key fails at the call, not at first read.
        return self._read(self._path(key))

    async def _read(self, path: Path) -> AsyncIterator[bytes]:
        file = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
                yield chunk
        finally:
            file.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)  # and any temp file of its save: a crash's is listed as its key
        temps = await asyncio.to_thread(list, path.parent.glob(f".{key}*.part"))
        for each in [path, *temps]:
            await asyncio.to_thread(each.unlink, missing_ok=True)

    async def keys(self) -> AsyncIterator[tuple[str, datetime]]:
        # A thread hop per folder: memory holds one folder's listing, not the whole tree.
        for folder in await asyncio.to_thread(_folders, self.root):
            for item in await asyncio.to_thread(_files, folder):
                yield item

    async def url(self, key: str, *, filename: str, content_type: str, inline: bool) -> None:
        check_key(key)  # and None: the app streams the file itself

    async def close(self) -> None: ...  # nothing held open


def _finish(file: BinaryIO, tmp: str, path: Path) -> None:
    file.flush()
    os.fsync(file.fileno())  # the final name is given only to bytes that are on the disk
    file.close()
    os.replace(tmp, path)


def _discard(file: BinaryIO, tmp: str) -> None:
    with suppress(OSError):  # a full disk fails the flush: the file goes all the same
        file.close()
    os.unlink(tmp)


def _folders(root: Path) -> list[Path]:
    with suppress(FileNotFoundError):  # nothing saved yet
        return sorted(p for p in root.iterdir() if p.is_dir() and len(p.name) == 2)
    return []


def _files(folder: Path) -> list[tuple[str, datetime]]:
    found = []
    for path in folder.iterdir():
        # A save's temp file is listed as its key: young, the sweep spares it; old, it goes.
        key = path.name[1:33] if path.name[0] == "." and path.suffix == ".part" else path.name
        if KEY.fullmatch(key) and key[:2] == folder.name:
            with suppress(FileNotFoundError):  # deleted since the listing
                found.append((key, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
    return found


@dataclass
class S3Storage:
    """Objects named by their key in one bucket; one client, opened on first use. Unset keys
    and region come from boto's usual chain (AWS_* variables, the instance's role)."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack, init=False, repr=False)
    _client: Any = field(default=None, init=False, repr=False)
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    # S3's minimum for every part but the last, and all that one save buffers (plus a chunk).
    PART_SIZE: ClassVar[int] = 5 * 1024 * 1024

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._opening:  # two first requests must not open two clients
                if self._client is None:
                    client = get_session().create_client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        aws_access_key_id=self.access_key_id,
                        aws_secret_access_key=self.secret_access_key,
                        # SigV4: every region and S3-compatible store takes it, presigned too.
                        config=AioConfig(signature_version="s3v4"),
                    )
                    self._client = await self._stack.enter_async_context(client)
        return self._client

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    async def save(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        where = {"Bucket": self.bucket, "Key": check_key(key)}
        s3 = await self._s3()
        # A part waits in a temporary file, not in memory: S3 takes no part under 5 MiB, and
        # 8 uploads holding one each grew the process by 60 MiB. It goes up as that file.
        buffer = await asyncio.to_thread(tempfile.TemporaryFile)
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def upload() -> None:
            n = len(parts) + 1
            await asyncio.to_thread(buffer.seek, 0)
            r = await s3.upload_part(**where, UploadId=upload_id, PartNumber=n, Body=buffer)
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
            await asyncio.to_thread(buffer.truncate, 0)
            buffer.seek(0)  # no disk access: the file's offset only

        try:
            async for chunk in chunks:
                await asyncio.to_thread(buffer.write, chunk)
                if buffer.tell() >= self.PART_SIZE:  # a part may be larger
                    if upload_id is None:
                        upload_id = (await s3.create_multipart_upload(**where))["UploadId"]
                    await upload()
            if upload_id is None:  # less than one part: one request
                await asyncio.to_thread(buffer.seek, 0)
                await s3.put_object(**where, Body=buffer)
                return
            if buffer.tell():
                await upload()
            await s3.complete_multipart_upload(
                **where, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            if upload_id is not None:
                # Until aborted, the parts are kept (and billed) though no object shows them.
                # Shielded: a second cancellation must not skip it.
                abort = s3.abort_multipart_upload(**where, UploadId=upload_id)
                try:
                    await asyncio.shield(abort)
                except Exception as exc:
                    # The save's error is the one to raise; a bucket lifecycle rule collects
                    # the parts. Not the key, nor the error's text: uploads are logged by id.
                    log.warning("could not abort an unfinished upload: %s", type(exc).__name__)
            raise
        finally:
            await asyncio.shield(asyncio.to_thread(buffer.close))

    def open(self, key: str) -> AsyncIterator[bytes]:
        return self._read(check_key(key))  # checked at the call, as on disk

    async def _read(self, key: str) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        try:
            r = await s3.get_object(Bucket=self.bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None  # as on disk: callers handle one error
        async with r["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK_SIZE):
                yield chunk

    async def delete(self, key: str) -> None:
        check_key(key)
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=key)  # a missing key is no error to S3

    async def keys(self) -> AsyncIterator[tuple[str, datetime]]:
        s3 = await self._s3()
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                # The bucket may hold other objects: not ours to list, nor to sweep.
                if KEY.fullmatch(obj["Key"]):
                    yield obj["Key"], obj["LastModified"].astimezone(UTC)

    async def url(self, key: str, *, filename: str, content_type: str, inline: bool) -> str:
        check_key(key)
        s3 = await self._s3()
        # RFC 6266/8187: any name, percent-encoded as UTF-8, cannot break out of the header.
        disposition = f"{'inline' if inline else 'attachment'}; filename*=UTF-8''"
        params = {"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type}
        params["ResponseContentDisposition"] = disposition + quote(filename, safe="")
        url: str = await s3.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=URL_EXPIRES_SECONDS
        )
        return url


def make_storage() -> Storage:
    if settings.s3_bucket:
        return S3Storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    return DiskStorage(Path(settings.upload_dir))


class Files:
    """The app's storage, made from the settings on first use; a service of the core
    feature, so its client is closed when the app stops (the next use makes a new one)."""

    def __init__(self) -> None:
        self._storage: Storage | None = None

    def __call__(self) -> Storage:
        if self._storage is None:
            self._storage = make_storage()
        return self._storage

    async def start(self) -> None: ...  # the storage is made on first use

    async def stop(self) -> None:
        storage, self._storage = self._storage, None
        if storage is not None:
            await storage.close()


files = Files()
