"""Latency: synchronized, warmed timings, a median with its spread, and side-by-side benches.

time_call times one call; latency() times prefill and generate() decode for one method;
side_by_side() times several methods round-robin in one process, so that their ratios hold
when the machine drifts, and save_side_by_side() writes that as a results record.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import results
from study.cli import check_at_least
from study.config import DEFAULTS, EvalConfig, check_latency_fits
from study.loading import input_device, model_context
from study.text import TextSource

# -----------------------------------------------------------------------------
# Latency

def summarize(samples: list[float]) -> dict:
    """Median with p10/p90 (linear interpolation) of a list of timings."""
    xs = sorted(samples)

    def q(p: float) -> float:
        k = (len(xs) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"median": q(0.5), "p10": q(0.1), "p90": q(0.9), "min": xs[0], "max": xs[-1], "n": len(xs)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock ms of fn() per repeat, after warmup calls, synchronized on CUDA."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def greedy_config(tokenizer, new_tokens: int):
    """A generation config that decodes exactly new_tokens greedily, whatever the model's defaults."""
    from transformers import GenerationConfig
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            num_beams=1, pad_token_id=pad if pad is not None else 0,
                            eos_token_id=tokenizer.eos_token_id)


def timing_inputs(input_ids: torch.Tensor, prefill_tokens: int, prompt_tokens: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The text's first tokens (repeated if the text is shorter) as a (1, prefill_tokens)
    prefill input and a (1, prompt_tokens) decode prompt."""
    ids = input_ids.reshape(-1)
    need = max(prefill_tokens, prompt_tokens)
    ids = ids.repeat(need // ids.numel() + 1)[:need]
    return ids[:prefill_tokens][None].to(device), ids[:prompt_tokens][None].to(device)


def hf_calls(model, tokenizer, prefill_ids: torch.Tensor, prompt: torch.Tensor, new_tokens: int,
             setup: Callable[[], None] | None = None) -> dict:
    """The two timed calls, as users make them: a forward pass without cache (prefill)
    and greedy generate() of exactly new_tokens (decode). setup() runs first, untimed
    in spirit but cheap (e.g. switching a kernel path)."""
    gen = greedy_config(tokenizer, new_tokens)
    mask = torch.ones_like(prompt)

    def prefill():
        setup and setup()
        return model(prefill_ids, use_cache=False)

    def decode():
        setup and setup()
        return model.generate(prompt, attention_mask=mask, generation_config=gen)
    return {"prefill": prefill, "decode": decode}


def check_timing_lengths(model, prefill_tokens: int, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    """check_latency_fits() against a loaded model (the benches, which time without prepare())."""
    check_latency_fits(EvalConfig(prefill_tokens=prefill_tokens, prompt_tokens=prompt_tokens,
                                  new_tokens=new_tokens), model_context(model.config))
    check_at_least(("--repeats", repeats, 1))


@torch.no_grad()
def latency(model, tokenizer, input_ids: torch.Tensor, prefill_tokens: int = DEFAULTS.prefill_tokens,
            prompt_tokens: int = DEFAULTS.prompt_tokens, new_tokens: int = DEFAULTS.new_tokens,
            repeats: int = DEFAULTS.repeats, warmup: int = DEFAULTS.warmup) -> dict:
    """Prefill: one forward pass of 1 x prefill_tokens. Decode: greedy generate() of
    new_tokens after a prompt_tokens prompt, in ms per new token (the total time
    divided by new_tokens, so it includes the one prompt pass). Both use the
    evaluated text's first tokens, repeated if the text is shorter."""
    check_timing_lengths(model, prefill_tokens, prompt_tokens, new_tokens, repeats)
    dev = input_device(model)
    prefill_ids, prompt = timing_inputs(input_ids, prefill_tokens, prompt_tokens, dev)
    calls = hf_calls(model, tokenizer, prefill_ids, prompt, new_tokens)
    return timed_latency(calls, dev, prefill_tokens, prompt_tokens, new_tokens, repeats, warmup,
                         DECODE_DEFINITION, torch.get_num_threads())


DECODE_DEFINITION = "generate() wall time / new tokens (greedy, includes the prompt pass)"


def timed_latency(calls: dict, device: torch.device, prefill_tokens: int, prompt_tokens: int, new_tokens: int,
                  repeats: int, warmup: int, definition: str, threads: int | None) -> dict:
    """Time calls["prefill"] and calls["decode"] (which makes new_tokens tokens) and
    return the results JSON's latency block: medians with spread, decode per token."""
    prefill_ms = time_call(calls["prefill"], device, repeats, warmup)
    total_ms = time_call(calls["decode"], device, repeats, warmup)
    return {"unit": "ms",
            "prefill": {"tokens": prefill_tokens, **summarize(prefill_ms)},
            "decode": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "definition": definition,
                       "ms_per_token": summarize([t / new_tokens for t in total_ms])},
            "repeats": repeats, "warmup": warmup, "threads": threads}


