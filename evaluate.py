#!/usr/bin/env python3
"""The one evaluation path of the study: memory, latency and perplexity, and its command line.

Every method (the unquantized baseline, Part 1's from-scratch INT8, Part 2's
bitsandbytes modes, the GGUF bonus) is measured through evaluate() in this file, so
their numbers sit in one table. The measurements live in study/ (loading.py, text.py,
perplexity.py, memory.py, timing.py; the defaults in config.py, the CLI's checks in
cli.py), and this module hands them to every script as ev.<name>. Run on its own, it evaluates the
unquantized baseline and writes one results JSON:

    python evaluate.py                                   # gpt2 from the Hub, WikiText-2
    python evaluate.py --model DIR --text-file wiki.test.raw --device cpu
    python evaluate.py --smoke                           # tiny offline model, ~1 minute

Assumptions, stated once:
- The model is a causal LM that `AutoModelForCausalLM` loads (Hub id or folder).
- Perplexity is corpus-level and token-weighted: the text is tokenized once,
  scored with sliding windows of `max_length` tokens moved by `stride`, and every
  token after the first is scored exactly once, with all the context its window
  allows. ppl = exp(sum of NLL / number of scored tokens).
- Memory is reported in MiB (2**20 bytes): (a) the bytes the parameters and
  buffers really occupy, by dtype, shared tensors (tied embeddings) counted
  once; (b) the size on disk once saved; (c) the peak device memory during
  evaluation (CUDA `max_memory_allocated` after a reset, or the peak rise of the
  process RSS on a CPU).
- Latency is warmed up, synchronized, and reported as median, p10 and p90.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

import results
from results import UserError  # every script raises ev.UserError for a user's mistake
from study import registry

# The measurements, each in its own module of study/; every script reaches them as ev.<name>.
from study.cli import (
    MiB,
    call,
    check_at_least,
    check_new_folder,
    check_out_outside_save,
    check_output_dir,
    check_output_file,
    is_model_folder,
    looks_like_path,
    one_line,
    run_cli,
    with_defaults,
    within,
)
from study.config import (
    DEFAULTS,
    MAX_LENGTH_CAP,
    STRIDE_CAP,
    TIMING_TEXT_TOKENS,
    EvalConfig,
    RunOptions,
    check_latency_fits,
    default_stride,
)
from study.config import (
    RUN_DEFAULTS as RUN,
)
from study.loading import (
    DTYPES,
    check_device_map,
    check_model_source,
    describe_model,
    input_device,
    load_config,
    load_model,
    load_tokenizer,
    model_context,
    param_count,
    resolve_device,
    skeleton,
    unreachable_message,
)
from study.memory import (
    PeakMemory,
    bits_per_weight,
    bits_record,
    disk_bytes,
    memory_breakdown,
    storage_key,
    tensor_bytes,
)
from study.perplexity import check_windows, divergence, per_line_perplexity, perplexity, tokenizer_free, window_plan
from study.text import DATASETS, TextSource, hub_commit, load_text, read_text_file, tokenize
from study.timing import (
    DECODE_DEFINITION,
    check_timing_lengths,
    greedy_config,
    hf_calls,
    latency,
    save_side_by_side,
    save_timing_record,
    side_by_side,
    summarize,
    timed_latency,
    timing_inputs,
)

# -----------------------------------------------------------------------------
# Results

def run_path(results_dir: str | os.PathLike, method: str, model_id: str, source: TextSource,
             cfg: EvalConfig, smoke: bool = False, device: str = "cpu", settings: dict | None = None) -> Path:
    """results/<method>__<model>__<text>__L<max_length>-S<stride>[-T<max_tokens>]__<device>__<hash>.json"""
    tag = f"L{cfg.max_length}-S{cfg.stride}" + (f"-T{cfg.max_tokens}" if cfg.max_tokens else "")
    key = {"text": source.sha256, "eval": asdict(cfg), "device": device, "settings": settings}
    return results.result_path(results_dir, method, model_id, [source.slug, tag, device], key, smoke)


def evaluate(model, tokenizer, source: TextSource, cfg: EvalConfig, *, method: str,
             settings: dict, model_id: str, out_path: str | os.PathLike | None = None,
             save: Callable[[str], None] | None = None, stand_in: str | None = None,
             random_weights: bool = False, smoke: bool = False, extra: dict | None = None,
             kind: str = "eval", progress: bool = True, identity: dict | None = None,
             reference=None, n_params: int | None = None) -> "results.Record":
    """Measure one model and (if out_path) write its results record. Every part calls this.

    method/settings name the scheme, identity is its registry entry (registry.identity(),
    stamped as method.identity); save(folder) writes the model for the size
    on disk (default: save_pretrained); stand_in says which model this one stands
    in for, so that its numbers are labelled wherever they appear, and random_weights
    that its perplexity means nothing. reference (the unquantized model) adds the KL
    divergence and top-1 agreement on the same windows; n_params (the unquantized model's
    own parameter count) adds bits per weight and is recorded as model.n_params."""
    context = model_context(model.config)
    cfg = cfg.resolve(context)
    check_windows(cfg.max_length, cfg.stride, context)
    ids = tokenize(tokenizer, source.text, cfg.max_tokens)
    dev = input_device(model)
    # Size on disk first, before any forward: some quantized layers change their stored
    # form at the first forward (bitsandbytes' CPU 4-bit repacking, see part2_bnb_nf4.py).
    disk = None if cfg.skip_disk else disk_bytes(save or (lambda d: model.save_pretrained(d)))
    measured = {}
    # The unquantized copy kept for the KL divergence waits on the CPU, so that no method's peak
    # counts it (on a GPU it would add its whole fp32 weights); it comes back for its own pass.
    ref_dev = park(reference)
    # memory.peak is the peak of one defined pass, the same for every method: the windowed
    # perplexity at batch 1. The per-line pass (batches of lines) and the timings have their own.
    with PeakMemory(dev) as peak:
        measured["perplexity"] = perplexity(model, ids, cfg.max_length, cfg.stride, progress)
    measured["perplexity"].update(tokenizer_free(measured["perplexity"], tokenizer, ids))
    if cfg.per_line:
        with PeakMemory(dev) as line_peak:
            measured["per_line_perplexity"] = per_line_perplexity(
                model, tokenizer, source.text, cfg.per_line, cfg.max_length, cfg.max_tokens,
                progress=progress)
        measured["per_line_perplexity"]["peak_bytes"] = line_peak.peak_bytes
    if not cfg.skip_latency:
        with PeakMemory(dev) as latency_peak:
            measured["latency"] = latency(model, tokenizer, ids, cfg.prefill_tokens, cfg.prompt_tokens,
                                          cfg.new_tokens, cfg.repeats, cfg.warmup)
        measured["latency"]["peak_bytes"] = latency_peak.peak_bytes
    if reference is not None:
        if ref_dev is not None:
            reference.to(ref_dev)
        measured["divergence"] = divergence(model, reference, ids, cfg.max_length, cfg.stride, progress)
    weights = tensor_bytes(model)
    described = describe_model(model_id, model)
    if n_params is not None:
        measured["bits_per_weight"] = bits_per_weight(model, n_params)
        described.update(n_params=n_params, n_params_torch=described["n_params"])
    record = results.new_record(
        kind, method, settings,
        {**described, "stand_in": stand_in, "random_weights": random_weights}, dev,
        dataset=dataset_record(source, ids, cfg.max_tokens), smoke=smoke, identity=identity, eval=asdict(cfg),
        **measured,
        memory=memory_record(weights["bytes"], weights["by_dtype_bytes"], disk, peak), **(extra or {}))
    if out_path is not None:
        record = results.write(record, out_path)
    return record


def park(reference) -> torch.device | None:
    """Move the KL divergence's reference model off a GPU before the measured passes; returns
    the device to bring it back to (None: nothing moved)."""
    if reference is None or not hasattr(reference, "parameters") or getattr(reference, "hf_device_map", None):
        return None
    where = next(reference.parameters()).device
    if where.type == "cpu":
        return None
    reference.to("cpu")
    return where


def dataset_record(source: TextSource, ids: torch.Tensor, max_tokens: int | None) -> dict:
    """The results JSON's dataset block: which text, its sha256, how many tokens were used."""
    return {"id": source.id, "description": source.description, "revision": source.revision,
            "sha256": source.sha256,
            "n_chars": len(source.text), "n_tokens": int(ids.shape[1]),
            "max_tokens": max_tokens, "truncated": max_tokens is not None and int(ids.shape[1]) == max_tokens}


