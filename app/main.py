import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from app import realtime
from app.db import SessionMaker, engine, migrate_to_head
from app.models.user import SCOPES, User
from app.realtime import hub
from app.routers import auth, health, messages, threads, users
from app.routers.users import find_by_email
from app.security import hash_password
from app.settings import settings


async def ensure_first_superuser() -> None:
    email, password = settings.first_superuser_email, settings.first_superuser_password
    if not (email and password):
        return
    try:
        async with SessionMaker() as session, session.begin():
            user = await find_by_email(session, email)
            if user is None:
                hashed = await hash_password(password)
                user = User.model_validate(
                    {"email": email, "full_name": "Superuser", "hashed_password": hashed}
                )
            user.scopes, user.is_active = list(SCOPES), True
            session.add(user)
    except IntegrityError:
        pass  # another process starting at the same time created it


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    if settings.is_sqlite:  # the embedded default needs no setup step
        await asyncio.to_thread(migrate_to_head)
    await ensure_first_superuser()
    await hub.start()
    yield
    await hub.stop()
    await engine.dispose()


app = FastAPI(
    title="FastAPI Boilerplate",
    summary="A messenger as the example application of an async FastAPI template.",
    lifespan=lifespan,
)


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 list, without echoing the input: it may be a password."""
    errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


api = APIRouter(prefix="/api")
for module in (auth, users, threads, messages, realtime, health):
    api.include_router(module.router)
app.include_router(api)
