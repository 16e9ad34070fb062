"""Taking an upload in, and giving one up: services that hold no connection while bytes
move. A body streams from the request through python-multipart's parser straight into
storage, hashed and counted on the way, never whole in memory; past MAX_UPLOAD_BYTES it
stops at once and nothing stays. The row is written afterwards, in a short transaction."""

import asyncio
import hashlib
import logging
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core import metrics
from app.core.db import begin, connect
from app.core.errors import Invalid, TooLarge
from app.core.middleware import UPLOAD_FRAMING
from app.core.settings import settings
from app.core.storage import files
from app.messenger.upload_models import UploadOut
from app.messenger.uploads import Uploads

log = logging.getLogger(__name__)
NO_FILE = "A multipart/form-data body with one file part named `file` is needed"
MAX_FILENAME = 255
# What a file starts with, for the four image types served inline; anything else is bytes.
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
HEAD = 12  # bytes enough to tell them apart (WebP: RIFF, a size, WEBP)
OCTETS = "application/octet-stream"


def content_type(head: bytes) -> str:
    """Found from the bytes, never from what the client says."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in MAGIC if head.startswith(magic)), OCTETS)


def filename(raw: str | None) -> str:
    """The client's name cut to its last path component (after `/` or `\\`), control
    characters out, at most 255 characters; `file` when nothing is left."""
    name = re.split(r"[/\\]", raw or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c) != "Cc")
    return name[:MAX_FILENAME] or "file"


class Intake:
    """One upload's body. python-multipart calls back as it parses; the bytes of the first
    part named `file` collect in `out` until `file()` hands them on: at most what one
    `write` was given."""

    def __init__(self, header: str) -> None:
        kind, options = parse_options_header(header)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise Invalid("file", NO_FILE)
        try:
            self.parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                    "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_end": self._end,
                },
                # Its default, 4 KiB a line, refuses the long names filename() is there to
                # cut; BodyGuard lets no more than this past the file anyway.
                max_header_size=UPLOAD_FRAMING,
            )
        except FormParserError:  # a boundary it will not take (over 256 bytes): a bad body
            raise Invalid("file", NO_FILE) from None
        self.found, self.in_file, self.ended, self.name = False, False, False, "file"
        self._field, self._value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self.out: list[bytes] = []
        self.size, self.head, self.sha256 = 0, b"", hashlib.sha256()

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"").decode("latin-1")
        _, options = parse_options_header(disposition)
        if not self.found and options.get(b"name") == b"file":
            self.found = self.in_file = True
            # Browsers send the name's UTF-8 bytes as they are; the parser reads latin-1.
            self.name = filename(options.get(b"filename", b"").decode("utf-8", "replace"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.out.append(data[start:end])

    def _part_end(self) -> None:
        self.in_file = False

    def _end(self) -> None:
        self.ended = True

    async def file(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The file part's bytes as they arrive. TooLarge past MAX_UPLOAD_BYTES, Invalid for
        a body without a file or with an empty one: raised into the save, which then
        leaves nothing behind."""
        async for chunk in body:
            try:
                self.parser.write(chunk)
            except MultipartParseError:
                raise Invalid("file", NO_FILE) from None
            if not self.out:
                continue
            data = b"".join(self.out)
            self.out.clear()
            self.size += len(data)
            if self.size > settings.max_upload_bytes:
                raise TooLarge(f"A file may hold at most {settings.max_upload_bytes} bytes")
            if len(self.head) < HEAD:
                self.head += data[: HEAD - len(self.head)]
            self.sha256.update(data)  # 64 KiB at a time: too short a wait to hand to a thread
            yield data
        if not self.found or not self.ended:  # cut short: the file may be too
            raise Invalid("file", NO_FILE)
        if not self.size:
            raise Invalid("file", "The file is empty")


async def receive(user_id: int, header: str, body: AsyncIterator[bytes]) -> UploadOut:
    """Stream one upload into storage, then record it. Nothing is held while the body
    arrives: no connection, no turn."""
    intake = Intake(header)
    async with connect() as conn:  # a user at the limit is told before sending it all
        await Uploads(conn).room(user_id)
    key, storage = secrets.token_hex(16), files()
    metrics.UPLOADS_IN_FLIGHT.inc()
    try:
        await storage.save(key, intake.file(body))
    finally:
        metrics.UPLOADS_IN_FLIGHT.dec()
    values = {
        "key": key,
        "filename": intake.name,
        "content_type": content_type(intake.head),
        "size": intake.size,
        "sha256": intake.sha256.hexdigest(),
    }
    try:
        async with begin() as conn:
            upload = await Uploads(conn).add(user_id, **values)
    except BaseException:
        await asyncio.shield(discard(key))  # no row: the bytes must not stay either
        raise
    metrics.UPLOAD_BYTES.inc(upload.size)
    return upload


async def remove(upload_id: int, user_id: int) -> None:
    """The uploader deletes an upload no message carries: the row, then its bytes."""
    async with begin() as conn:
        key, size = await Uploads(conn).drop(upload_id, user_id)
    await discard(key)
    metrics.UPLOAD_BYTES.dec(size)


async def discard(key: str) -> None:
    try:
        await files().delete(key)
    except Exception as exc:  # no row names them: the hourly sweep deletes them
        log.warning("could not delete an upload's bytes: %s", type(exc).__name__)
