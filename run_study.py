#!/usr/bin/env python3
"""The whole study in one command: every run, one after the other, then the figures and the PDF report.

    python run_study.py                              # gpt2 from the Hub, WikiText-2
    python run_study.py --model DIR --text-file FILE # offline
    python run_study.py --smoke                      # tiny offline model, a few minutes
    python run_study.py --steps baseline,part1       # only some steps
    python run_study.py --force                      # redo runs whose results already exist

Each run is one script's main(), called with keywords, writing its own results JSON and
returning its record(s), each with the path it was written to (results.Record.path).
A run whose JSON exists and was made with the same settings (results/.study-ledger
keeps a fingerprint of each run's keywords) is skipped, so an interrupted study resumes
where it stopped. A run that fails is recorded in the ledger with its one-line reason, and
the study goes on with the other runs and the report; it then exits with code 2, and the
same command again redoes only the failed runs. On a machine without a GPU the default
scores the first 16,384 tokens (--max-tokens), which every results JSON records;
bitsandbytes runs on its CPU backend.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import evaluate
import results
from study import plan

# The plan (which runs, which keywords, the token budgets) is study/plan.py's, shared with
# scripts/standin_study.py.
STEPS, CPU_TOKEN_BUDGET, SENSITIVITY_GPU_TOKENS, GGUF_TYPES = (plan.STEPS, plan.CPU_TOKEN_BUDGET,
                                                               plan.SENSITIVITY_GPU_TOKENS, plan.GGUF_TYPES)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", help="Hub id or local folder (default: gpt2)")
    p.add_argument("--dataset", default="wikitext2", choices=list(evaluate.DATASETS),
                   help="Hub test split (default: wikitext2)")
    p.add_argument("--text-file", default=None, help="local UTF-8 text instead of a Hub dataset")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"score only the first N tokens (default: all on a GPU, {CPU_TOKEN_BUDGET} on a CPU; recorded)")
    p.add_argument("--stand-in", default=None, help="which model this one stands in for, if any")
    p.add_argument("--random-weights", action="store_true",
                   help="the model's weights are random (a stand-in for shapes, memory and speed): its "
                        "perplexity means nothing, and the figures and report say so")
    p.add_argument("--results-dir", default="results", help="where results JSON go (default: results)")
    p.add_argument("--figures-dir", default="report/figures", help="where the figures go (default: report/figures)")
    p.add_argument("--gguf-dir", default="gguf", help="where the GGUF files go (default: gguf/)")
    p.add_argument("--report", default="report/report.pdf",
                   help="the PDF report to write (default: report/report.pdf; --smoke: report/smoke-report.pdf)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)} (default: all)")
    p.add_argument("--skip-latency", action="store_true",
                   help="do not time prefill and decode (e.g. for a model whose context is shorter than 512)")
    p.add_argument("--force", action="store_true", help="redo runs whose results JSON already exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars inside the runs")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model made on the spot, offline; numbers mean nothing")
    return p


def script_main(step: str):
    if step in ("baseline",):
        return evaluate.main
    if step in ("part1", "sensitivity"):
        import part1_quantize_scratch as p1
        return p1.main
    if step == "part2":
        import part2_bnb_nf4 as p2
        return p2.main
    if step == "explore":
        import explore_calibrated as ec
        return ec.main
    import bonus_gguf as bg
    return bg.main


def fingerprint(kwargs: dict) -> str:
    return hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summary(rec) -> tuple[str, str, str]:
    rec = rec[0] if isinstance(rec, list) else rec
    if not isinstance(rec, dict):
        return "", "", ""
    ppl = rec.get("perplexity", {}).get("ppl")
    mib = rec.get("memory", {}).get("weights_mib")
    dec = rec.get("latency", {}).get("decode", {}).get("ms_per_token", {}).get("median")
    return (f"{ppl:.4f}" if ppl else "", f"{mib:.1f}" if mib else "", f"{dec:.2f}" if dec else "")


def read_ledger(path: Path) -> dict:
    """The study's ledger of finished runs. A damaged one is set aside (never deleted) with a
    warning, and the study goes on as if it were new: it redoes runs, it loses none."""
    if not path.exists():
        return {}
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(ledger, dict) and all(isinstance(v, dict) for v in ledger.values()):
            return ledger
    except (OSError, ValueError):
        pass
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    print(f"run_study.py: warning: {path} could not be read; kept as {aside.name}, and every run is redone",
          file=sys.stderr, flush=True)
    return {}


def reads_back(out) -> bool:
    """A finished run's results file is still there and still a record the readers accept."""
    try:
        return results.record_problem(json.loads(Path(out).read_text(encoding="utf-8"))) is None
    except (OSError, ValueError, TypeError):
        return False


