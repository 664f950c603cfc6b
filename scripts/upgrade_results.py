#!/usr/bin/env python3
"""Bring results files of schema 2 to schema 3: stamp each measured method's registry identity.

    python scripts/stamp_identities.py            # every results/**/*.json
    python scripts/stamp_identities.py DIR

Schema 3 adds method.identity (study/registry.py) to the records of one method (kinds eval
and sensitivity): a writer of today stamps it when it runs. For a file written before, this
takes the identity from the settings the record holds (registry.identity_from_settings, never
from its name), so the file reads as the same run would write it now; every other field is
left as it is. Files of schema 3 are left alone; the command can be run again safely.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import results  # noqa: E402
from study import registry  # noqa: E402
from study.cli import run_cli  # noqa: E402


def stamped(rec: dict) -> dict:
    """The record at schema 3: identity after the method's settings, nothing else moved."""
    ident = registry.identity_from_settings(rec)
    if ident is not None:
        rec["method"] = {**rec["method"], "identity": ident}
    rec["schema_version"] = results.SCHEMA_VERSION
    return rec


def main(folder: str = "results") -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise results.UserError(f"'{folder}' is not a folder of results files")
    changed = []
    for path in sorted(root.rglob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict) or rec.get("schema_version") != 2:
            continue
        results.write_json_atomic(path, stamped(rec))
        changed.append(path)
    print(f"stamped {len(changed)} files of schema 2 in {folder} (schema {results.SCHEMA_VERSION} now)")
    return changed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stamp_identities.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="results", help="folder of results JSON (default: results)")
    return p


if __name__ == "__main__":
    run_cli(main, build_parser())
