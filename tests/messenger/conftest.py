"""What the messenger's tests share beyond tests/conftest.py: two real `python -m app`
processes on the suite's PostgreSQL, with a send limit small enough to reach; and the
storage uploads go to, as a parameter: a folder in tmp_path, or a bucket on moto's S3
server (the s3_client fixture of tests/conftest.py); and how a browser posts and gets an
upload."""

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.settings import settings
from app.core.storage import files
from tests.helpers import S3_BUCKET, S3_CREDENTIALS, User
from tests.servers import start

SENDS_PER_MINUTE = 5  # MESSAGES_PER_MINUTE of the two processes


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The base URLs of two processes serving the suite's database; stopped after the
    module, since they also run its jobs (mail), which later tests expect to run here."""
    if settings.is_sqlite:
        pytest.skip("processes share PostgreSQL only")
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "MESSAGES_PER_MINUTE": str(SENDS_PER_MINUTE),
    }
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                start(tmp_path_factory.mktemp("server"), env, ready="/api/health/ready")
            ).base
            for _ in range(2)
        ]


@dataclass
class Backend:
    name: str
    root: Path  # UPLOAD_DIR, used when there is no bucket
    s3: Any = None  # a raw client, to look into the bucket

    async def contents(self) -> set[str]:
        """Everything stored: files (temporary ones too) or objects and unfinished
        multipart uploads. The bucket is shared by the session: compare with an earlier
        call."""
        if self.s3 is None:
            return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}
        objects = await self.s3.list_objects_v2(Bucket=S3_BUCKET)
        pending = await self.s3.list_multipart_uploads(Bucket=S3_BUCKET)
        return {o["Key"] for o in objects.get("Contents", [])} | {
            f"upload of {u['Key']}" for u in pending.get("Uploads", [])
        }

    async def holds(self, key: str) -> bool:
        if self.s3 is None:
            return (self.root / key[:2] / key).is_file()
        return key in await self.contents()


async def use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str = "", s3_client: Any = None
) -> Backend:
    """Set the app's storage (made again from the settings at first use): the bucket when
    `s3_client` is given, else a folder."""
    monkeypatch.setattr(settings, "upload_dir", str(tmp_path / "uploads"))
    if s3_client is not None:
        for setting, value in {
            "s3_bucket": S3_BUCKET,
            "s3_endpoint_url": s3_endpoint,
            "s3_region": "us-east-1",
            "s3_access_key_id": S3_CREDENTIALS["aws_access_key_id"],
            "s3_secret_access_key": S3_CREDENTIALS["aws_secret_access_key"],
        }.items():
            monkeypatch.setattr(settings, setting, value)
    await files.stop()
    return Backend("s3" if s3_client else "disk", tmp_path / "uploads", s3_client)


@pytest.fixture(params=["disk", "s3"])
async def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_endpoint: str,
    s3_client: Any,
) -> AsyncIterator[Backend]:
    if request.param == "disk":
        yield await use(tmp_path, monkeypatch)
    else:
        yield await use(tmp_path, monkeypatch, s3_endpoint, s3_client)
    await files.stop()


@pytest.fixture
async def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    """Disk only: for tests that look at files (a save in flight, a file's age) or make the
    disk fail. A rule that holds wherever the bytes are is tested on `backend`."""
    yield await use(tmp_path, monkeypatch)
    await files.stop()


async def download(client: httpx.AsyncClient, user: User, upload_id: int, **headers: str) -> Any:
    """The bytes as a browser gets them: from the app, or from the signed URL it names."""
    r = await client.get(f"/api/uploads/{upload_id}", headers={**user.headers, **headers})
    if r.status_code != 307:
        return r
    location = r.headers["location"]
    assert location.startswith(settings.s3_endpoint_url or "?")
    async with httpx.AsyncClient() as outside:
        return await outside.get(location)


async def post_upload(
    client: httpx.AsyncClient, user: User, body: bytes, headers: dict[str, str]
) -> Any:
    return await client.post("/api/uploads", content=body, headers={**user.headers, **headers})
