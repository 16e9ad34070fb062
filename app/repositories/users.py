"""Users, their logins (refresh-token chains) and the failed-login counters."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, case, cast, delete, literal, or_, select, true, update
from sqlalchemy.sql.elements import ColumnElement

from app.db import publish
from app.errors import NotFound
from app.models.base import Page, UTCDateTime, table, utcnow
from app.models.user import AuthSession, LoginCounter, User, UserRow
from app.repositories.base import Keyset, Repository, encode_cursor, live, upsert

users, sessions, counters = table(User), table(AuthSession), table(LoginCounter)


def holds(scope: str) -> ColumnElement[bool]:
    # scopes is a JSON list: its text holds the quoted name on both databases.
    return cast(users.c.scopes, String).contains(f'"{scope}"')


class Users(Repository[UserRow]):
    table, row = users, UserRow
    conflict = "A user with this email already exists"

    _by_email = select(users).where(live(users), users.c.email == bindparam("email"))
    # The token's user, and its login still valid: one statement on every request.
    _for_token = (
        select(users)
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

    async def for_token(self, user_id: int, session_id: int) -> UserRow | None:
        return await self.first(self._for_token, id=user_id, sid=session_id)

    async def active_ids(self, ids: set[int]) -> set[int]:
        stmt = select(users.c.id).where(
            users.c.id.in_(ids), live(users), users.c.is_active == true()
        )
        return set((await self.conn.execute(stmt)).scalars())

    async def search(
        self, q: str | None, include_deleted: bool, limit: int, after: list[Any] | None
    ) -> Page[UserRow]:
        stmt = self.select(include_deleted=include_deleted)
        if q:
            pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(
                or_(
                    users.c.email.ilike(pattern, escape="\\"),
                    users.c.full_name.ilike(pattern, escape="\\"),
                )
            )
        rows, more = await Keyset(stmt, [users.c.id]).page(self.conn, limit, after)
        items = [self.load(r) for r in rows]
        return Page(items=items, next_cursor=encode_cursor([items[-1].id]) if more else None)

    async def update(self, id: int, **values: Any) -> UserRow | None:
        """Every change of a user says so: processes forget what they remember of it, and
        a revocation closes the user's sockets."""
        revoked = "token_version" in values
        publish(self.conn, {"type": "user.changed", "user_id": id, "revoked": revoked})
        return await super().update(id, **values)

    async def change(self, user: UserRow, **values: Any) -> UserRow:
        """Update a user; losing the right to log in (deactivation, deletion, a new
        password) revokes every token in SQL."""
        revoke = values.pop("revoke", False) or values.get("is_active") is False
        if revoke or values.get("deleted"):
            values["token_version"] = users.c.token_version + 1
        changed = await self.update(user.id, **values)
        if changed is None:  # deleted a moment ago
            raise NotFound("User not found")
        return changed

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
            publish(self.conn, {"type": "user.changed", "user_id": user_id, "revoked": False})

    async def count_attempt(self, key: str, window: timedelta) -> tuple[int, datetime]:
        """Count an attempt for `key` in one statement: (attempts in the window, its start)."""
        now = utcnow()
        fresh = counters.c.window_start <= now - window
        stmt = (
            upsert(counters)
            .values(key=key, count=1, window_start=now)
            .on_conflict_do_update(
                index_elements=[counters.c.key],
                set_={
                    "count": case((fresh, 1), else_=counters.c.count + 1),
                    "window_start": case(
                        (fresh, literal(now, UTCDateTime())), else_=counters.c.window_start
                    ),
                },
            )
            .returning(counters.c.count, counters.c.window_start)
        )
        count, start = (await self.conn.execute(stmt)).one()
        return count, start

    async def forget_attempts(self, key: str) -> None:
        await self.conn.execute(delete(counters).where(counters.c.key == key))

    async def uncount(self, key: str) -> None:
        await self.conn.execute(
            update(counters).where(counters.c.key == key).values(count=counters.c.count - 1)
        )

    async def prune(self, window: timedelta) -> None:
        """Expired counters and logins: what keeps both tables bounded."""
        now = utcnow()
        await self.conn.execute(delete(counters).where(counters.c.window_start < now - window))
        await self.conn.execute(
            delete(sessions).where(or_(sessions.c.expires_at < now, sessions.c.deleted == true()))
        )
