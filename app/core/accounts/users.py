"""Users, their logins (refresh-token chains) and the tokens mail carries."""

import hashlib
import secrets
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Row, String, bindparam, cast, delete, or_, select, true, update
from sqlalchemy.sql.elements import ColumnElement

from app.core.accounts.models import AuthSession, MailToken, TokenRow, User, UserRow
from app.core.errors import NotFound
from app.core.events import UserChanged, UserDeleted, publish
from app.core.models import Page, table, utcnow
from app.core.outbox import Outbox
from app.core.repository import Keyset, Repository, contains, encode_cursor, live, pattern
from app.core.settings import settings

users, sessions, tokens = table(User), table(AuthSession), table(MailToken)
# Columns only the checks of a password or a code read: never part of a Caller.
SECRETS = {"hashed_password", "totp_secret"}


def holds(scope: str) -> ColumnElement[bool]:
    # scopes is a JSON list: its text holds the quoted name on both databases.
    return cast(users.c.scopes, String).contains(f'"{scope}"')


class Users(Repository[UserRow]):
    table, row = users, UserRow
    conflict = "A user with this email already exists"

    _by_email = select(users).where(live(users), users.c.email == bindparam("email"))
    # The token's user (not its password hash or TOTP secret), and its login still valid.
    _for_token = (
        select(*(c for c in users.c if c.name not in SECRETS))
        .join(sessions, sessions.c.user_id == users.c.id)
        .where(
            users.c.id == bindparam("id"),
            sessions.c.id == bindparam("sid"),
            live(users),
            live(sessions),
            users.c.is_active == true(),
        )
    )

    async def by_email(self, email: str) -> UserRow | None:
        return await self.first(self._by_email, email=email)

    async def for_token(self, user_id: int, session_id: int) -> Row[Any] | None:
        return (
            await self.conn.execute(self._for_token, {"id": user_id, "sid": session_id})
        ).first()

    async def active_ids(self, ids: set[int]) -> set[int]:
        stmt = select(users.c.id).where(
            users.c.id.in_(ids), live(users), users.c.is_active == true()
        )
        return set((await self.conn.execute(stmt)).scalars())

    @staticmethod
    @cache
    def _search(q: bool, include_deleted: bool) -> Keyset:
        """The pages of a search, by `q` or not: built once for each kind."""
        stmt = Users.select(include_deleted=include_deleted)
        if q:
            stmt = stmt.where(or_(contains(users.c.email, "q"), contains(users.c.full_name, "q")))
        return Keyset(stmt, [users.c.id])

    async def search(
        self, q: str | None, include_deleted: bool, limit: int, after: list[Any] | None
    ) -> Page[UserRow]:
        params = {"q": pattern(q)} if q else {}
        found, more = await self._search(bool(q), include_deleted).page(
            self.conn, limit, after, **params
        )
        items = self.built(found)
        return Page(items=items, next_cursor=encode_cursor([items[-1].id]) if more else None)

    async def update(self, id: int, **values: Any) -> UserRow | None:
        """Every change of a user says so: processes forget what they remember of it, and
        a revocation closes the user's sockets."""
        publish(self.conn, UserChanged(user_id=id, revoked="token_version" in values))
        return await super().update(id, **values)

    async def change(self, user_id: int, *, revoke: bool = False, **values: Any) -> UserRow:
        """Update a live user; losing the right to log in (deactivation, deletion, a new
        password) revokes every token in SQL. NotFound when it was deleted a moment ago."""
        if revoke or values.get("is_active") is False or values.get("deleted"):
            values["token_version"] = users.c.token_version + 1
        changed = await self.update(user_id, **values)
        if changed is None:
            raise NotFound("User not found")
        return changed

    async def rehash(self, user_id: int, checked: str, new_hash: str) -> None:
        """Store a new hash of the password that matched `checked`, unless the password
        changed since it was read: a reset racing a login must not get the old one back."""
        publish(self.conn, UserChanged(user_id=user_id))
        await self.conn.execute(
            update(users)
            .where(users.c.id == user_id, users.c.hashed_password == checked)
            .values(hashed_password=new_hash, updated_at=utcnow())
        )

    async def delete(self, user_id: int) -> None:
        """Soft-delete; what else must go with the user (its threads) subscribes to
        `UserDeleted` inside this transaction, after the user's row is locked here."""
        await self.change(user_id, deleted=True)
        publish(self.conn, UserDeleted(user_id=user_id))

    # FOR NO KEY UPDATE: rows that name the user (a message it sends) take their foreign
    # key's share lock alongside it, else a send holding its thread's lock and a deletion
    # holding the user, then asking for the thread, would deadlock.
    _lock = (
        select(users)
        .where(users.c.id == bindparam("id"), live(users))
        .with_for_update(key_share=True)
    )

    async def lock(self, user_id: int) -> UserRow:
        """The live user, locked until the transaction ends. Locks are taken in one order
        (superusers, then a user, then what it owns), so no two requests deadlock."""
        user = await self.first(self._lock, id=user_id)
        if user is None:
            raise NotFound("User not found")
        return user

    async def lock_superusers(self) -> list[int]:
        """The active superusers, locked, so two demotions cannot both leave the other."""
        stmt = (
            select(users.c.id)
            .where(live(users), users.c.is_active == true(), holds("superuser"))
            .order_by(users.c.id)
            .with_for_update()
        )
        return list((await self.conn.execute(stmt)).scalars())

    # ------------------------------------------------------------------ logins

    async def open_session(
        self, user_id: int, jti: str, lifetime: timedelta
    ) -> tuple[int, datetime]:
        now = utcnow()
        stmt = (
            sessions.insert()
            .values(
                user_id=user_id, jti=jti, created_at=now, updated_at=now, expires_at=now + lifetime
            )
            .returning(sessions.c.id, sessions.c.expires_at)
        )
        sid, expires = (await self.conn.execute(stmt)).one()
        return sid, expires

    async def rotate_session(self, sid: int, jti: str, new_jti: str) -> datetime | None:
        """Move a chain to its next refresh token; None if `jti` is not its current one."""
        stmt = (
            update(sessions)
            .where(
                sessions.c.id == sid,
                sessions.c.jti == jti,
                live(sessions),
                sessions.c.expires_at > utcnow(),
            )
            .values(jti=new_jti, updated_at=utcnow())
            .returning(sessions.c.expires_at)
        )
        ends: datetime | None = (await self.conn.execute(stmt)).scalar()
        return ends

    async def end_session(self, sid: int) -> None:
        stmt = update(sessions).where(sessions.c.id == sid).returning(sessions.c.user_id)
        ended = await self.conn.execute(stmt.values(deleted=True, updated_at=utcnow()))
        for user_id in ended.scalars():
            publish(self.conn, UserChanged(user_id=user_id, revoked=True, session_id=sid))

    async def prune(self) -> None:
        """Logins that expired: what keeps the table bounded. An ended one stays until then:
        its tokens name its id, and SQLite gives a removed highest id to the next row."""
        await self.conn.execute(delete(sessions).where(sessions.c.expires_at < utcnow()))


