"""What an upload is said to be and called, over HTTP on both storage backends: its
content type is found from its bytes (never the client's word), its file name is reduced
to a safe one, and neither reaches the storage, where it is named by its key."""

import re
from urllib.parse import quote

from httpx import AsyncClient

from tests.helpers import MakeUser, fetch, multipart
from tests.messenger.conftest import Backend, download, post_upload


async def test_html_claiming_to_be_png_is_served_as_bytes(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    me = await make_user()
    page = b"<html><script>alert(document.cookie)</script></html>"
    body, headers = multipart(page, "cat.png", content_type="image/png")
    r = await post_upload(client, me, body, headers)
    assert r.status_code == 201 and r.json()["content_type"] == "application/octet-stream"
    got = await download(client, me, r.json()["id"])
    assert got.status_code == 200 and got.content == page
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == "attachment; filename*=UTF-8''cat.png"
    if backend.name == "disk":
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-security-policy"] == "sandbox"


FOUND = [  # (the first bytes, the content type found from them)
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    (b"GIF87a\x01\x00", "image/gif"),
    (b"GIF89a\x01\x00", "image/gif"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "application/octet-stream"),
    (b"\x89PNG\r\n", "application/octet-stream"),  # cut short
    (b"%PDF-1.7", "application/octet-stream"),
    (b"x", "application/octet-stream"),
]


async def test_content_type_comes_from_the_bytes(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    """All the cases in one test: on S3 each test pays for a new client, and a user."""
    me = await make_user()
    for head, kind in FOUND:
        r = await post_upload(client, me, *multipart(head, "f", content_type="image/png"))
        assert r.status_code == 201 and r.json()["content_type"] == kind, head
        got = await download(client, me, r.json()["id"])
        assert got.headers["content-type"] == kind, head
        disposition = "inline" if kind.startswith("image/") else "attachment"
        assert got.headers["content-disposition"].startswith(disposition + ";"), head


REDUCED = [  # (the name sent, the name kept)
    (b"../../etc/passwd", "passwd"),
    (b"..\\..\\windows\\system32\\evil.exe", "evil.exe"),
    (b"C:\\Users\\me\\photo.jpg", "photo.jpg"),
    (b"a/b\\c/d.txt", "d.txt"),
    (b"/", "file"),
    (b"dir/", "file"),
    (b"", "file"),
    (None, "file"),
    (b"..", ".."),
    (b"\x01na\x7fme\x1b.txt", "name.txt"),
    (b"tab\there.txt", "tabhere.txt"),
    (b"\xc2\x85\xc2\x9fnext", "next"),  # C1 controls, as UTF-8
    ("Résumé, 日本.pdf".encode(), "Résumé, 日本.pdf"),
    (b"\xff\xfebad.txt", "\ufffd\ufffdbad.txt"),  # not UTF-8
    (b"x" * 300, "x" * 255),
    ("é".encode() * 300, "é" * 255),
    (b"../" + b"y" * 300, "y" * 255),
    (b"z" * 10_000, "z" * 255),  # longer than a part's header line may be by default
]


async def test_file_names_are_reduced(
    client: AsyncClient, make_user: MakeUser, backend: Backend
) -> None:
    """All the names in one test: on S3 each test pays for a new client, and a user."""
    me = await make_user()
    before = await backend.contents()
    for sent, kept in REDUCED:
        r = await post_upload(client, me, *multipart(b"data", sent))
        assert r.status_code == 201, r.text
        assert r.json()["filename"] == kept, sent
        got = await download(client, me, r.json()["id"])
        expected = f"attachment; filename*=UTF-8''{quote(kept, safe='')}"
        assert got.headers["content-disposition"] == expected, sent
    # The names never reach the storage: a file or object each, named by its key alone.
    keys = [row.key for row in await fetch("SELECT key FROM upload")]
    assert all([re.fullmatch("[0-9a-f]{32}", key) and await backend.holds(key) for key in keys])
    assert len(await backend.contents() - before) == len(keys) == len(REDUCED)
