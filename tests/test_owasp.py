"""The OWASP API Security Top 10 (2023), one class per category that applies here."""

import base64
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from httpx import AsyncClient
from jose import jwt

from app.settings import settings
from tests.helpers import PASSWORD, MakeUser, User, bearer, fetch, login, new_thread, send


def thread_routes(tid: int, mid: int, uid: int) -> list[tuple[str, str, Any]]:
    """Every route that reaches a thread, its members or its messages."""
    return [
        ("GET", f"/api/threads/{tid}", None),
        ("PATCH", f"/api/threads/{tid}", {"title": "x"}),
        ("DELETE", f"/api/threads/{tid}", None),
        ("GET", f"/api/threads/{tid}/members", None),
        ("POST", f"/api/threads/{tid}/members", {"user_id": uid}),
        ("DELETE", f"/api/threads/{tid}/members/{uid}", None),
        ("POST", f"/api/threads/{tid}/read", {"message_id": mid}),
        ("GET", f"/api/threads/{tid}/messages", None),
        ("POST", f"/api/threads/{tid}/messages", {"body": "x"}),
        ("PATCH", f"/api/threads/{tid}/messages/{mid}", {"body": "x"}),
        ("DELETE", f"/api/threads/{tid}/messages/{mid}", None),
    ]