@torch.no_grad()
def side_by_side(methods: dict[str, dict], device: torch.device, new_tokens: int, repeats: int,
                 warmup: int, baseline: str, progress: bool = True) -> dict:
    """Time several methods in one process, round-robin: each repeat times every
    method once in turn, so drift and noise (other processes, clocks, caches) fall
    on all of them alike. methods[name] = {"prefill": fn, "decode": fn,
    "weights_mib": float, ...}; the decode call produces new_tokens tokens.
    Ratios are medians over the baseline's median."""
    from tqdm.auto import tqdm
    samples = {k: {"prefill": [], "decode": []} for k in methods}
    for what in ("prefill", "decode"):
        for m in methods.values():
            time_call(m[what], device, repeats=0, warmup=warmup)
        for _ in tqdm(range(repeats), desc=f"side by side: {what}", file=sys.stderr, disable=not progress):
            for name, m in methods.items():
                t = time_call(m[what], device, repeats=1, warmup=0)[0]
                samples[name][what].append(t / (new_tokens if what == "decode" else 1))
    table = {}
    for name, m in methods.items():
        table[name] = {"prefill_ms": summarize(samples[name]["prefill"]),
                       "decode_ms_per_token": summarize(samples[name]["decode"]),
                       **{k: v for k, v in m.items() if k not in ("prefill", "decode")}}
    base = table[baseline]
    for row in table.values():
        row["prefill_ratio"] = row["prefill_ms"]["median"] / base["prefill_ms"]["median"]
        row["decode_ratio"] = row["decode_ms_per_token"]["median"] / base["decode_ms_per_token"]["median"]
    return {"table": table, "baseline": baseline, "repeats": repeats, "warmup": warmup,
            "order": f"round-robin: each repeat times {', '.join(methods)} in turn"}


def side_by_side_text(result: dict, prefill_tokens: int) -> str:
    """The side-by-side table for the terminal: median [p10-p90] and ratio to the baseline."""
    w = max(16, *map(len, result["table"]))
    spread = lambda s, f: f"{s['median']:{f}} [{s['p10']:{f}}-{s['p90']:{f}}]"     # noqa: E731
    rows = [(name, spread(r["prefill_ms"], ".2f"), spread(r["decode_ms_per_token"], ".3f"), r)
            for name, r in result["table"].items()]
    wp = max(len(f"prefill 1x{prefill_tokens} ms"), *(len(p) for _, p, _, _ in rows))
    wd = max(len("decode ms/token"), *(len(d) for _, _, d, _ in rows))
    lines = [f"{'method':<{w}} {'prefill 1x' + str(prefill_tokens) + ' ms':>{wp}} {'ratio':>6} "
             f"{'decode ms/token':>{wd}} {'ratio':>6} {'weights MiB':>12}"]
    for name, p, d, row in rows:
        mib = row.get("weights_mib")
        lines.append(f"{name:<{w}} {p:>{wp}} {row['prefill_ratio']:>6.2f} {d:>{wd}} {row['decode_ratio']:>6.2f} "
                     f"{'' if mib is None else format(mib, '.1f'):>12}")
    lines.append(f"ratios: median over {result['baseline']}'s median; {result['order']}")
    return "\n".join(lines)


def save_timing_record(kind: str, name: str, settings: dict, model_info: dict, source: "TextSource",
                       result: dict, args: argparse.Namespace, device: torch.device,
                       key_fields: tuple[str, ...]) -> "results.Record":
    """Write a timing run's result as a record of `kind`, the result in the block of that name
    (bench, anatomy): args.out, or <name>__<model>__<device>__<hash>.json under
    args.results_dir, the hash over the text, the settings and the result's key_fields.
    Returns the record (its .path set)."""
    record = results.new_record(
        kind, name, settings, {**model_info, "stand_in": args.stand_in,
                               "random_weights": bool(getattr(args, "random_weights", False))},
        device, dataset={"id": source.id, "sha256": source.sha256}, smoke=args.smoke, **{kind: result})
    out = Path(args.out) if args.out else results.result_path(
        args.results_dir, name, args.model, [device.type],
        {"text": source.sha256, "settings": settings, kind: {k: result.get(k) for k in key_fields}}, args.smoke)
    return results.write(record, out)


def save_side_by_side(name: str, settings: dict, model_info: dict, source: "TextSource", result: dict,
                      args: argparse.Namespace, device: torch.device) -> "results.Record":
    """Write a side-by-side bench (Part 1's and Part 2's --bench, fast_decode) as a results
    record of kind 'bench', print its table, return the record (its .path set)."""
    record = save_timing_record("bench", name, settings, model_info, source, result, args, device,
                                ("prefill_tokens", "prompt_tokens", "new_tokens", "repeats", "warmup"))
    out = record.path
    threads = f", {result['threads']} threads" if result.get("threads") and device.type == "cpu" else ""
    print(f"side by side on {record['environment']['device_name']}{threads}, {result['repeats']} round-robin "
          f"repeats (median [p10-p90]):")
    print(side_by_side_text(result, result["prefill_tokens"]))
    print(f"wrote {out}")
    return record
