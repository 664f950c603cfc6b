#!/usr/bin/env python3
"""What a perplexity change looks like in text: the same prompts, completed greedily by the
baseline and by schemes that span the study's range, written as one results file.

    python scripts/greedy_samples.py --model models/smollm2-135m --device cpu
    python scripts/greedy_samples.py --model gpt2 --methods scratch-int8-per_channel,rtn-w3-g64

Each scheme is made from the same fp32 model by the study's own code (Part 1's layers, or the
calibrated storage with round-to-nearest, which needs no calibration text), then completes
every prompt with greedy decoding (generate(), no sampling), so any difference from the
baseline's text is the quantization's. The record keeps each completion and how many of its
leading tokens equal the baseline's; the report sets them side by side with each scheme's
perplexity change from the evaluation records of the same model and device.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import results  # noqa: E402
from study import cli  # noqa: E402

# Three prompts of different kinds: a fact, a definition, a story. Short, so the completion is the model's.
PROMPTS = ("The capital of France is", "Water is made of", "Once upon a time, in a small village,")
# From near-lossless to broken, by their perplexity change in the study: Part 1's INT8 and 4-bit
# layers and round-to-nearest on the calibrated storage (no calibration text needed).
METHODS = ("scratch-int8-per_channel", "scratch-int4-nf4", "scratch-int4-int4", "rtn-w4-pc", "rtn-w3-g64")
BUILDERS = {  # method -> how the study's code makes it from the fp32 model, in place
    "scratch-int8-per_channel": ("part1", {"bits": 8, "scheme": "per_channel"}),
    "scratch-int8-per_tensor": ("part1", {"bits": 8, "scheme": "per_tensor"}),
    "scratch-int4-nf4": ("part1", {"bits": 4, "scheme": "nf4"}),
    "scratch-int4-int4": ("part1", {"bits": 4, "scheme": "int4"}),
    "rtn-w4-pc": ("rtn", {"bits": 4, "group": 0}),
    "rtn-w4-g64": ("rtn", {"bits": 4, "group": 64}),
    "rtn-w3-g64": ("rtn", {"bits": 3, "group": 64}),
}
NEW_TOKENS = 24


def parse_methods(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise results.UserError("--methods is empty: name at least one scheme")
    for n in names:
        if n not in BUILDERS:
            raise results.UserError(f"unknown method '{n}' (choose from {', '.join(BUILDERS)})")
    return names


def quantized(model, name: str):
    """model (fp32, a fresh copy) with the scheme applied in place."""
    kind, kw = BUILDERS[name]
    if kind == "part1":
        import part1_quantize_scratch as p1
        p1.quantize_model(model, "whole", kw["bits"], kw["scheme"])
    else:
        from calibrated import methods, quantizer
        methods.quantize(model, "rtn", quantizer.Grid(kw["bits"], kw["group"]), None, methods.Options(),
                         progress=False)
    return model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="greedy_samples.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", help="Hub id or local folder of a causal LM (default: gpt2)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto, cuda if present)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of schemes beside the fp32 baseline (default: {','.join(METHODS)}; "
                        f"any of {', '.join(BUILDERS)})")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                   help=f"tokens each completion adds (default: {NEW_TOKENS})")
    p.add_argument("--stand-in", default=None, help="which model this one stands in for, recorded beside it")
    p.add_argument("--results-dir", default="results", help="where the results JSON goes (default: results)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(*, model: str = "gpt2", device: str = "auto", methods: str = ",".join(METHODS),
         new_tokens: int = NEW_TOKENS, stand_in: str | None = None, results_dir: str = "results",
         quiet: bool = False) -> results.Record:
    """Complete PROMPTS with the fp32 model and each scheme; write and return the record."""
    names = parse_methods(methods)                                    # fail before loading anything
    if not 1 <= new_tokens <= 256:
        raise results.UserError(f"--new-tokens must be between 1 and 256, not {new_tokens}")
    cli.check_output_dir(results_dir, "--results-dir")
    import torch

    import evaluate as ev
    from speed.decoder import generate_tokens, leading_equal
    if quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    dev = ev.resolve_device(device)
    base, tok = ev.load_model(model, "float32", str(dev))
    from calibrated import methods as cm
    from calibrated import quantizer
    for name in names:                                     # a grid that does not fit: one line, before any work
        kind, kw = BUILDERS[name]
        if kind == "rtn":
            cm.check_model(base, quantizer.Grid(kw["bits"], kw["group"]))
    prompts = [ev.tokenize(tok, p).to(dev) for p in PROMPTS]
    completions, equal = {}, {}
    for name in ["baseline-fp32", *names]:
        m = base if name == "baseline-fp32" else quantized(ev.load_model(model, "float32", str(dev))[0], name)
        with torch.no_grad():
            ids = [generate_tokens(m, tok, p, new_tokens) for p in prompts]
        completions[name] = [tok.decode(i, skip_special_tokens=True) for i in ids]
        if name == "baseline-fp32":
            ref = ids
        equal[name] = [leading_equal(i[:len(r)], r[:len(i)]) for i, r in zip(ids, ref)]   # EOS may end one early
        if not quiet:
            print(f"{name}: {completions[name][0]!r}", file=sys.stderr)
        if m is not base:
            del m
    settings = {"prompts": list(PROMPTS), "new_tokens": new_tokens, "methods": names, "decoding": "greedy",
                "dtype": "float32"}
    rec = results.new_record("samples", "greedy-samples", settings,
                             {**ev.describe_model(model, base), "stand_in": stand_in}, dev,
                             samples={"prompts": list(PROMPTS), "completions": completions,
                                      "leading_tokens_equal": equal})
    path = results.result_path(results_dir, "greedy-samples", model, [dev.type], {"settings": settings})
    return results.write(rec, path)


if __name__ == "__main__":
    cli.run_cli(main, build_parser())
