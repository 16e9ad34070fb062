"""Input the threads and messages refuse, and how: strict JSON types, ids that no column
holds, cursors checked before they reach the database, and errors that show nothing of the
server's insides."""

import asyncio
import base64
from typing import Any

import pytest
from httpx import AsyncClient

from tests.helpers import API3, API8, MakeUser, encode_cursor, new_thread


@API8
async def test_errors_carry_no_internals(client: AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    answers = [
        await client.get("/api/threads/not-a-number", headers=user.headers),
        await client.get("/api/threads", params={"cursor": "%%%"}, headers=user.headers),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500
        assert "Traceback" not in r.text and "sqlalchemy" not in r.text.lower()
        assert "detail" in r.json()


async def test_what_the_fuzzer_found_stays_fixed(client: AsyncClient, make_user: MakeUser) -> None:
    """Each of these once reached the database and answered 500."""
    user = await make_user()
    tid = (await new_thread(client, user))["id"]
    answers = {
        "id past int32": await client.get(f"/api/threads/{2**31}", headers=user.headers),
        "member id past int32": await client.post(
            "/api/threads", json={"member_ids": [2**40]}, headers=user.headers
        ),
        "NUL in a body": await client.post(
            f"/api/threads/{tid}/messages", json={"body": "a\x00b"}, headers=user.headers
        ),
        "boolean as an id": await client.post(
            f"/api/threads/{tid}/read", json={"message_id": False}, headers=user.headers
        ),
    }
    for name, r in answers.items():
        assert r.status_code == 422, name
        assert isinstance(r.json()["detail"], list), name
    cursor = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", 99999999999999]').decode()
    r = await client.get("/api/threads", params={"cursor": cursor}, headers=user.headers)
    assert r.status_code == 400
    naive = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", 1]').decode()
    r = await client.get("/api/threads", params={"cursor": naive}, headers=user.headers)
    assert r.status_code == 400


async def test_405_lists_every_method_of_the_path(client: AsyncClient) -> None:
    r = await client.options("/api/threads/1")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PATCH"
    for emoji in ("a/b", ""):  # what the reaction's own rule refuses, not the router
        r = await client.post(f"/api/threads/1/messages/1/reactions/{emoji}")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, PUT", emoji


@API3
async def test_json_types_are_strict_and_null_is_refused(
    client: AsyncClient, make_user: MakeUser
) -> None:
    other, user = await make_user(), await make_user()
    thread = await new_thread(client, user)
    r = await client.post("/api/threads", json={"member_ids": [True]}, headers=user.headers)
    assert r.status_code == 422
    r = await client.post(
        f"/api/threads/{thread['id']}/members", json={"user_id": str(other["id"])},
        headers=user.headers,
    )  # fmt: skip
    assert r.status_code == 422
    r = await client.patch(
        f"/api/threads/{thread['id']}", json={"title": None}, headers=user.headers
    )
    assert r.status_code == 200 and r.json()["title"] is None


@API8
@pytest.mark.parametrize(
    "value",
    [
        ["0001-01-01T00:00:00+14:00", 1],
        ["9999-12-31T23:59:59-14:00", 1],
        ["2026-01-01T00:00:00", 1],  # naive
        ["2026-01-01T00:00:00+00:00", 0],
        ["2026-01-01T00:00:00+00:00", 2**31],
        ["2026-01-01T00:00:00+00:00", 1.5],
        ["2026-01-01T00:00:00+00:00", [1]],
        ["2026-01-01T00:00:00+00:00"],
        1,
    ],
)
async def test_cursors_at_the_edges_are_400(
    client: AsyncClient, make_user: MakeUser, value: Any
) -> None:
    user = await make_user()
    r = await client.get(
        "/api/threads", params={"cursor": encode_cursor(value)}, headers=user.headers
    )
    assert r.status_code == 400, r.text


async def test_a_socket_handshake_too_large_is_answered_and_closed(
    live_server: str, make_user: MakeUser
) -> None:
    """A request line or header over 8 KiB (a browser's large cookies), or more than 128
    headers, is refused at once: not left waiting on an open connection."""
    user = await make_user()
    target = f"/api/ws?token={user['token']['access_token']}"
    cases = {
        "url": (target + "&pad=" + "p" * 9000, ""),
        "cookie": (target, "Cookie: a=" + "b" * 9000 + "\r\n"),
        "headers": (target, "".join(f"X-{i}: y\r\n" for i in range(200))),
    }
    host, port = live_server.split(":")
    for name, (path, extra) in cases.items():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {live_server}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n".encode()
        )
        async with asyncio.timeout(5):
            answer = await reader.read()  # to its end: the server closes the connection
        writer.close()
        assert answer.split(b" ", 2)[1] in (b"414", b"431"), (name, answer[:80])
