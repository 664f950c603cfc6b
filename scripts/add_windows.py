#!/usr/bin/env python3
"""Add each window's NLL (perplexity.windows, what the noise bands resample) to results records
written before the evaluator kept it, from a rerun of the same commands; and with it the measures
the evaluator gained since: the KL divergence against the unquantized model (divergence), bits per
weight (bits_per_weight) and the model's own parameter count (model.n_params, the torch count
beside it as model.n_params_torch).

    python scripts/standin_study.py --machine cpu --steps cpu-smol --results-dir /tmp/rerun
    python scripts/add_windows.py /tmp/rerun                # into results/
    python scripts/add_windows.py /tmp/rerun --dry-run      # say what would change, write nothing

A rerun's record lends them to the committed record of the same file name only when the
two are the same measurement: the same method, model files, text, windows and token budget, and a
perplexity total (mean NLL, tokens scored, windows) equal to the last bit. Everything else in the
committed record stays as it was, its timings and its device included (a rerun's timings depend on
what else the machine was doing, or it ran on another card); perplexity.windows_added_by, and
added_by in each block lent, say where they came from. A record that differs is named and left
alone, and the script exits 1.
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
from study.cli import UserError, run_cli  # noqa: E402

SAME = (("method", "name"), ("model", "sha256"), ("dataset", "sha256"), ("dataset", "max_tokens"),
        ("perplexity", "max_length"), ("perplexity", "stride"), ("perplexity", "mean_nll"),
        ("perplexity", "n_tokens_scored"), ("perplexity", "n_windows"))


def provenance(new: dict) -> str:
    env = new.get("environment") or {}
    where = env.get("device_name") or env.get("device") or "?"
    return (f"scripts/add_windows.py, from a rerun of this record's command ({new.get('timestamp', '?')}, "
            f"{where}) whose perplexity total is equal to the last bit")


def lent(old: dict, new: dict) -> tuple[dict, list[str]]:
    """old with what new has and it lacks (its windows, divergence, bits per weight, the model's own
    parameter count), and their names; ValueError says why they are not the same measurement."""
    for block, key in SAME:
        a, b = (old.get(block) or {}).get(key), (new.get(block) or {}).get(key)
        if a != b:
            raise ValueError(f"{block}.{key} differs ({a!r} here, {b!r} in the rerun)")
    w = new["perplexity"].get("windows")
    if not w or len(w["nll_sum"]) != old["perplexity"]["n_windows"]:
        raise ValueError("the rerun kept no windows")
    total = math.fsum(w["nll_sum"]) / sum(w["n_scored"])
    if sum(w["n_scored"]) != old["perplexity"]["n_tokens_scored"] or not math.isclose(
            total, old["perplexity"]["mean_nll"], rel_tol=1e-12):
        raise ValueError("the rerun's windows do not add up to its total")
    out, what, note = json.loads(json.dumps(old)), [], provenance(new)
    if not old["perplexity"].get("windows"):
        out["perplexity"]["windows"] = w
        out["perplexity"]["windows_added_by"] = note
        what.append("windows")
    for block in ("divergence", "bits_per_weight"):
        if isinstance(new.get(block), dict) and not old.get(block):
            out[block] = {**new[block], "added_by": note}
            what.append(block)
    m_old, m_new = old.get("model") or {}, new.get("model") or {}
    if "n_params_torch" in m_new and "n_params_torch" not in m_old:
        if m_old.get("n_params") != m_new["n_params_torch"]:
            raise ValueError(f"model.n_params differs ({m_old.get('n_params')!r} here, the rerun's torch count "
                             f"{m_new['n_params_torch']!r})")
        out["model"]["n_params"], out["model"]["n_params_torch"] = m_new["n_params"], m_new["n_params_torch"]
        out["model"]["n_params_added_by"] = note
        what.append("n_params")
    return out, what


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="add_windows.py", description=__doc__.split("\n\n")[0])
    p.add_argument("rerun", help="folder of the rerun's results JSON (same file names as the committed ones)")
    p.add_argument("--results", dest="results_dir", default=str(ROOT / "results"),
                   help="the committed records (default: results/)")
    p.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    return p


def main(*, rerun: str, results_dir: str = str(ROOT / "results"), dry_run: bool = False) -> int:
    """Lend the rerun's windows and measures to the committed records of the same measurement; -> how
    many got any."""
    here = Path(results_dir)
    there = Path(rerun)
    for folder, flag in ((there, "rerun"), (here, "--results")):
        if not folder.is_dir():
            raise UserError(f"{flag} {folder}: not a folder")
    added, same, differ = [], [], []
    for path in sorted(there.glob("*.json")):
        target = here / path.name
        if not target.is_file():
            continue
        old, new = (json.loads(p.read_text(encoding="utf-8")) for p in (target, path))
        if results.kind_of(old) != "eval" or not isinstance(old.get("perplexity"), dict):
            continue
        try:
            out, what = lent(old, new)
        except ValueError as e:
            differ.append((path.name, str(e)))
            continue
        if not what:
            same.append(path.name)
            continue
        if not dry_run:
            results.write(out, target)
        added.append((path.name, what))
    for name, what in added:
        print(f"{'would add' if dry_run else 'added'} {', '.join(what)}: {name}")
    for name, why in differ:
        print(f"left alone: {name}: {why}", file=sys.stderr)
    print(f"{len(added)} records {'would get' if dry_run else 'got'} what they lacked, {len(same)} had it all, "
          f"{len(differ)} differ")
    if differ:
        sys.exit(1)
    return len(added)


if __name__ == "__main__":
    run_cli(main, build_parser())