def memory_record(weights_bytes: int, by_dtype_bytes: dict, disk: int | None, peak: "PeakMemory") -> dict:
    """The results JSON's memory block."""
    return {"unit": "MiB (2**20 bytes)", "peak_excludes_reference": True, "weights_bytes": weights_bytes,
            "weights_mib": weights_bytes / MiB,
            "by_dtype_bytes": by_dtype_bytes, "disk_bytes": disk, "disk_mib": None if disk is None else disk / MiB,
            "peak_bytes": peak.peak_bytes, "peak_mib": peak.peak_bytes / MiB, "peak_kind": peak.kind,
            "peak_scope": PEAK_SCOPE}


PEAK_SCOPE = "the windowed perplexity pass, batch 1 (the per-line pass and the timings: their own peak_bytes)"


def summary_line(record: dict) -> str:
    """One human line per run, for the terminal."""
    p, m = record["perplexity"], record["memory"]
    parts = [f"{record['method']['name']}: ppl {p['ppl']:.4f} ({p['n_tokens_scored']} tokens, "
             f"{p['n_windows']} windows, L={p['max_length']} S={p['stride']})",
             f"weights {m['weights_mib']:.1f} MiB"]
    if m["disk_mib"] is not None:
        parts.append(f"disk {m['disk_mib']:.1f} MiB")
    parts.append(f"peak {m['peak_mib']:.1f} MiB")
    if "latency" in record:
        lat = record["latency"]
        parts.append(f"prefill {lat['prefill']['median']:.1f} ms "
                     f"[{lat['prefill']['p10']:.1f}-{lat['prefill']['p90']:.1f}]")
        d = lat["decode"]["ms_per_token"]
        parts.append(f"decode {d['median']:.2f} ms/token [{d['p10']:.2f}-{d['p90']:.2f}]")
    return " | ".join(parts)