def main(*, model: str = "gpt2", dataset: str = "wikitext2", text_file: str | None = None, device: str = "auto",
         max_tokens: int | None = None, stand_in: str | None = None, random_weights: bool = False,
         results_dir: str = "results", figures_dir: str = "report/figures", gguf_dir: str = "gguf",
         report: str = "report/report.pdf", steps: str = ",".join(STEPS),
         skip_latency: bool = False, force: bool = False, quiet: bool = False, smoke: bool = False) -> list[dict]:
    """The command line's flags as keywords (--help says what each does)."""
    args = evaluate.with_defaults(build_parser(), dict(locals()))
    steps = [s.strip() for s in args.steps.split(",")]
    if not all(steps):
        raise evaluate.UserError(f"malformed --steps '{args.steps}': a comma list of {', '.join(STEPS)}")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise evaluate.UserError(f"unknown step '{unknown[0]}' (choose {', '.join(STEPS)})")
    dev = evaluate.resolve_device(args.device)
    evaluate.check_at_least(("--max-tokens", args.max_tokens, 2))
    evaluate.check_output_dir(args.results_dir, "--results-dir")
    if "gguf" in steps:
        evaluate.check_output_dir(args.gguf_dir, "--gguf-dir")
    if "plots" in steps or "report" in steps:
        evaluate.check_output_dir(args.figures_dir, "--figures-dir")
    pdf = Path(args.report) if not args.smoke else Path(args.report).with_name("smoke-report.pdf")
    if "report" in steps:
        evaluate.check_output_file(pdf, "--report", kind="pdf")
    max_tokens = args.max_tokens
    if max_tokens is None and dev.type == "cpu" and not args.smoke:
        max_tokens = CPU_TOKEN_BUDGET
    common = dict(model=args.model, dataset=args.dataset, text_file=args.text_file, device=args.device,
                  max_tokens=max_tokens, stand_in=args.stand_in, results_dir=args.results_dir,
                  smoke=args.smoke, quiet=args.quiet, **({"skip_latency": True} if args.skip_latency else {}),
                  **({"random_weights": True} if args.random_weights else {}))
    if not args.smoke and set(steps) - {"plots", "report"}:  # bad input fails here, before any step runs
        evaluate.prepare(evaluate.with_defaults(evaluate.build_parser(), common))
    ledger_path = Path(args.results_dir) / ("smoke" if args.smoke else "") / ".study-ledger"
    runs = []
    for step, label, extra in plan.study_runs(steps, args.gguf_dir, cpu=dev.type == "cpu"):
        kw = {**common, **extra}
        if step == "sensitivity" and max_tokens is None:
            kw["max_tokens"] = SENSITIVITY_GPU_TOKENS        # 34 perplexities: a prefix, recorded
        runs.append((f"{step}:{label}", label, script_main(step), kw))
    rows, records, failures = execute(runs, ledger_path, force=args.force)
    folder = Path(args.results_dir) / ("smoke" if args.smoke else "")
    figures = Path(args.figures_dir) / ("smoke" if args.smoke else "")
    try:
        if "report" in steps:                              # draws the figures too
            from report import build_report
            print(f"[report] {figures} and {pdf}", flush=True)
            build_report.main(results=str(folder), out=str(pdf), figures=str(figures))
        elif "plots" in steps:
            import plot_results
            print(f"[plots] {figures}", flush=True)
            plot_results.main(results=str(folder), out=str(figures))
    except Exception as e:
        reason = failure_reason(e)
        print(f"[{'report' if 'report' in steps else 'plots'}] FAILED: {reason}", file=sys.stderr, flush=True)
        failures.append(("report" if "report" in steps else "plots", reason))
    print_rows(rows)
    if max_tokens is not None:
        print(f"(perplexities over the first {max_tokens:,} tokens: a budget, recorded in every JSON)")
    if failures:
        for label, reason in failures:
            print(f"FAILED {label}: {reason}", flush=True)
        raise StudyFailed(f"{len(failures)} of {len(runs) + ('report' in steps or 'plots' in steps)} steps failed "
                          f"(first: {failures[0][0]}: {failures[0][1]}); the others finished and are kept; "
                          f"run the same command again to retry only the failed ones")
    return records


