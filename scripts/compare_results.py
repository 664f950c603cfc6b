#!/usr/bin/env python3
"""Compare a rerun's results files with the committed ones, field by field, timings left out.

    python scripts/standin_study.py --machine cpu --results-dir /tmp/rerun
    python scripts/compare_results.py results /tmp/rerun             # exact
    python scripts/compare_results.py results /tmp/rerun --rtol 1e-6  # another CPU

For each results file of NEW, the file of the same name in OLD: every field that the schema
does not mark volatile (results.VOLATILE_KEYS: when and where a run was made, what it timed,
its memory peaks) must be equal: integers (byte counts, token counts) exactly, other numbers
within --rtol relative where it is given. A field that the committed file lacks and the rerun
has is counted apart, as added (a measure that the code writes since that file was made), not
as a difference. Prints one
line a file (same, or how many fields differ and the largest), then each difference; exits 1
if any file differs or is missing in OLD, 0 if every one is the same.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import results  # noqa: E402
from study.cli import run_cli  # noqa: E402


def leaves(obj, path: tuple[str, ...] = ()):
    """(key path, value) of every leaf; a list's items are keyed by their index."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, (*path, str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, (*path, str(i)))
    else:
        yield path, obj


def rel_diff(a, b) -> float | None:
    """|a - b| / max(|a|, |b|) for two numbers (0 when equal), None when either is not a number."""
    num = (int, float)
    if not isinstance(a, num) or not isinstance(b, num) or isinstance(a, bool) or isinstance(b, bool):
        return None
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b)) if math.isfinite(a) and math.isfinite(b) else math.inf


def added_fields(old: dict, new: dict) -> list[str]:
    """The fields, volatile ones left out, that new has and old lacks (under no field old has)."""
    a = {p for p, _ in leaves(old)}
    return [".".join(p) for p, _ in leaves(new) if p not in a and not results.is_volatile(p)
            and not any(p[:i] in a for i in range(1, len(p)))]


def differences(old: dict, new: dict, rtol: float) -> list[tuple[str, object, object, float | None]]:
    """The fields, volatile and added ones left out, where old and new differ: integers at all,
    other numbers beyond rtol (relative), anything else at all: (path, old, new, relative
    difference or None)."""
    a = {p: v for p, v in leaves(old) if not results.is_volatile(p)}
    b = {p: v for p, v in leaves(new) if not results.is_volatile(p)}
    added = set(added_fields(old, new))
    out = []
    for p in sorted(a.keys() | b.keys()):
        if ".".join(p) in added:
            continue
        va, vb = a.get(p, "<absent>"), b.get(p, "<absent>")
        if va == vb and type(va) is type(vb):
            continue
        rel = rel_diff(va, vb)
        if rel is not None and rel <= rtol and not (isinstance(va, int) and isinstance(vb, int)):
            continue                                        # a float within rtol; counts stay exact
        out.append((".".join(p), va, vb, rel))
    return out


def main(*, old: str, new: str, rtol: float = 0.0, show: int = 8) -> int:
    """Print the comparison; returns how many files differ (or are missing in old)."""
    old_dir, new_dir = Path(old).expanduser(), Path(new).expanduser()
    for d in (old_dir, new_dir):
        if not d.is_dir():
            raise results.UserError(f"'{d}' is not a folder of results files")
    if rtol < 0:
        raise results.UserError(f"--rtol must be at least 0 (got {rtol})")
    files = sorted(new_dir.glob("*.json"))
    if not files:
        raise results.UserError(f"no results files in '{new_dir}'")
    bad = 0
    for f in files:
        ref = old_dir / f.name
        if not ref.exists():
            print(f"{f.name}: not in {old_dir}")
            bad += 1
            continue
        old_rec, new_rec = json.loads(ref.read_text(encoding="utf-8")), json.loads(f.read_text(encoding="utf-8"))
        diffs, added = differences(old_rec, new_rec, rtol), added_fields(old_rec, new_rec)
        more = f", plus {len(added)} fields it lacks ({', '.join(sorted({a.split('.')[0] for a in added}))})" \
            if added else ""
        if not diffs:
            print(f"{f.name}: same{more}")
            continue
        bad += 1
        worst = max((d[3] for d in diffs if d[3] is not None), default=None)
        print(f"{f.name}: {len(diffs)} fields differ" + (f" (largest relative difference {worst:.2e})"
                                                         if worst is not None else ""))
        for path, va, vb, rel in diffs[:show]:
            shown = f"{json.dumps(va)[:60]} -> {json.dumps(vb)[:60]}"
            print(f"    {path}: {shown}" + (f" ({rel:.2e})" if rel is not None else ""))
        if len(diffs) > show:
            print(f"    ... and {len(diffs) - show} more")
    print(f"{len(files) - bad} of {len(files)} files the same"
          + (f" within {rtol:g} relative" if rtol else "") + ", volatile fields left out (results.VOLATILE_KEYS)")
    return bad


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare_results.py", description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="the folder of the committed results (e.g. results)")
    p.add_argument("new", help="the folder of the rerun's results")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="non-integer numbers may differ by this much, relative (default: 0, equal to the "
                        "bit); integers (byte and token counts) must always be equal")
    p.add_argument("--show", type=int, default=8, help="differences printed per file (default: 8)")
    return p


if __name__ == "__main__":
    def exit_with_count(**kw) -> None:
        sys.exit(1 if main(**kw) else 0)
    run_cli(exit_with_count, build_parser())
