"""The README's "first five minutes" tour, run as written against a live server."""

import os
import re
import subprocess
from pathlib import Path

from tests.helpers import ROOT, serve


def tour_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language} tour\n(.*?)```", text, flags=re.S)


def test_the_readme_tour_runs(tmp_path: Path) -> None:
    shell = tour_blocks("sh")
    [watcher] = tour_blocks("python")
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
