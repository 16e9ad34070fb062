"""What the messenger's routes declare beyond the core's: the thread a member may see, and
the texts of its paths and queries."""

from typing import Annotated

from fastapi import Depends, Path, Query
from pydantic import AfterValidator
from starlette.convertors import PathConvertor, register_url_convertor

from app.core.deps import CurrentUser, ReadDb
from app.core.models import Id
from app.messenger.message_models import words
from app.messenger.thread_models import ThreadRow
from app.messenger.threads import Threads


async def member_thread(db: ReadDb, user: CurrentUser, thread_id: Id) -> ThreadRow:
    """The thread, if the caller is a member (else 404): a validator for read routes."""
    return await Threads(db).visible(thread_id, user.id)


MemberThread = Annotated[ThreadRow, Depends(member_thread)]


class AnyText(PathConvertor):
    """A path parameter of any text, `/` and line breaks too: its own rule refuses them with
    a 422 (the `path` convertor stops at a line break, the default one at `/`: 404s)."""

    regex = "(?s:.*)"


# Starlette keeps convertors in one registry, which route templates name (`{emoji:text}`):
# it must be filled before the routes that use it are declared.
register_url_convertor("text", AnyText())

Emoji = Annotated[
    str,
    Path(
        min_length=1,
        max_length=32,
        pattern=r"^[^\s/\x00]+$",
        description="An emoji, or a short name such as `thumbs_up`: no whitespace, no `/`",
        examples=["👍"],
    ),
]


def _has_words(q: str) -> str:
    if not words(q):
        raise ValueError("q needs at least one word (letters or digits)")
    return q


SearchText = Annotated[
    str,
    Query(min_length=1, max_length=200, description="Words that must all occur, in any case"),
    AfterValidator(_has_words),
]
