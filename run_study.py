#!/usr/bin/env python3
"""The whole study in one command: every run, one after the other.

    python run_study.py                              # gpt2 from the Hub, WikiText-2
    python run_study.py --model DIR --text-file FILE # offline
    python run_study.py --smoke                      # tiny offline model, ~1 minute

Each step is one script's main(), called with keywords, writing its own
results/*.json. Steps so far: the unquantized baseline. Part 1, Part 2, the GGUF
bonus, the plots and the report are added as they land.
"""
from __future__ import annotations

import argparse

import evaluate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", help="Hub id or local folder (default: gpt2)")
    p.add_argument("--dataset", default="wikitext2", choices=list(evaluate.DATASETS),
                   help="Hub test split (default: wikitext2)")
    p.add_argument("--text-file", default=None, help="local UTF-8 text instead of a Hub dataset")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="score only the first N tokens (a budget for slow machines; recorded)")
    p.add_argument("--stand-in", default=None, help="which model this one stands in for, if any")
    p.add_argument("--results-dir", default="results", help="where results JSON go (default: results)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model made on the spot, offline, ~1 minute; numbers mean nothing")
    return p


def main(**kwargs) -> list[dict]:
    args = evaluate.with_defaults(build_parser(), kwargs)
    # With --smoke every step makes the same seeded tiny model and text for itself.
    common = dict(model=args.model, dataset=args.dataset, text_file=args.text_file, device=args.device,
                  max_tokens=args.max_tokens, stand_in=args.stand_in, results_dir=args.results_dir,
                  smoke=args.smoke)
    if not args.smoke:  # bad input fails here, in seconds, before any step runs
        evaluate.prepare(evaluate.with_defaults(evaluate.build_parser(), common))
    records = []
    print(f"== baseline: {'tiny smoke model' if args.smoke else args.model}", flush=True)
    records.append(evaluate.main(**common))
    return records


if __name__ == "__main__":
    evaluate.run_cli(main, build_parser())
