"""The OWASP API Security Top 10 (2023), one class per category that applies here.

The *Revision2 classes hold the rules API.md revision 2 added (issue 10): they run on the
suite's database; tests that need other settings start `python -m app` on it."""

import asyncio
import base64
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from jose import jwt
from sqlalchemy import make_url
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from app.core.db import engine
from app.core.settings import settings
from tests.helpers import (
    PASSWORD,
    READY,
    ROOT,
    MakeUser,
    User,
    assert_silent,
    bearer,
    clean_env,
    close_code,
    fetch,
    free_port,
    listen,
    login,
    new_thread,
    next_event,
    send,
    serve,
)

pg_only = pytest.mark.skipif(settings.is_sqlite, reason="needs PostgreSQL")
sqlite_only = pytest.mark.skipif(not settings.is_sqlite, reason="SQLite's locking")


@contextmanager
def served(cwd: Path, **env: str) -> Iterator[str]:
    """`python -m app` with extra settings, on the suite's own database."""
    cwd.mkdir(exist_ok=True)
    with serve(cwd, DATABASE_URL=settings.database_url, **env) as base:
        yield base


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def signup(http: AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    body = {"email": email, "password": password, "full_name": "X"}
    return await http.post("/api/auth/signup", json=body)


def pair_bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


async def refresh(client: AsyncClient, token: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": token["refresh_token"]})


async def wrong_logins(base: str, forwarded_for: list[str]) -> list[int]:
    async with AsyncClient(base_url=base) as http:
        return [
            (
                await http.post(
                    "/api/auth/token",
                    data={"username": f"nobody{i}@example.com", "password": "wrong password"},
                    headers={"X-Forwarded-For": address},
                )
            ).status_code
            for i, address in enumerate(forwarded_for)
        ]


@asynccontextmanager
async def write_lock() -> AsyncIterator[None]:
    path = make_url(settings.async_database_url).database
    assert path
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # what every writer takes first
    try:
        yield
    finally:
        other.rollback()
        other.close()


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


class TestAPI1BrokenObjectLevelAuthorizationRevision2:
    """Deleted accounts leave their threads; writes racing a deletion."""

    @pytest.mark.parametrize("by_admin", [False, True])
    async def test_deleting_an_account_leaves_its_threads(
        self, client: AsyncClient, live_server: str, make_user: MakeUser, by_admin: bool
    ) -> None:
        owner, second, third = await make_user(), await make_user(), await make_user()
        shared = await new_thread(client, owner, second, third)
        alone = await new_thread(client, owner)
        ws = await listen(live_server, third)
        if by_admin:
            admin = await make_user(scopes=["regular", "admin"])
            r = await client.delete(f"/api/users/{owner['id']}", headers=admin.headers)
        else:
            r = await client.delete("/api/users/me", headers=owner.headers)
        assert r.status_code == 204
        removed = await next_event(ws)
        assert removed["type"] == "member.removed" and removed["thread_id"] == shared["id"]
        assert removed["data"] == {"user_id": owner["id"]}
        assert (await next_event(ws))["type"] == "thread.updated"
        thread = (await client.get(f"/api/threads/{shared['id']}", headers=third.headers)).json()
        assert thread["owner_id"] == second["id"]  # joined earliest of those who remain
        assert [m["id"] for m in thread["members"]] == [second["id"], third["id"]]
        # The thread left empty is gone.
        assert (
            await fetch("SELECT id FROM thread WHERE id = :id AND NOT deleted", id=alone["id"])
            == []
        )
        await ws.close()

    async def test_writes_racing_a_thread_deletion_land_before_it_or_404(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        owner, friend = await make_user(), await make_user()
        newcomers = [await make_user() for _ in range(4)]
        thread = await new_thread(client, owner, friend)
        tid = thread["id"]
        sends = [
            client.post(
                f"/api/threads/{tid}/messages", json={"body": f"m{i}"}, headers=friend.headers
            )
            for i in range(16)
        ]
        adds = [
            client.post(
                f"/api/threads/{tid}/members", json={"user_id": u["id"]}, headers=friend.headers
            )
            for u in newcomers
        ]
        delete = client.delete(f"/api/threads/{tid}", headers=owner.headers)
        replies = await asyncio.gather(*sends[:8], *adds[:2], delete, *sends[8:], *adds[2:])
        assert replies[10].status_code == 204
        assert {r.status_code for r in replies[:10] + replies[11:]} <= {201, 404}
        sent = {r.json()["id"] for r in replies[:8] + replies[11:27] if r.status_code == 201}
        [(version, deleted_at)] = await fetch(
            "SELECT version, updated_at FROM thread WHERE id = :id", id=tid
        )
        rows = await fetch("SELECT id, version FROM message WHERE thread_id = :id", id=tid)
        assert {r.id for r in rows} == sent  # every 201 is stored, nothing else
        # The deletion is the thread's last change: nothing was written after it.
        assert all(r.version < version for r in rows), (version, rows)
        assert deleted_at is not None


class TestAPI2BrokenAuthenticationRevision2:
    """Bootstrap, login limits in the database, refresh rotation, trusted proxies, revocation."""

    async def test_first_superuser_bootstrap(
        self, client: AsyncClient, make_user: MakeUser, tmp_path: Path
    ) -> None:
        bootstrap = "bootstrap password"
        squatter = await make_user(email="taken@example.com")  # signed up with PASSWORD
        await signup(client, "knows@example.com", bootstrap)

        def boot(n: int, email: str) -> None:
            env = {"FIRST_SUPERUSER_EMAIL": email, "FIRST_SUPERUSER_PASSWORD": bootstrap}
            with served(tmp_path / str(n), **env):
                pass

        for n, email in enumerate(["free@example.com", "taken@example.com", "knows@example.com"]):
            # In a thread: this loop keeps running meanwhile, so a transaction it has open
            # (the mail sender's) ends instead of holding SQLite's write lock for the server.
            await asyncio.to_thread(boot, n, email)
        scopes = "regular admin superuser"
        # Free: created with all three scopes.
        assert (await login(client, "free@example.com", bootstrap)).json()["scope"] == scopes
        # Taken by someone who does not know the password: nothing gained, nothing changed.
        assert (await login(client, "taken@example.com", bootstrap)).status_code == 401
        r = await login(client, "taken@example.com")
        assert r.status_code == 200 and r.json()["scope"] == "regular"
        assert (await client.get("/api/users/me", headers=squatter.headers)).status_code == 200
        warnings = [
            line
            for line in (tmp_path / "1" / "server.log").read_text().splitlines()
            if '"WARNING"' in line and "FIRST_SUPERUSER_EMAIL" in line
        ]
        assert len(warnings) == 1, warnings
        # Taken by whoever holds the bootstrap password: promoted.
        assert (await login(client, "knows@example.com", bootstrap)).json()["scope"] == scopes

    async def test_parallel_guesses_cannot_exceed_the_email_limit(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        replies = await asyncio.gather(
            *(login(client, user["email"], "wrong password") for _ in range(12))
        )
        codes = [r.status_code for r in replies]
        # Counted before checking: at most LOGIN_FAILURES_PER_EMAIL passwords are tried.
        assert set(codes) == {401, 429} and codes.count(401) <= 5, codes
        assert all(r.headers["Retry-After"].isdigit() for r in replies if r.status_code == 429)
        assert (await login(client, user["email"])).status_code == 429  # even the right one
        # One row per key (the email and the address), not one per attempt.
        keys = await fetch(
            "SELECT key FROM login_counter WHERE key LIKE 'email:%' OR key LIKE 'addr:%'"
        )
        assert len(keys) <= 2

    @pg_only
    async def test_login_limit_holds_across_processes(
        self, make_user: MakeUser, tmp_path: Path
    ) -> None:
        user = await make_user()
        with served(tmp_path / "a") as a, served(tmp_path / "b") as b:
            async with AsyncClient(base_url=a) as one, AsyncClient(base_url=b) as two:
                replies = await asyncio.gather(
                    *(login((one, two)[i % 2], user["email"], "wrong password") for i in range(12))
                )
                codes = [r.status_code for r in replies]
                assert set(codes) == {401, 429} and codes.count(401) <= 5, codes
                assert (await login(two, user["email"])).status_code == 429

    async def test_wrong_current_password_counts_as_a_failed_login(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        change = {"password": "a new password", "current_password": "wrong password"}
        codes = [
            (await client.patch("/api/users/me", json=change, headers=user.headers)).status_code
            for _ in range(6)
        ]
        assert codes == [403] * 5 + [429], codes
        assert (await login(client, user["email"])).status_code == 429

    async def test_login_username_is_normalised_and_scopes_checked(
        self, client: AsyncClient
    ) -> None:
        assert (await signup(client, "ada@example.com")).status_code == 201
        r = await login(client, "  Ada@Example.COM ")
        assert r.status_code == 200, r.text
        r = await login(client, "ada@example.com", scope="regular root")
        assert r.status_code == 400

    async def test_reused_refresh_token_ends_its_chain_only(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        other_login = (await login(client, user["email"])).json()
        first = user["token"]
        second = (await refresh(client, first)).json()
        assert (await client.get("/api/users/me", headers=pair_bearer(second))).status_code == 200
        # The first one again: a thief or the owner, and neither may go on.
        assert (await refresh(client, first)).status_code == 401
        assert (await refresh(client, second)).status_code == 401
        assert (await client.get("/api/users/me", headers=pair_bearer(second))).status_code == 401
        assert (await client.get("/api/users/me", headers=pair_bearer(first))).status_code == 401
        # Another login of the same user is another chain.
        assert (
            await client.get("/api/users/me", headers=pair_bearer(other_login))
        ).status_code == 200
        assert (await refresh(client, other_login)).status_code == 200

    async def test_refresh_chain_ends_with_its_login(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        chain = [user["token"]]
        for _ in range(2):
            await asyncio.sleep(1.1)  # a fresh lifetime per refresh would move exp on
            r = await refresh(client, chain[-1])
            assert r.status_code == 200
            chain.append(r.json())
        ends = {jwt.get_unverified_claims(t["refresh_token"])["exp"] for t in chain}
        assert len(ends) == 1, ends
        login_at = jwt.get_unverified_claims(chain[0]["refresh_token"])["iat"]
        assert abs(ends.pop() - login_at - settings.refresh_token_expire_minutes * 60) <= 1
        for t in chain:  # no access token outlives its chain either
            claims = jwt.get_unverified_claims(t["access_token"])
            assert claims["exp"] <= jwt.get_unverified_claims(t["refresh_token"])["exp"]

    async def test_forwarded_for_is_believed_only_from_trusted_proxies(
        self, tmp_path: Path
    ) -> None:
        limit = {"LOGIN_FAILURES_PER_ADDRESS": "3"}
        varying = [f"203.0.113.{i}" for i in range(5)]
        with served(tmp_path / "direct", **limit) as base:
            # The header is the client's word: the socket's peer (127.0.0.1) is counted.
            assert await wrong_logins(base, varying) == [401] * 3 + [429] * 2
        with served(tmp_path / "proxied", FORWARDED_ALLOW_IPS="127.0.0.1", **limit) as base:
            assert await wrong_logins(base, [f"198.51.100.{i}" for i in range(5)]) == [401] * 5
            assert await wrong_logins(base, ["192.0.2.1"] * 5) == [401] * 3 + [429] * 2

    async def test_token_version_counts_every_revocation(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        [(before,)] = await fetch('SELECT token_version FROM "user" WHERE id = :id', id=user["id"])
        change = {"password": "a new password", "current_password": PASSWORD}
        replies = await asyncio.gather(
            *(client.post("/api/auth/logout", headers=user.headers) for _ in range(5)),
            client.patch("/api/users/me", json=change, headers=user.headers),
        )
        succeeded = sum(r.status_code in (200, 204) for r in replies)
        assert succeeded >= 1 and {r.status_code for r in replies} <= {200, 204, 401}
        [(after,)] = await fetch('SELECT token_version FROM "user" WHERE id = :id', id=user["id"])
        assert after - before == succeeded  # in SQL: no bump overwrote another


class TestAPI3BrokenObjectPropertyLevelAuthorizationRevision2:
    """Strict JSON types, null, and no deleted body through idempotency."""

    async def test_json_types_are_strict_and_null_is_refused(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        admin = await make_user(scopes=["regular", "admin"])
        user = await make_user()
        thread = await new_thread(client, user)
        target = f"/api/users/{user['id']}"
        for value in (1, 0, "true"):
            r = await client.patch(target, json={"is_active": value}, headers=admin.headers)
            assert r.status_code == 422, (value, r.text)
        r = await client.post("/api/threads", json={"member_ids": [True]}, headers=user.headers)
        assert r.status_code == 422
        r = await client.post(
            f"/api/threads/{thread['id']}/members", json={"user_id": str(admin["id"])},
            headers=user.headers,
        )  # fmt: skip
        assert r.status_code == 422
        for field in ("full_name", "email", "password"):
            r = await client.patch("/api/users/me", json={field: None}, headers=user.headers)
            assert r.status_code == 422, (field, r.text)
        for field in ("full_name", "email", "is_active"):
            r = await client.patch(target, json={field: None}, headers=admin.headers)
            assert r.status_code == 422, (field, r.text)
        assert (await client.get("/api/users/me", headers=user.headers)).json()["is_active"] is True
        r = await client.patch(
            f"/api/threads/{thread['id']}", json={"title": None}, headers=user.headers
        )
        assert r.status_code == 200 and r.json()["title"] is None

    async def test_resending_a_deleted_client_id_is_409_and_silent(
        self, client: AsyncClient, live_server: str, make_user: MakeUser
    ) -> None:
        me, friend = await make_user(), await make_user()
        thread = await new_thread(client, me, friend)
        url = f"/api/threads/{thread['id']}/messages"
        body = {"body": "the secret plan", "client_id": "c-1"}
        message = (await client.post(url, json=body, headers=me.headers)).json()
        await client.delete(f"{url}/{message['id']}", headers=me.headers)
        ws = await listen(live_server, friend)
        r = await client.post(url, json=body, headers=me.headers)
        assert r.status_code == 409 and "secret plan" not in r.text
        await assert_silent(ws)
        await ws.close()


class TestAPI4UnrestrictedResourceConsumptionRevision2:
    """Capacity: pool, hashing queue, sockets per user, SQLite readers."""

    @pg_only
    async def test_pool_timeout_is_503_with_retry_after(
        self, make_user: MakeUser, tmp_path: Path
    ) -> None:
        user = await make_user()
        pool = {"DB_POOL_SIZE": "1", "DB_POOL_TIMEOUT": "0.5"}
        with served(tmp_path, **pool) as base:
            async with AsyncClient(base_url=base, timeout=30) as http, engine.connect() as lock:
                # A write that blocks on a table lock keeps the only pooled connection busy.
                await lock.exec_driver_sql('LOCK TABLE "thread" IN EXCLUSIVE MODE')
                stuck = asyncio.create_task(
                    http.post("/api/threads", json={"member_ids": []}, headers=user.headers)
                )
                await asyncio.sleep(0.5)
                r = await http.get("/api/threads", headers=user.headers)
                assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
                await lock.rollback()
                assert (await stuck).status_code == 201
                # It recovers by itself.
                assert (await http.get("/api/users/me", headers=user.headers)).status_code == 200

    async def test_full_hash_queue_is_503_with_retry_after(self, tmp_path: Path) -> None:
        with served(tmp_path, HASH_QUEUE_SIZE="1") as base:
            async with AsyncClient(base_url=base, timeout=30) as http:
                replies = await asyncio.gather(
                    *(signup(http, f"q{i}@example.com") for i in range(12))
                )
                codes = [r.status_code for r in replies]
                assert set(codes) == {201, 503}, codes
                assert all(
                    r.headers["Retry-After"].isdigit() for r in replies if r.status_code == 503
                )
                assert (await signup(http, "later@example.com")).status_code == 201

    @pg_only
    async def test_logins_do_not_hold_a_connection_while_hashing(
        self, make_user: MakeUser, tmp_path: Path
    ) -> None:
        user = await make_user()
        # Parallel logins of one email are counted before they are checked: allow them all.
        env = {"DB_POOL_SIZE": "1", "DB_POOL_TIMEOUT": "0.3", "LOGIN_FAILURES_PER_EMAIL": "100"}
        with served(tmp_path, **env) as base:
            async with AsyncClient(base_url=base, timeout=30) as http:
                # Hashes take turns on one core: twenty of them take far longer than the pool
                # timeout, which only hurts if a login keeps its connection while it waits.
                replies = await asyncio.gather(
                    *(login(http, user["email"]) for _ in range(20)),
                    *(http.get("/api/users/me", headers=user.headers) for _ in range(5)),
                )
        codes = [r.status_code for r in replies]
        assert codes == [200] * 25, codes

    async def test_sockets_per_user_are_capped(self, make_user: MakeUser, tmp_path: Path) -> None:
        user = await make_user()
        with served(tmp_path, WS_MAX_PER_USER="2") as base:
            server = base.removeprefix("http://")
            first, second = await listen(server, user), await listen(server, user)
            async with connect(
                f"ws://{server}/api/ws?token={user['token']['access_token']}"
            ) as third:
                assert await close_code(third) == 4429
            await first.close()
            await asyncio.sleep(0.2)  # the server notices the close and unregisters it
            again = await listen(server, user)  # READY: there is room again
            await again.close()
            await second.close()

    @sqlite_only
    async def test_sqlite_reads_do_not_wait_for_the_write_lock(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        async with write_lock():
            started = time.monotonic()
            for path in ("/api/users/me", "/api/threads"):
                assert (await client.get(path, headers=user.headers)).status_code == 200
            assert time.monotonic() - started < 2
            write = asyncio.create_task(
                client.post("/api/threads", json={"member_ids": []}, headers=user.headers)
            )
            await asyncio.sleep(0.5)
            assert not write.done()  # the writer waits its turn
        assert (await write).status_code == 201


class TestAPI5BrokenFunctionLevelAuthorizationRevision2:
    """No self-lockout; the last superuser stays."""

    async def test_admins_cannot_lock_themselves_out(
        self, client: AsyncClient, make_user: MakeUser
    ) -> None:
        me = await make_user(scopes=["regular", "admin", "superuser"])
        await make_user(scopes=["regular", "admin", "superuser"])  # so "last one" is not why
        mine = f"/api/users/{me['id']}"
        for change in (
            {"is_active": False},
            {"scopes": ["regular", "admin"]},
            {"scopes": ["regular"]},
        ):
            r = await client.patch(mine, json=change, headers=me.headers)
            assert r.status_code == 403, (change, r.text)
        assert (await client.delete(mine, headers=me.headers)).status_code == 403
        r = await client.get("/api/users/me", headers=me.headers)
        assert r.json()["scopes"] == ["regular", "admin", "superuser"] and r.json()["is_active"]

    @pytest.mark.parametrize(
        ("method", "body"),
        [("PATCH", {"scopes": ["regular"]}), ("PATCH", {"is_active": False}), ("DELETE", None)],
    )
    async def test_two_superusers_removing_each_other_leave_one(
        self, client: AsyncClient, make_user: MakeUser, method: str, body: Any
    ) -> None:
        a = await make_user(scopes=["regular", "admin", "superuser"])
        b = await make_user(scopes=["regular", "admin", "superuser"])
        replies = await asyncio.gather(
            client.request(method, f"/api/users/{b['id']}", json=body, headers=a.headers),
            client.request(method, f"/api/users/{a['id']}", json=body, headers=b.headers),
        )
        codes = sorted(r.status_code for r in replies)
        # One wins; the other is the last superuser's (409), or its own token lost the scope.
        assert codes[0] in (200, 204) and codes[1] in (403, 409), codes
        left = await fetch(
            """SELECT id FROM "user" WHERE NOT deleted AND is_active AND CAST(scopes AS TEXT) LIKE '%superuser%'"""
        )
        assert len(left) == 1


class TestAPI8SecurityMisconfigurationRevision2:
    """Bad cursors, secrets out of logs, weak keys refused."""

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            ("/api/threads", ["0001-01-01T00:00:00+14:00", 1]),
            ("/api/threads", ["9999-12-31T23:59:59-14:00", 1]),
            ("/api/threads", ["2026-01-01T00:00:00", 1]),  # naive
            ("/api/threads", ["2026-01-01T00:00:00+00:00", 0]),
            ("/api/threads", ["2026-01-01T00:00:00+00:00", 2**31]),
            ("/api/threads", ["2026-01-01T00:00:00+00:00", 1.5]),
            ("/api/threads", ["2026-01-01T00:00:00+00:00", [1]]),
            ("/api/threads", ["2026-01-01T00:00:00+00:00"]),
            ("/api/threads", 1),
            ("/api/users", [0]),
            ("/api/users", [-1]),
            ("/api/users", [2**31]),
            ("/api/users", [2**64]),
            ("/api/users", [1.0]),
            ("/api/users", [True]),
            ("/api/users", [[1]]),
            ("/api/users", [1, 2]),
            ("/api/users", []),
            ("/api/users", {"id": 1}),
        ],
    )
    async def test_cursors_at_the_edges_are_400(
        self, client: AsyncClient, make_user: MakeUser, path: str, value: Any
    ) -> None:
        admin = await make_user(scopes=["regular", "admin"])
        r = await client.get(path, params={"cursor": cursor(value)}, headers=admin.headers)
        assert r.status_code == 400, r.text

    def test_plain_uvicorn_logs_no_token(self, tmp_path: Path) -> None:
        port = free_port()
        log = (tmp_path / "uvicorn.log").open("wb")
        proc = subprocess.Popen(  # uvicorn's own logging config, access log on
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
            cwd=ROOT,
            env=clean_env(DATABASE_URL=settings.database_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://{base}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            body = {"email": "logs@example.com", "password": PASSWORD, "full_name": "L"}
            assert httpx.post(f"http://{base}/api/auth/signup", json=body).status_code == 201
            form = {"username": body["email"], "password": PASSWORD}
            token = httpx.post(f"http://{base}/api/auth/token", data=form).json()["access_token"]
            for query in (f"token={token}", f"%74oken={token}", f"x=1&token={token}"):
                with sync_connect(f"ws://{base}/api/ws?{query}") as ws:
                    assert json.loads(ws.recv(5)) == READY
            assert httpx.get(f"http://{base}/api/users/me?token={token}").status_code == 401
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
        output = (tmp_path / "uvicorn.log").read_text()
        assert "GET /api/users/me" in output  # the access log is on, and still useful
        assert "Logging error" not in output
        assert token not in output and token.split(".")[2] not in output

    @pytest.mark.parametrize("key", ["short", "x" * 31])
    def test_production_refuses_a_short_secret_key(self, tmp_path: Path, key: str) -> None:
        env = clean_env(ENVIRONMENT="production", SECRET_KEY=key)
        proc = subprocess.run(
            [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, timeout=30
        )
        assert proc.returncode != 0
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Refusing to start"), lines
