"""What more than one file here shares: the dev group's binaries, and how to run them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


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