# -----------------------------------------------------------------------------
# CLI

def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags of RunOptions, with its defaults."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=RUN.model, help=f"Hub id or local folder (default: {RUN.model})")
    g.add_argument("--dtype", default=RUN.dtype, choices=list(DTYPES),
                   help=f"weights and activations dtype of the baseline (default: {RUN.dtype}, GPT-2's own)")
    g.add_argument("--device", default=RUN.device, help=f"auto (cuda if present), cpu or cuda (default: {RUN.device})")
    g.add_argument("--device-map", default=RUN.device_map,
                   help="'auto' shards a model too big for one GPU across devices (accelerate)")
    g.add_argument("--stand-in", default=RUN.stand_in,
                   help="say which model this one stands in for, e.g. 'smollm2-135m stands in for gpt2'; "
                        "stored in the results and shown beside its numbers")
    g.add_argument("--random-weights", action="store_true",
                   help="the model's weights are random (a stand-in for shapes, memory and speed): its "
                        "perplexity means nothing; stored as model.random_weights, and readers say so")
    g.add_argument("--threads", type=int, default=RUN.threads, help="torch CPU threads (default: torch's choice)")


# The timing flags: each one's default is EvalConfig's field of its name (also speed/fast_decode.py's).
LATENCY_FLAGS = {"--prefill-tokens": "prefill length, batch 1",
                 "--prompt-tokens": "decode prompt length",
                 "--new-tokens": "greedy tokens to decode",
                 "--repeats": "timed repeats, round-robin where several methods are timed",
                 "--warmup": "untimed warm-up runs"}


def add_latency_args(g) -> None:
    """The timing flags (LATENCY_FLAGS), with EvalConfig's defaults."""
    for flag, words in LATENCY_FLAGS.items():
        g.add_argument(flag, type=int, default=getattr(DEFAULTS, flag[2:].replace("-", "_")),
                       help=f"{words} (default: %(default)s)")


