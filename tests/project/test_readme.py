"""The documents, held to the code: the example's tour runs as written against a live
server; the README's layout names every file of app/ and nothing else; every setting the
documents name is one the app reads; and the README's recipe for a new entity works, as
written, in a copy of the repository."""

import os
import re
import subprocess
import sys
from pathlib import Path

from app.core.settings import Settings, settings
from app.messenger.settings import MessengerSettings
from tests.helpers import ROOT
from tests.servers import clean_env, copy_tracked, scratch_postgres, serve

README = ROOT / "README.md"
TOUR = ROOT / "app" / "messenger" / "README.md"
DOCUMENTS = (README, ROOT / "deploy" / "README.md", ROOT / ".env.sample")


def blocks(path: Path, info: str) -> list[str]:
    """The fenced blocks of `path` whose info string starts with `info`."""
    return re.findall(rf"```{info}\n(.*?)```", path.read_text(), flags=re.S)


def test_the_tour_runs(tmp_path: Path) -> None:
    shell = blocks(TOUR, "sh tour")
    [watcher] = blocks(TOUR, "python tour")
    assert len(shell) == 4
    (tmp_path / "watch.py").write_text(watcher)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the tour uses .venv/bin/python
    with serve(tmp_path) as base:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(shell)],
            cwd=tmp_path,
            env={**os.environ, "BASE": base},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith('{"id":') and '"email":"ada@example.com"' in lines[0]
    assert lines[2:6] == ["3", "The usual place", "Lunch at noon?", "0"], lines
    event = next(line for line in lines if line.startswith("event:"))
    assert "'type': 'message.created'" in event and "On my way" in event
    # Caught up through the changes feed: the edit, a tombstone, the new message.
    assert lines[-6:-3] == ["5 The usual place, 12:30", "6 deleted", "7 Table for two"], lines
    # A reply that mentions Ada: her badge, her mentions.
    assert lines[-3:] == ["True", "1", "12:30 it is"], lines


# --- the layout --------------------------------------------------------------------------


def layout(text: str) -> set[str]:
    """The files the README's layout tree names, as paths: a name belongs to the folder of
    its line, or to the nearest folder above it that is indented less."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    [tree] = re.findall(r"```\n(.*?)```", section, flags=re.S)
    folders: list[tuple[int, str]] = []
    named = set()
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        first = line.split()[0]
        if first.endswith("/"):
            folders.append((indent, (folders[-1][1] if folders else "") + first))
        where = folders[-1][1] if folders else ""
        named |= {where + name for name in re.findall(r"[\w.]+\.(?:py|md)\b", line)}
    return named


def test_the_layout_names_every_file_of_app() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = {name for name in listed if Path(name).name != "__init__.py"}
    assert files, "git lists no file under app/"
    named = layout(README.read_text())
    assert named - files == set(), "named in the README's layout, but no such file"
    assert files - named == set(), "files the README's layout leaves out"


def test_the_layout_check_sees_a_missing_file() -> None:
    text = README.read_text().replace("    storage.py ", "    ", 1)
    assert text != README.read_text()
    assert "app/core/storage.py" not in layout(text)


# --- the settings --------------------------------------------------------------------------

# `NAME_WITH_UNDERSCORES` or `NAME=value` in an inline code span, or NAME=value opening a
# line (after a comment mark or not). OTEL_* are the OpenTelemetry SDK's variables, not ours.
SETTING = re.compile(
    r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=[^`]*)?`|^#? ?([A-Z][A-Z0-9_]*)=",
    re.M,
)


def named_settings(text: str) -> set[str]:
    names = {a or b for a, b in SETTING.findall(text)}
    return {name for name in names if not name.startswith("OTEL_")}


def app_settings() -> set[str]:
    return {name.upper() for name in (*Settings.model_fields, *MessengerSettings.model_fields)}


def test_the_documents_name_only_settings_the_app_reads() -> None:
    for document in DOCUMENTS:
        unknown = named_settings(document.read_text()) - app_settings()
        assert not unknown, f"{document.relative_to(ROOT)} names settings the app lacks"


def test_env_sample_lists_every_setting() -> None:
    assert app_settings() - named_settings((ROOT / ".env.sample").read_text()) == set()


def test_a_misspelt_setting_is_caught() -> None:
    assert named_settings("set `TRUSTED_PROXIES` or\nEVENT_URL=redis://x\n") == {
        "TRUSTED_PROXIES",
        "EVENT_URL",
    }


# --- the recipe for a new entity ---------------------------------------------------------


def recipe() -> dict[str, str]:
    """The README's recipe files: {path: text}."""
    return dict(re.findall(r"```python recipe (\S+)\n(.*?)```", README.read_text(), re.S))


def add_to_main(main: Path, lines: str) -> None:
    """What the recipe says to change in app/main.py: its FEATURES line replaces ours, its
    import goes after our last `from app.` import."""
    text = main.read_text()
    for line in filter(None, lines.splitlines()):
        if line.startswith("FEATURES"):
            text, replaced = re.subn(r"^FEATURES\b.*$", line, text, count=1, flags=re.M)
            assert replaced == 1, "app/main.py has no FEATURES line"
        else:
            last = list(re.finditer(r"^from app\..*$", text, flags=re.M))[-1]
            text = text[: last.end()] + "\n" + line + text[last.end() :]
    main.write_text(text)


def test_the_recipe_for_a_new_entity_works(tmp_path: Path) -> None:
    files = recipe()
    [commands] = blocks(README, "sh recipe")
    assert set(files) == {
        "app/notes/models.py",
        "app/notes/notes.py",
        "app/notes/routes.py",
        "app/notes/feature.py",
        "app/main.py",
        "tests/notes/test_notes.py",
    }
    copy = tmp_path / "repo"
    copy_tracked(copy)
    for name, text in files.items():
        if name != "app/main.py":
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_text(text)
    (copy / "app" / "notes" / "__init__.py").touch()
    (copy / "tests" / "notes" / "__init__.py").touch()
    add_to_main(copy / "app" / "main.py", files["app/main.py"])
    (copy / ".venv").symlink_to(ROOT / ".venv")  # the commands use .venv/bin/...
    ruff = str(Path(sys.executable).parent / "ruff")

    def run(database_url: str, *argv: str) -> None:
        proc = subprocess.run(
            argv,
            cwd=copy,
            env=clean_env(DATABASE_URL=database_url, UPLOAD_DIR=str(tmp_path / "uploads")),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"{' '.join(argv)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )

    def steps(url: str) -> None:
        run(url, "bash", "-euo", "pipefail", "-c", commands)
        run(url, ruff, "check", "app/notes", "tests/notes", "migrations")
        run(url, ruff, "format", "--check", "app/notes", "tests/notes", "migrations")
        run(url, sys.executable, "-m", "pytest", "tests/notes", "-q", "-p", "no:cacheprovider")

    if settings.is_sqlite:
        steps(f"sqlite+aiosqlite:///{tmp_path}/recipe.db")
    else:
        with scratch_postgres(settings.database_url, "recipe") as url:
            steps(url)
    [migration] = (copy / "migrations" / "versions").glob("*_notes.py")
    assert "create_table" in migration.read_text() and '"note"' in migration.read_text()