class MailTokens(Repository[TokenRow]):
    """Reset and verification tokens: only their sha256 is stored."""

    table, row = tokens, TokenRow
    _live = (
        tokens.c.token_hash == bindparam("b_hash"),
        tokens.c.kind == bindparam("b_kind"),
        live(tokens),
    )

    async def mail(self, kind: str, user_id: int, email: str) -> None:
        """A new token, superseding the user's earlier ones of this kind mailed to `email`,
        and its mail. One mailed elsewhere stays: a pending email's token works beside a
        resent one for the email, and either is refused once its address is neither."""
        # The user's row first: a second mail racing this one (two processes' runners each
        # on a reset request) waits, then voids this token, not only what it saw committed.
        # A user deleted meanwhile is NotFound: no mail for it.
        await Users(self.conn).lock(user_id)
        await self.void(user_id, kind, email)
        token = secrets.token_urlsafe(32)
        expires = utcnow() + LIFETIMES[kind]()
        await self.create(
            kind=kind, user_id=user_id, email=email, token_hash=digest(token), expires_at=expires
        )
        await Outbox(self.conn).queue(kind, email, token=token)

    async def void(self, user_id: int, kind: str, email: str | None = None) -> None:
        """The user's live tokens of `kind`; only those mailed to `email` if given."""
        stmt = update(tokens).where(
            tokens.c.user_id == user_id, tokens.c.kind == kind, live(tokens)
        )
        if email is not None:
            stmt = stmt.where(tokens.c.email == email)
        await self.conn.execute(stmt.values(deleted=True, updated_at=utcnow()))

    async def peek(self, kind: str, token: str) -> TokenRow | None:
        """The token if it would work now; nothing is used up."""
        stmt = select(tokens).where(*self._live, tokens.c.expires_at > utcnow())
        return await self.first(stmt, b_hash=digest(token), b_kind=kind)

    async def redeem(self, kind: str, token: str) -> TokenRow | None:
        """Use a token, in one statement, so two requests cannot both use it."""
        stmt = (
            update(tokens)
            .where(*self._live, tokens.c.expires_at > utcnow())
            .values(deleted=True, updated_at=utcnow())
            .returning(*tokens.c)
        )
        return await self.first(stmt, b_hash=digest(token), b_kind=kind)

    async def prune(self) -> None:
        """Tokens that expired: the table stays bounded."""
        await self.conn.execute(delete(tokens).where(tokens.c.expires_at < utcnow()))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


LIFETIMES = {
    "reset": lambda: timedelta(minutes=settings.password_reset_expire_minutes),
    "verify": lambda: timedelta(minutes=settings.email_verify_expire_minutes),
}
