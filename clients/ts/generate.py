"""Writes schema.d.ts (into the folder given, else beside this file): the app's OpenAPI
schema as TypeScript types, by openapi-typescript from node_modules (`npm ci` first).

The schema comes from the app object itself, so no server needs to run. `make client`
calls this; tests/project/test_client.py calls it into a scratch folder to catch drift.
"""

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def generate(out_dir: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    schema = importlib.import_module("app.main").app.openapi()
    out = out_dir / "schema.d.ts"
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "openapi.json"
        source.write_text(json.dumps(schema, indent=2))
        subprocess.run(
            [str(HERE / "node_modules/.bin/openapi-typescript"), str(source), "-o", str(out)],
            check=True,
            capture_output=True,
        )
    return out


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