def add_kld_arg(g) -> None:
    """--skip-kld, for every script that quantizes: the KL divergence needs an unquantized copy."""
    g.add_argument("--skip-kld", action="store_true",
                   help="do not keep an unquantized copy for the KL divergence and top-1 agreement against it "
                        "(halves the memory needed)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """The text, measuring and output flags of RunOptions, with its defaults."""
    g = p.add_argument_group("text and perplexity")
    g.add_argument("--dataset", default=RUN.dataset, choices=list(DATASETS),
                   help=f"Hub test split to score (default: {RUN.dataset}); ignored with --text-file")
    g.add_argument("--text-file", default=RUN.text_file, help="score this local UTF-8 text instead (offline use)")
    g.add_argument("--max-length", type=int, default=DEFAULTS.max_length,
                   help=f"window length in tokens (default: min(model context, {MAX_LENGTH_CAP}))")
    g.add_argument("--stride", type=int, default=DEFAULTS.stride,
                   help=f"window step in tokens (default: {STRIDE_CAP}, or max-length if that is shorter)")
    g.add_argument("--max-tokens", type=int, default=DEFAULTS.max_tokens,
                   help="score only the first N tokens of the text (recorded in the JSON)")
    g.add_argument("--per-line", type=int, default=DEFAULTS.per_line,
                   help="lines for the sample report's per-line mean perplexity, shown beside the "
                        f"real figure (default: {DEFAULTS.per_line}; 0 skips it)")
    add_latency_args(p.add_argument_group("latency"))
    g.add_argument("--skip-latency", action="store_true", help="do not time prefill and decode")
    g.add_argument("--skip-disk", action="store_true", help="do not save the model to measure its size")
    g = p.add_argument_group("output")
    g.add_argument("--results-dir", default=RUN.results_dir,
                   help=f"folder for the results JSON (default: {RUN.results_dir})")
    g.add_argument("--out", default=RUN.out, help="exact results file (default: a name made from the settings)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--smoke", action="store_true",
                   help="offline end-to-end run on a tiny random model made on the spot (~1 minute); "
                        "its numbers mean nothing")


def add_quantizer_args(p: argparse.ArgumentParser, g) -> None:
    """What every script that quantizes takes beside its own flags: --skip-kld (in its group g),
    then RunOptions' model, text, measuring and output flags."""
    add_kld_arg(g)
    add_model_args(p)
    add_eval_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    add_eval_args(p)
    return p


def check_common(args: argparse.Namespace) -> None:
    """Checks that need no model: every value's range and every output location, so that a
    mistake fails in a second, before a long load or a long run."""
    if args.quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    if args.threads is not None:
        cpus = os.cpu_count() or 1
        if not 1 <= args.threads <= cpus:
            raise UserError(f"--threads must be between 1 and this machine's {cpus} CPUs (got {args.threads})")
        torch.set_num_threads(args.threads)
    resolve_device(args.device)
    check_device_map(args.device_map)
    check_at_least(("--max-tokens", args.max_tokens, 2), ("--max-length", args.max_length, 2),
                   ("--per-line", args.per_line, 0), *latency_minimums(args))
    if args.max_length is not None:
        check_windows(args.max_length, args.stride or default_stride(args.max_length), None)
    elif args.stride is not None and args.stride <= 0:
        raise UserError(f"--stride must be positive; got {args.stride}")
    if args.out is not None:
        check_output_file(args.out, "--out")
    else:
        check_output_dir(args.results_dir, "--results-dir")
    if args.text_file is not None:
        read_text_file(args.text_file)


def latency_minimums(args) -> tuple:
    """The timing flags' lower bounds, for check_at_least (evaluate's flags and fast_decode's)."""
    return (("--prefill-tokens", args.prefill_tokens, 1), ("--prompt-tokens", args.prompt_tokens, 1),
            ("--new-tokens", args.new_tokens, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0))


def prepare(args: argparse.Namespace) -> tuple[EvalConfig, TextSource]:
    """What every part does before loading a model, so bad input fails in seconds:
    check the flags and the model's config, fix the windows, read the text."""
    check_common(args)
    context = model_context(load_config(args.model))
    check_model_source(args.model, need_tokenizer=True)
    cfg = EvalConfig.from_args(args).resolve(context)
    check_windows(cfg.max_length, cfg.stride, context)
    check_latency_fits(cfg, context)
    source = load_text(args.dataset, args.text_file)
    check_scorable(load_tokenizer(args.model), source.text)
    return cfg, source


def check_scorable(tokenizer, text: str, probe_chars: int = 4000) -> None:
    """At least 2 tokens, checked on the text's start before the model loads (the whole text
    only if its start is not enough)."""
    for part in (text[:probe_chars], text):
        if len(tokenizer(part).input_ids) >= 2:
            return
        if len(text) <= probe_chars:
            break
    raise UserError("the text has fewer than 2 tokens: nothing to score (give a longer text)")


# Windows and timings small enough for a tiny model to finish in seconds on a CPU.
SMOKE_SETTINGS = dict(max_length=64, stride=32, prefill_tokens=64, prompt_tokens=8, new_tokens=16,
                      repeats=5, warmup=1, per_line=200, stand_in="tiny random GPT-2 (smoke run)")


def make_smoke_inputs(workdir: str | os.PathLike) -> tuple[str, str]:
    """A tiny random GPT-2 (seeded, so always the same) and a synthetic text, in workdir.
    Its width is 64, the smallest that bitsandbytes' CPU 4-bit kernel takes."""
    import tiny_models
    model_dir = tiny_models.make_tiny_model(Path(workdir) / "tiny-gpt2", arch="gpt2", n_embd=64)
    text_file = Path(workdir) / "tiny.txt"
    text_file.write_text(tiny_models.synthetic_text(), encoding="utf-8")
    return str(model_dir), str(text_file)


def smoke_setup(args: argparse.Namespace, workdir: str) -> None:
    """Point args at the smoke model and text, with the small smoke settings."""
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()                    # the tiny model's save, too
    args.model, args.text_file = make_smoke_inputs(workdir)
    vars(args).update(SMOKE_SETTINGS)


def main(*, run: RunOptions = RUN) -> dict:
    """Evaluate the unquantized baseline and write its results JSON; returns the record. run: the
    command line's flags (all of them shared with the parts: RunOptions)."""
    args = with_defaults(build_parser(), dict(locals()))
    with tempfile.TemporaryDirectory(prefix="qstudy-smoke-") as workdir:
        if args.smoke:
            smoke_setup(args, workdir)
        cfg, source = prepare(args)
        model, tokenizer = load_model(args.model, args.dtype, args.device, args.device_map)
        # a cast (float16, bfloat16) is a method too: its KL divergence against the float32 model
        reference = (None if args.dtype == "float32"
                     else load_model(args.model, "float32", args.device, args.device_map)[0])
        identity = registry.identity({"float32": "baseline-fp32", "float16": "baseline-fp16",
                                      "bfloat16": "baseline-bf16"}[args.dtype])
        settings = {"dtype": args.dtype, "device": args.device, "device_map": args.device_map,
                    "quantized": False}
        dev = resolve_device(args.device).type
        out = Path(args.out) if args.out else run_path(args.results_dir, identity["name"], args.model,
                                                       source, cfg, args.smoke, dev, settings)
        record = evaluate(model, tokenizer, source, cfg, method=identity["name"], identity=identity, settings=settings,
                          model_id=args.model, out_path=out, stand_in=args.stand_in,
                          random_weights=args.random_weights, smoke=args.smoke,
                          progress=not args.quiet, reference=reference)
    print(summary_line(record))
    pl = record.get("per_line_perplexity")
    if pl and pl["mean_of_line_ppl"] is not None:
        print(f"  (per-sample aggregation, not comparable: mean of {pl['n_lines']} line perplexities = "
              f"{pl['mean_of_line_ppl']:.2f})")
    if args.smoke:
        print("SMOKE RUN: tiny random model, the numbers mean nothing")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    run_cli(main, build_parser())