class TestAPI1BrokenObjectLevelAuthorization:
    async def test_outsiders_and_removed_members_see_only_404(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        owner, outsider, removed = await make_user(), await make_user(), await make_user()
        thread = await new_thread(client, owner, removed)
        message = await send(client, owner, thread["id"])
        r = await client.delete(
            f"/api/threads/{thread['id']}/members/{removed['id']}", headers=owner.headers
        )
        assert r.status_code == 204
        for user in (outsider, removed):
            real = thread_routes(thread["id"], message["id"], user["id"])
            fake = thread_routes(10**8, message["id"], user["id"])
            for (method, url, body), (_, missing_url, _) in zip(real, fake, strict=True):
                seen = await client.request(method, url, json=body, headers=user.headers)
                missing = await client.request(method, missing_url, json=body, headers=user.headers)
                assert seen.status_code == missing.status_code == 404, (method, url)
                assert (
                    seen.json() == missing.json() and seen.headers.keys() == missing.headers.keys()
                )
        # Nothing changed behind the 404s.
        r = await client.get(f"/api/threads/{thread['id']}", headers=owner.headers)
        assert r.json()["title"] == "t" and len(r.json()["members"]) == 1
        assert (
            len(
                (
                    await client.get(f"/api/threads/{thread['id']}/messages", headers=owner.headers)
                ).json()["items"]
            )
            == 1
        )

    async def test_a_message_id_from_another_thread_is_404(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        me, other = await make_user(), await make_user()
        mine = await new_thread(client, me)
        theirs = await new_thread(client, other)
        their_message = await send(client, other, theirs["id"])
        url = f"/api/threads/{mine['id']}/messages/{their_message['id']}"
        assert (await client.patch(url, json={"body": "x"}, headers=me.headers)).status_code == 404
        assert (await client.delete(url, headers=me.headers)).status_code == 404


class TestAPI2BrokenAuthentication:
    async def test_forged_tokens(self, client: AsyncClient, make_user: MakeUser) -> None:
        user = await make_user()
        live = datetime.now(UTC) + timedelta(minutes=5)
        claims = {"sub": str(user["id"]), "ver": 0, "type": "access", "scope": "regular"}
        header, payload, signature = user["token"]["access_token"].split(".")
        unsigned = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        forged = {
            "tampered payload": f"{header}.{payload[:-3]}abc.{signature}",
            "foreign key": jwt.encode({**claims, "exp": live}, "not-our-key", algorithm="HS256"),
            "alg none": f"{unsigned.decode().rstrip('=')}.{payload}.",
            "expired": jwt.encode(
                {**claims, "exp": datetime.now(UTC) - timedelta(seconds=1)}, settings.secret_key
            ),
            "refresh as access": user["token"]["refresh_token"],
            "other algorithm": jwt.encode(
                {**claims, "exp": live}, settings.secret_key, algorithm="HS512"
            ),
            "scope escalation": f"{header}.{base64.urlsafe_b64encode(json.dumps({**claims, 'scope': 'admin', 'exp': int(live.timestamp())}).encode()).decode().rstrip('=')}.{signature}",
        }
        for name, token in forged.items():
            for url in ("/api/users/me", "/api/users"):
                r = await client.get(url, headers=bearer(token))
                assert r.status_code == 401, (name, url)
                assert r.headers["www-authenticate"] == "Bearer"

    async def test_login_does_not_reveal_which_emails_exist(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()

        async def timed(email: str) -> float:
            started = time.perf_counter()
            r = await login(client, email, "wrong password")
            assert r.status_code == 401
            assert r.json() == {"detail": "Incorrect email or password"}
            return time.perf_counter() - started

        known = [await timed(user["email"]) for _ in range(4)]
        unknown = [await timed(f"ghost{n}@example.com") for n in range(4)]
        # Both check an Argon2 hash: an unknown email is not answered faster.
        ratio = statistics.median(unknown) / statistics.median(known)
        assert 0.5 < ratio < 2, (known, unknown)

    async def test_lookup_needs_a_token_and_answers_404_only(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        r = await client.get("/api/users/lookup", params={"email": user["email"]})
        assert r.status_code == 401

    async def test_brute_force_is_limited(self, client: AsyncClient, make_user: MakeUser) -> None:
        user = await make_user()
        codes = [
            (await login(client, user["email"], f"guess {n}")).status_code
            for n in range(settings.login_failures_per_email + 3)
        ]
        assert (
            codes[: settings.login_failures_per_email] == [401] * settings.login_failures_per_email
        )
        assert set(codes[settings.login_failures_per_email :]) == {429}


class TestAPI3BrokenObjectPropertyLevelAuthorization:
    async def test_mass_assignment_changes_nothing(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        me, other = await make_user(), await make_user()
        extra = {
            "id": 99999, "owner_id": other["id"], "author_id": other["id"], "thread_id": 1,
            "scopes": ["admin", "superuser"], "is_active": False, "deleted": True,
            "token_version": 7, "hashed_password": "x", "created_at": "2000-01-01T00:00:00Z",
            "edited_at": "2000-01-01T00:00:00Z", "last_read_message_id": 10**9,
            "unread_count": 5, "members": [],
        }  # fmt: skip
        r = await client.patch(
            "/api/users/me", json={"full_name": "Me", **extra}, headers=me.headers
        )
        assert r.status_code == 200
        assert (
            r.json()["scopes"] == ["regular"]
            and r.json()["is_active"]
            and r.json()["id"] == me["id"]
        )
        r = await client.post("/api/threads", json={"member_ids": [], **extra}, headers=me.headers)
        thread = r.json()
        assert r.status_code == 201 and thread["owner_id"] == me["id"] and thread["id"] != 99999
        assert [m["id"] for m in thread["members"]] == [me["id"]]
        r = await client.patch(
            f"/api/threads/{thread['id']}", json={"title": "x", **extra}, headers=me.headers
        )
        assert r.status_code == 200 and r.json()["owner_id"] == me["id"]
        r = await client.post(
            f"/api/threads/{thread['id']}/messages", json={"body": "b", **extra}, headers=me.headers
        )
        message = r.json()
        assert r.status_code == 201 and message["author_id"] == me["id"]
        assert message["thread_id"] == thread["id"] and message["edited_at"] is None
        r = await client.patch(
            f"/api/threads/{thread['id']}/messages/{message['id']}",
            json={"body": "c", **extra},
            headers=me.headers,
        )
        assert r.status_code == 200 and r.json()["author_id"] == me["id"]
        rows = await fetch(
            'SELECT token_version, deleted, is_active FROM "user" WHERE id = :id', id=me["id"]
        )
        assert list(rows[0]) == [0, False, True]
        assert (await client.get("/api/users/me", headers=me.headers)).status_code == 200

    async def test_responses_leak_no_private_fields(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        me, other = await make_user(), await make_user(scopes=["regular", "admin"])
        thread = await new_thread(client, me, other)
        await send(client, other, thread["id"])
        seen = [
            await client.get(f"/api/users/{other['id']}", headers=me.headers),
            await client.get(
                "/api/users/lookup", params={"email": other["email"]}, headers=me.headers
            ),
            await client.get(f"/api/threads/{thread['id']}", headers=me.headers),
            await client.get(f"/api/threads/{thread['id']}/members", headers=me.headers),
            await client.get("/api/threads", headers=me.headers),
            await client.get(f"/api/threads/{thread['id']}/messages", headers=me.headers),
            await client.get("/api/users/me", headers=me.headers),
        ]
        for r in seen:
            assert r.status_code == 200
            assert "hashed_password" not in r.text and "$argon2" not in r.text
            assert other["email"] not in r.text  # no one else's email
            assert "admin" not in r.text  # nor their scopes
            assert "token_version" not in r.text


class TestAPI4UnrestrictedResourceConsumption:
    async def test_page_sizes_are_bounded(self, client: AsyncClient, make_user: MakeUser) -> None:
        admin = await make_user(scopes=["regular", "admin"])
        thread = await new_thread(client, admin)
        for url in ("/api/users", "/api/threads", f"/api/threads/{thread['id']}/messages"):
            for limit in (0, 201, 10**6):
                r = await client.get(url, params={"limit": limit}, headers=admin.headers)
                assert r.status_code == 422, (url, limit)

    async def test_body_and_field_sizes_are_bounded(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        me = await make_user()
        thread = await new_thread(client, me)
        url = f"/api/threads/{thread['id']}/messages"
        huge = b'{"body": "' + b"x" * (1024 * 1024 + 1) + b'"}'
        r = await client.post(
            url, content=huge, headers={**me.headers, "Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert (
            await client.post(url, json={"body": "x" * 4001}, headers=me.headers)
        ).status_code == 422
        r = await client.post(
            "/api/threads", json={"member_ids": list(range(1001))}, headers=me.headers
        )
        assert r.status_code == 422
        r = await client.patch("/api/users/me", json={"full_name": "x" * 256}, headers=me.headers)
        assert r.status_code == 422
        assert (await fetch("SELECT count(*) FROM message"))[0][0] == 0


class TestAPI5BrokenFunctionLevelAuthorization:
    async def test_admin_routes_refuse_regular_and_narrowed_tokens(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        regular = await make_user()
        admin = await make_user(scopes=["regular", "admin", "superuser"])
        target = await make_user()
        narrowed = (await login(client, admin["email"], scope="regular")).json()["access_token"]
        routes = [
            ("GET", "/api/users", None),
            ("PATCH", f"/api/users/{target['id']}", {"full_name": "x"}),
            ("PATCH", f"/api/users/{target['id']}", {"scopes": ["admin"]}),
            ("DELETE", f"/api/users/{target['id']}", None),
        ]
        for method, url, body in routes:
            for headers in (regular.headers, bearer(narrowed)):
                r = await client.request(method, url, json=body, headers=headers)
                assert r.status_code == 403, (method, url)
            assert (await client.request(method, url, json=body)).status_code == 401
        assert (await client.get(f"/api/users/{target['id']}", headers=admin.headers)).json()[
            "full_name"
        ] == target["full_name"]


class TestAPI8SecurityMisconfiguration:
    async def test_errors_carry_no_internals(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user: User = await make_user()
        answers = [
            await client.post(
                "/api/auth/signup",
                content=b"{not json",
                headers={"Content-Type": "application/json"},
            ),
            await client.get("/api/threads/not-a-number", headers=user.headers),
            await client.get("/api/threads", params={"cursor": "%%%"}, headers=user.headers),
            await client.post("/api/auth/token", data={"username": "x"}),
        ]
        for r in answers:
            assert 400 <= r.status_code < 500
            assert "Traceback" not in r.text and "sqlalchemy" not in r.text.lower()
            assert "detail" in r.json()
        assert PASSWORD