def execute(runs: list[tuple[str, str, object, dict]], ledger_path: Path, force: bool = False):
    """Run each (ledger key, label, main, keywords) in order; skip one whose ledger entry has
    the same keywords' fingerprint and whose results still read back (unless force); record
    a failure with its one-line reason and go on. Returns (summary rows, records, failures).
    Shared by run_study.py and scripts/standin_study.py."""
    ledger = read_ledger(ledger_path)
    rows, records, failures = [], [], []
    for i, (key, label, fn, kw) in enumerate(runs, 1):
        fp = fingerprint(kw)
        done = ledger.get(key)
        if done and done.get("fingerprint") == fp and not done.get("failed") and \
                all(reads_back(p) for p in done.get("outs", [done.get("out")])) and not force:
            print(f"[{i}/{len(runs)}] {label}: done before, skipped ({done['out']})", flush=True)
            rows.append((label, "skipped", *done.get("summary", ("", "", ""))))
            continue
        print(f"[{i}/{len(runs)}] {label}", flush=True)
        t0 = time.perf_counter()
        try:
            rec = evaluate.call(fn, kw)
        except Exception as e:             # one failed run is recorded; the others, and the report, go on
            reason = failure_reason(e)
            print(f"[{i}/{len(runs)}] {label}: FAILED: {reason}", file=sys.stderr, flush=True)
            ledger[key] = {"fingerprint": fp, "out": "", "failed": reason}
            results.write_json_atomic(ledger_path, ledger)
            rows.append((label, "FAILED", "", "", ""))
            failures.append((label, reason))
            continue
        paths = [str(r.path) for r in (rec if isinstance(rec, list) else [rec])]   # each main returns Records
        ledger[key] = {"fingerprint": fp, "out": paths[0], "outs": paths, "summary": summary(rec)}
        results.write_json_atomic(ledger_path, ledger)
        rows.append((label, f"{time.perf_counter() - t0:.0f} s", *summary(rec)))
        records.append(rec)
    return rows, records, failures


def print_rows(rows) -> None:
    print(f"\n{'run':<28} {'time':>9} {'ppl':>12} {'MiB':>9} {'ms/token':>9}")
    for label, t, ppl, mib, dec in rows:
        print(f"{label:<28} {t:>9} {ppl:>12} {mib:>9} {dec:>9}")


class StudyFailed(evaluate.UserError):
    """Some runs of the study failed; the rest finished (the CLI exits 2 with this one line)."""


def failure_reason(e: BaseException) -> str:
    """One line: a user's mistake as its message, anything else with its type."""
    if isinstance(e, evaluate.UserError):
        return str(e)
    return f"{type(e).__name__}: {evaluate.one_line(e)}"


if __name__ == "__main__":
    evaluate.run_cli(main, build_parser())
