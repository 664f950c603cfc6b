#!/usr/bin/env python3
"""Add each window's NLL (perplexity.windows, what the noise bands resample) to results records
written before the evaluator kept it, from a rerun of the same commands; and with it the measures
the evaluator gained since: the KL divergence against the unquantized model (divergence), bits per
weight (bits_per_weight) and the model's own parameter count (model.n_params, the torch count
beside it as model.n_params_torch).

    python scripts/standin_study.py --machine cpu --steps cpu-smol --results-dir /tmp/rerun
    python scripts/add_windows.py /tmp/rerun                # into results/
    python scripts/add_windows.py /tmp/rerun --dry-run      # say what would change, write nothing
    python scripts/add_windows.py /tmp/rerun --rel-tol 1e-7 # totals a rounding apart (another run)
    python scripts/add_windows.py /tmp/rerun --other-model-files   # another build of the same stand-in

A rerun's record lends them to the committed record of the same file name (or of the same name up
to its settings hash, as a rerun with --skip-latency writes) only when the two are the same
measurement: the same method, model files, text, windows and token budget, and a perplexity total
(mean NLL, tokens scored, windows) equal to the last bit, or within --rel-tol of it, which the
record then states. On a CPU, two runs of the same command can differ in the eighth digit (the
order of float sums); a window's NLL moves as little, far below the noise the bands measure.
Everything else in the committed record stays as it was, its timings and its device included (a
rerun's timings depend on what else the machine was doing, or it ran on another card);
perplexity.windows_added_by, and added_by in each block lent, say where they came from. A record
that differs is named and left alone, and the script exits 1.

--other-model-files: the model folder's files may hash differently (model.sha256 covers every file
of the folder, so another build of the same stand-in, whose weights are the same but whose other
files are not, hashes differently); then only a perplexity total equal to the last bit lends, and
the record names both hashes.
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
        ("perplexity", "max_length"), ("perplexity", "stride"), ("perplexity", "n_tokens_scored"),
        ("perplexity", "n_windows"))


def provenance(new: dict, gap: float = 0.0, files: tuple[str, str] | None = None) -> str:
    env = new.get("environment") or {}
    where = env.get("device_name") or env.get("device") or "?"
    said = ("equal to the last bit" if gap == 0 else
            f"{gap:.1e} (relative) from this record's: another run's rounding")
    return (f"scripts/add_windows.py, from a rerun of this record's measurement ({new.get('timestamp', '?')}, "
            f"{where}: {new.get('command', '?')}) whose perplexity total is {said}"
            + ("" if files is None else
               f"; its model folder's files hash differently ({files[0][:12]}… here, {files[1][:12]}… in the "
               "rerun: another build of the stand-in), and a total equal to the last bit over every scored "
               "token is the evidence that the weights are the same"))


def lent(old: dict, new: dict, rel_tol: float = 0.0, other_files: bool = False) -> tuple[dict, list[str]]:
    """old with what new has and it lacks (its windows, divergence, bits per weight, the model's own
    parameter count), and their names; ValueError says why they are not the same measurement.
    rel_tol: how far apart the two mean NLLs may be (0: equal to the last bit). other_files: the
    model folders' hashes may differ, where the totals are equal to the last bit."""
    files = None
    for block, key in SAME:
        a, b = (old.get(block) or {}).get(key), (new.get(block) or {}).get(key)
        if a != b and other_files and (block, key) == ("model", "sha256"):
            files = (a or "?", b or "?")
        elif a != b:
            raise ValueError(f"{block}.{key} differs ({a!r} here, {b!r} in the rerun)")
    a, b = old["perplexity"]["mean_nll"], new["perplexity"]["mean_nll"]
    gap = abs(a - b) / abs(a) if a else abs(b)
    if gap > (0.0 if files else rel_tol):
        raise ValueError(f"perplexity.mean_nll differs ({a!r} here, {b!r} in the rerun: {gap:.1e} relative)"
                         + ("; with other model files only an equal total lends" if files else ""))
    w = new["perplexity"].get("windows")
    if not w or len(w["nll_sum"]) != old["perplexity"]["n_windows"]:
        raise ValueError("the rerun kept no windows")
    total = math.fsum(w["nll_sum"]) / sum(w["n_scored"])
    if sum(w["n_scored"]) != old["perplexity"]["n_tokens_scored"] or not math.isclose(total, b, rel_tol=1e-12):
        raise ValueError("the rerun's windows do not add up to its total")
    out, what, note = json.loads(json.dumps(old)), [], provenance(new, gap, files)
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
    p.add_argument("--rel-tol", type=float, default=0.0,
                   help="lend also where the rerun's mean NLL differs by at most this much, relative (default 0: "
                        "equal to the last bit); each record says by how much")
    p.add_argument("--other-model-files", action="store_true",
                   help="lend also where the model folder's files hash differently (another build of the same "
                        "stand-in), only when the perplexity total is equal to the last bit; each record names "
                        "both hashes")
    p.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    return p


def target_of(path: Path, here: Path) -> Path | None:
    """The committed record a rerun's file stands for: the same file name, or else the one file of
    the same name up to its settings hash (a rerun with --skip-latency hashes other settings)."""
    if (here / path.name).is_file():
        return here / path.name
    stem = path.stem.rsplit("__", 1)[0]
    found = [p for p in here.glob(f"{stem}__*.json") if p.stem.rsplit("__", 1)[0] == stem]
    return found[0] if len(found) == 1 else None


def main(*, rerun: str, results_dir: str = str(ROOT / "results"), rel_tol: float = 0.0,
         other_model_files: bool = False, dry_run: bool = False) -> int:
    """Lend the rerun's windows and measures to the committed records of the same measurement; -> how
    many got any."""
    here = Path(results_dir)
    there = Path(rerun)
    for folder, flag in ((there, "rerun"), (here, "--results")):
        if not folder.is_dir():
            raise UserError(f"{flag} {folder}: not a folder")
    if not 0 <= rel_tol < 1e-3:
        raise UserError(f"--rel-tol must be at least 0 and below 1e-3 (got {rel_tol})")
    added, same, differ = [], [], []
    for path in sorted(there.glob("*.json")):
        target = target_of(path, here)
        if target is None:
            continue
        old, new = (json.loads(p.read_text(encoding="utf-8")) for p in (target, path))
        if results.kind_of(old) != "eval" or not isinstance(old.get("perplexity"), dict):
            continue
        try:
            out, what = lent(old, new, rel_tol, other_model_files)
        except ValueError as e:
            differ.append((path.name, str(e)))
            continue
        if not what:
            same.append(path.name)
            continue
        if not dry_run:
            results.write(out, target)
        added.append((target.name, what))
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
