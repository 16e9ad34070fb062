# syntax=docker/dockerfile:1

# ---- builder: the runtime dependencies from uv.lock, into /opt/venv ----
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

# The same pinned uv as the Makefile's.
RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /build

# Only the two dependency files: this layer is rebuilt when the lock changes, not the code.
# --frozen installs exactly uv.lock (never re-resolved), --no-dev leaves the test tools out,
# and the project itself is not installed: the runtime stage runs it from its source.
# Every dependency ships a manylinux wheel for CPython 3.11, so no compiler is needed.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache

# ---- runtime: slim base, the venv and the source, no build tools, non-root ----
FROM python:3.11-slim-bookworm AS runtime

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    ENVIRONMENT=production \
    WORKERS=1

RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app --no-create-home app

COPY --from=builder /opt/venv /opt/venv

# The app finds alembic.ini next to app/, so the three live together in the working directory.
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ ./migrations/
COPY app/ ./app/
# Uploads are kept on disk here (UPLOAD_DIR's default, in the working directory, which the
# app's user may not write): a folder of its own, for a volume (compose.yaml) to take over.
RUN mkdir uploads && chown 10001:10001 uploads

# Numeric, so the runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001

EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health' % os.environ.get('PORT', '8080'), timeout=4)"]

CMD ["python", "-m", "app"]
