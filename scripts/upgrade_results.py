#!/usr/bin/env python3
"""Bring results files of older schemas up to today's: kind, random_weights, method identity.

    python scripts/upgrade_results.py            # every results/**/*.json
    python scripts/upgrade_results.py DIR

The readers (figures, RESULTS.md, the report) read fields only, and skip a file of another
schema with a warning that names this script. What an older file lacks is filled in here, once:
- schema 1 -> 2: `kind`, from the blocks the record holds, and `model.random_weights`, which
  schema 1 said only in the words of its --stand-in label ("its perplexity means nothing");
- schema 2 -> 3: `method.identity` of a measured method (kinds eval and sensitivity), from the
  settings the record holds (registry.identity_from_settings, never from its name), so the file
  reads as the same run would write it now.
Every other field is left as it is. Files of today's schema are left alone; the command can be
run again safely.
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

# Schema 1 had no `kind`: the block that only that kind holds says it (sensitivity records
# hold a perplexity block too, so they are looked for first).
SCHEMA_1_BLOCKS = (("gguf_inspection", "gguf-inspect"), ("push", "gguf-push"), ("bench", "bench"),
                   ("compare", "compare"), ("sensitivity", "sensitivity"), ("perplexity", "eval"))
SCHEMA_1_RANDOM_WORDS = "perplexity means nothing"     # what schema 1's random stand-ins' labels said


def schema_2(rec: dict) -> dict:
    """A schema-1 record with its kind and model.random_weights."""
    kind = next((k for block, k in SCHEMA_1_BLOCKS if block in rec), None)
    if kind is None:
        raise ValueError("no block says which kind of record it is")
    model = rec.get("model") or {}
    random = SCHEMA_1_RANDOM_WORDS in (model.get("stand_in") or "")
    return {"schema_version": 2, "kind": kind, **{k: v for k, v in rec.items() if k != "schema_version"},
            **({"model": {"random_weights": random, **model}} if "model" in rec else {})}


def schema_3(rec: dict) -> dict:
    """A schema-2 record with the identity of its method after the method's settings."""
    ident = registry.identity_from_settings(rec)
    if ident is not None:
        rec["method"] = {**rec["method"], "identity": ident}
    rec["schema_version"] = 3
    return rec


def upgraded(rec: dict) -> dict:
    """The record at today's schema, nothing else moved."""
    if rec["schema_version"] == 1:
        rec = schema_2(rec)
    if rec["schema_version"] == 2:
        rec = schema_3(rec)
    assert rec["schema_version"] == results.SCHEMA_VERSION
    return rec


def main(*, folder: str = "results") -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise results.UserError(f"'{folder}' is not a folder of results files")
    changed = []
    for path in sorted(root.rglob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue                                         # not a results file: not ours to touch
        if not isinstance(rec, dict) or rec.get("schema_version") not in (1, 2):
            continue
        try:
            results.write_json_atomic(path, upgraded(rec))
        except (KeyError, ValueError, TypeError) as e:
            print(f"warning: {path.name} left as it is: {e}", file=sys.stderr)
            continue
        changed.append(path)
    print(f"upgraded {len(changed)} files in {folder} to schema {results.SCHEMA_VERSION}")
    return changed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="upgrade_results.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="results", help="folder of results JSON (default: results)")
    return p


if __name__ == "__main__":
    run_cli(main, build_parser())
