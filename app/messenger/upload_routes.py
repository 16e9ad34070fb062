"""Uploads: a file goes up first (streamed, never held whole), then a send names it in
`attachment_ids`. The rules live in app.messenger.uploads; here, how bytes are served."""

from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse

from app.core.deps import CurrentUser, ReadDb, UserNoDb
from app.core.errors import NotFound
from app.core.http import Route, errors
from app.core.models import Id
from app.core.settings import settings
from app.core.storage import files
from app.messenger.upload_intake import receive, remove
from app.messenger.upload_models import UploadOut, UploadRow
from app.messenger.uploads import Uploads

router = APIRouter(
    prefix="/uploads", tags=["uploads"], responses=errors(401, 403, 404), route_class=Route
)
INLINE = {"image/png", "image/jpeg", "image/gif", "image/webp"}
CACHE = "private, no-cache"  # kept by the browser, and asked again with If-None-Match
MULTIPART: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    summary="Upload a file, to attach to a message",
    description=f"`multipart/form-data` with one file part named `file`, at most "
    f"MAX_UPLOAD_BYTES ({settings.max_upload_bytes}) bytes, else 413 and nothing is kept. "
    "`content_type` is found from the bytes (PNG, JPEG, GIF, WebP, else "
    "application/octet-stream); `filename` is the last part of the client's name. A user "
    "holds at most MAX_PENDING_UPLOADS uploads that no message carries (429 beyond); "
    "unattached ones expire after UPLOAD_EXPIRE_MINUTES.",
    openapi_extra=MULTIPART,
    responses={**errors(408, 413, 429), 422: {"description": "No part named `file`, or empty"}},
)
async def upload_file(user: UserNoDb, request: Request) -> UploadOut:
    return await receive(user.id, request.headers.get("content-type", ""), request.stream())


@router.get(
    "/{upload_id}",
    summary="Download an upload",
    description="For its uploader, and for the members of the thread whose live message "
    "carries it; 404 for anyone else. The bytes (inline for images, else as an "
    "attachment), or with object storage a 307 to a signed URL valid for minutes. "
    '`If-None-Match: "<sha256>"`: 304.',
    response_class=Response,
    responses={
        200: {
            "content": {kind: {} for kind in (*sorted(INLINE), "application/octet-stream")},
            "description": "The bytes, as the content type found in them",
        },
        304: {"description": "Unchanged: the ETag given is the file's"},
        307: {"description": "With object storage: a signed URL of the bytes"},
    },
)
async def download(
    user: CurrentUser,
    db: ReadDb,
    upload_id: Id,
    if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    return await serve(await Uploads(db).readable(upload_id, user.id), if_none_match)


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an upload no message carries (uploader only)",
    description="Its bytes go too. 409 when a live message carries it: delete the message.",
    responses=errors(409),
)
async def delete_upload(user: UserNoDb, upload_id: Id) -> None:
    await remove(upload_id, user.id)


async def serve(upload: UploadRow, if_none_match: str | None) -> Response:
    """The bytes, streamed, under headers that keep a browser from running them: a file
    served from our origin must never act as a page of it."""
    etag = f'"{upload.sha256}"'
    # `*` matches any representation there is (RFC 9110, 13.1.2): a cache that has one.
    tags = {tag.strip().removeprefix("W/") for tag in (if_none_match or "").split(",")}
    if etag in tags or "*" in tags:
        # As the 200's (RFC 9110, 15.4.5): a cache takes a 304's headers for its copy's, and
        # the default no-store would have it drop the copy it was just told to keep.
        headers = {"ETag": etag, "Cache-Control": CACHE}
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    inline = upload.content_type in INLINE
    url = await files().url(
        upload.key, filename=upload.filename, content_type=upload.content_type, inline=inline
    )
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    chunks = files().open(upload.key)
    try:
        first = await anext(chunks)
    except FileNotFoundError:  # lost: the hourly sweep marks its row deleted
        raise NotFound("Upload not found") from None
    disposition = "inline" if inline else "attachment"
    headers = {
        "Content-Length": str(upload.size),
        "ETag": etag,
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(upload.filename, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "Cache-Control": CACHE,
    }
    return StreamingResponse(chain(first, chunks), media_type=upload.content_type, headers=headers)


async def chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
