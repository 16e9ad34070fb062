"""The TypeScript client in clients/ts: regenerated from the app's OpenAPI it equals the
committed one, and its typed usage file passes `tsc --noEmit`.

Needs node and `npm ci` in clients/ts (`make client` runs it; CI too); skipped without them.
"""

import difflib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT
from tests.servers import clean_env

TS = ROOT / "clients" / "ts"
BIN = TS / "node_modules" / ".bin"

if shutil.which("node") is None:
    pytest.skip("node is not installed (apt-get install nodejs npm)", allow_module_level=True)
if not (BIN / "openapi-typescript").exists() or not (BIN / "tsc").exists():
    pytest.skip("clients/ts has no node_modules: run `make client`", allow_module_level=True)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_committed_client_matches_the_api(tmp_path: Path) -> None:
    # A fresh process with the default settings: what `make client` sees.
    result = run([sys.executable, str(TS / "generate.py"), str(tmp_path)], env=clean_env())
    assert result.returncode == 0, result.stderr
    fresh = (tmp_path / "schema.d.ts").read_text().splitlines(keepends=True)
    committed = (TS / "schema.d.ts").read_text().splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(committed, fresh, "committed", "generated", n=1))
    assert not diff, f"clients/ts/schema.d.ts is stale: run `make client`\n{diff[:3000]}"


def test_usage_file_type_checks() -> None:
    result = run([str(BIN / "tsc"), "--noEmit", "-p", str(TS)])
    assert result.returncode == 0, f"tsc:\n{result.stdout}{result.stderr}"


def test_types_reject_a_wrong_body(tmp_path: Path) -> None:
    # The check above means something: the generated types are not `any`.
    schema = (TS / "schema").as_posix()
    bad = tmp_path / "bad.ts"
    bad.write_text(
        f'import type {{ components }} from "{schema}";\n'
        'const m: components["schemas"]["MessageCreate"] = { body: 42 };\n'
        "export default m;\n"
    )
    result = run([str(BIN / "tsc"), "--noEmit", "--strict", str(bad)])
    assert result.returncode != 0
    assert "body" in result.stdout, result.stdout
