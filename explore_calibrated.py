#!/usr/bin/env python3
"""Exploration directions: GPTQ and AWQ from scratch, against round-to-nearest on the same grid.

Every linear layer inside the decoder blocks becomes n-bit codes (3 or 4 bits) with a scale and a
zero point per group of inputs (or per output channel); the embeddings, the output layer and the
norms stay as loaded, as in Part 1's 4-bit runs. The methods differ only in how they choose the
codes (calibrated/ holds them, in plain torch):

    rtn   round-to-nearest on a min/max grid (no calibration): the baseline of the two others
    gptq  Frantar et al. 2022: Hessian-aware rounding, column by column, from calibration inputs
    awq   Lin et al. 2023: activation-aware per-channel scales, searched on calibration inputs

Then the same evaluate() as every part measures memory, latency, perplexity, bits per weight,
and the KL divergence and top-1 agreement against the unquantized model, on the same windows.
BF16, the other direction the assignment names, is `evaluate.py --dtype bfloat16`.

    python explore_calibrated.py --method gptq                       # gpt2, 4-bit, groups of 128
    python explore_calibrated.py --method awq --bits 3
    python explore_calibrated.py --method gptq --group-size 0 --act-order   # per output channel
    python explore_calibrated.py --method gptq --model DIR --text-file wiki.test.raw --calib-source botchan
    python explore_calibrated.py --smoke --method awq                # tiny offline model, seconds

Calibration: --calib-samples windows of --calib-len tokens at seeded offsets, by default from
the scored dataset's train split on the Hub, or offline from the Wikipedia text the repository
carries (data/enwiki/). A calibration window that shares 32 consecutive tokens with the scored text is
refused, and the source, its sha256, the windows and the seed go into the results record.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import evaluate as ev
import results
from calibrated import calibration as cal
from calibrated.methods import CALIBRATED, METHODS, Options, check_model, quantize
from calibrated.quantizer import BITS, CONTAINER_BITS, PER_CHANNEL, Grid
from study import registry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explore_calibrated.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    g = p.add_argument_group("quantization")
    g.add_argument("--method", default="gptq", help=f"{', '.join(METHODS)} (default: gptq)")
    g.add_argument("--bits", type=int, default=4, help=f"code width, {' or '.join(map(str, BITS))} (default: 4)")
    g.add_argument("--group-size", type=int, default=128,
                   help=f"inputs per scale and zero point; {PER_CHANNEL} for one per output channel (default: 128)")
    g.add_argument("--act-order", action="store_true",
                   help="gptq: quantize the columns in order of decreasing Hessian diagonal (groups stay contiguous)")
    g.add_argument("--damp", type=float, default=Options.damp,
                   help=f"gptq: dampening, a fraction of the Hessian's mean diagonal (default: {Options.damp})")
    g.add_argument("--block-size", type=int, default=Options.block_size,
                   help=f"gptq: columns per lazy batch update (default: {Options.block_size})")
    g.add_argument("--awq-grid", type=int, default=Options.awq_grid,
                   help=f"awq: points of the exponent grid in [0, 1) (default: {Options.awq_grid})")
    g.add_argument("--no-awq-clip", action="store_true", help="awq: skip the clipping search")
    g = p.add_argument_group("calibration (gptq, awq)")
    g.add_argument("--calib-source", default="auto",
                   help="auto (the scored dataset's train split on the Hub; enwiki when scoring a --text-file), "
                        "wikitext2-train, ptb-train, enwiki (carried Wikipedia articles), botchan (a carried "
                        "novel), or wikitext2-test-tail (the scored file's tokens after the last scored one)")
    g.add_argument("--calib-file", default=None, help="calibrate on this local UTF-8 text instead")
    g.add_argument("--calib-samples", type=int, default=cal.N_SAMPLES,
                   help=f"calibration windows (default: {cal.N_SAMPLES})")
    g.add_argument("--calib-len", type=int, default=cal.SEQ_LEN,
                   help=f"tokens per calibration window (default: {cal.SEQ_LEN})")
    g.add_argument("--seed", type=int, default=cal.SEED, help=f"seed of the window offsets (default: {cal.SEED})")
    g.add_argument("--calib-batch", type=int, default=Options.batch_size,
                   help=f"calibration windows per forward (default: {Options.batch_size})")
    ev.add_quantizer_args(p, g)
    return p


def check_flags(args: argparse.Namespace) -> None:
    """Every flag of this script, before anything loads."""
    if args.method not in METHODS:
        raise ev.UserError(f"unknown --method '{args.method}' (choose {', '.join(METHODS)}; BF16 is "
                           "evaluate.py --dtype bfloat16)")
    if args.bits not in BITS:
        raise ev.UserError(f"--bits {args.bits} is not supported: choose {' or '.join(map(str, BITS))}")
    if args.group_size < 0:
        raise ev.UserError(f"--group-size must be {PER_CHANNEL} (per output channel) or positive, "
                           f"not {args.group_size}")
    ev.check_at_least(("--calib-samples", args.calib_samples, 1), ("--calib-len", args.calib_len, 2),
                      ("--block-size", args.block_size, 1), ("--awq-grid", args.awq_grid, 1),
                      ("--calib-batch", args.calib_batch, 1))
    if not 0 <= args.damp < 1:
        raise ev.UserError(f"--damp must be in [0, 1), not {args.damp}")
    if args.calib_source not in cal.CALIBRATION_SOURCES:
        raise ev.UserError(f"unknown --calib-source '{args.calib_source}' "
                           f"(choose {', '.join(cal.CALIBRATION_SOURCES)}, or --calib-file PATH)")
    if args.calib_file is not None:
        if args.calib_source != "auto":
            raise ev.UserError("--calib-file and --calib-source name two sources: give one")
        ev.read_text_file(args.calib_file)
    if args.act_order and args.method != "gptq":
        raise ev.UserError("--act-order is GPTQ's option (--method gptq)")
    if args.calib_source == "wikitext2-test-tail" and (args.text_file is None or args.max_tokens is None):
        raise ev.UserError("--calib-source wikitext2-test-tail draws from a local scored text after its scored "
                           "tokens: it needs --text-file and --max-tokens")


def chosen_source(args) -> str:
    return cal.auto_source(args.dataset, args.text_file) if args.calib_source == "auto" else args.calib_source


def variant(args) -> str | None:
    """What the name adds for an option that is not the default: act-order, another calibration source."""
    variants = []
    if args.act_order:
        variants.append("ao")
    if args.method in CALIBRATED:
        src = f"file-{Path(args.calib_file).stem}" if args.calib_file else chosen_source(args)
        if src != cal.auto_source(args.dataset, args.text_file):
            variants.append(f"cal-{src}")
    return "-".join(variants) or None


def method_identity(args) -> dict:
    return registry.identity(f"{args.method}-w{args.bits}", group_size=args.group_size, variant=variant(args))


def main(*, method: str = "gptq", bits: int = 4, group_size: int = 128, act_order: bool = False,
         damp: float = Options.damp, block_size: int = Options.block_size, awq_grid: int = Options.awq_grid,
         no_awq_clip: bool = False, calib_source: str = "auto", calib_file: str | None = None,
         calib_samples: int = cal.N_SAMPLES, calib_len: int = cal.SEQ_LEN, seed: int = cal.SEED,
         calib_batch: int = Options.batch_size, skip_kld: bool = False, run: ev.RunOptions = ev.RUN) -> results.Record:
    """Quantize with one method, evaluate through evaluate.py, write the results JSON; returns the
    record. The keywords are this script's own flags, run the shared ones (evaluate.RunOptions)."""
    args = ev.with_defaults(build_parser(), dict(locals()))
    import tempfile
    with tempfile.TemporaryDirectory(prefix="qstudy-smoke-") as workdir:
        if args.smoke:
            ev.smoke_setup(args, workdir)
            args.calib_samples, args.calib_len = min(args.calib_samples, 16), min(args.calib_len, 64)
            args.awq_grid = min(args.awq_grid, 4)
            args.group_size = min(args.group_size, 32) if args.group_size else 0   # the tiny model is 64 wide
        check_flags(args)
        cfg, source = ev.prepare(args)
        grid = Grid(args.bits, args.group_size)
        skeleton = ev.skeleton(args.model)                                  # shapes only, no weights
        widest = check_model(skeleton, grid)
        n_params = ev.param_count(skeleton)
        calibration = None
        if args.method in CALIBRATED:
            if args.calib_len > cfg.max_length:
                raise ev.UserError(f"--calib-len {args.calib_len} is longer than the windows scored "
                                   f"({cfg.max_length})")
            if args.calib_samples * args.calib_len < widest:
                raise ev.UserError(f"too few calibration tokens: {args.calib_samples} x {args.calib_len} = "
                                   f"{args.calib_samples * args.calib_len}, fewer than the widest layer's "
                                   f"{widest} inputs (its Hessian would be singular)")
            tokenizer = ev.load_tokenizer(args.model)
            scored = ev.tokenize(tokenizer, source.text, cfg.max_tokens)
            full = ev.tokenize(tokenizer, source.text) if chosen_source(args) == "wikitext2-test-tail" else None
            calibration = cal.calibration_set(tokenizer, source=chosen_source(args), calib_file=args.calib_file,
                                              n_samples=args.calib_samples, seq_len=args.calib_len,
                                              seed=args.seed, scored_ids=scored, full_text_ids=full)
        net, tokenizer = ev.load_model(args.model, args.dtype, args.device, args.device_map)
        reference = None if args.skip_kld else copy.deepcopy(net)
        options = Options(damp=args.damp, block_size=args.block_size, act_order=args.act_order,
                          awq_grid=args.awq_grid, awq_clip=not args.no_awq_clip, batch_size=args.calib_batch)
        report = quantize(net, args.method, grid, None if calibration is None else calibration.windows, options,
                          progress=not args.quiet)
        identity = method_identity(args)
        settings = {"method": args.method, "bits": args.bits, "group_size": args.group_size, "variant": variant(args),
                    "container_bits": CONTAINER_BITS,
                    "layers": "every linear inside the decoder blocks; embeddings, output layer and norms as loaded",
                    "storage": "codes two per byte (3-bit codes in 4-bit containers), a scale in the model's "
                               "dtype and a uint8 zero point per group",
                    **({"damp": args.damp, "block_size": args.block_size, "act_order": args.act_order,
                        "groups": "static (fitted on the original weights)" if args.act_order or not args.group_size
                        else "fitted when quantization reaches the group, on the updated weights"}
                       if args.method == "gptq" else {}),
                    **({"awq_grid": args.awq_grid, "awq_clip": not args.no_awq_clip} if args.method == "awq" else {}),
                    "calibration": None if calibration is None else calibration.record()}
        dev = ev.input_device(net).type
        out = Path(args.out) if args.out else ev.run_path(args.results_dir, identity["name"], args.model, source,
                                                          cfg, args.smoke, dev, settings)
        from part1_quantize_scratch import save_quantized
        record = ev.evaluate(net, tokenizer, source, cfg, method=identity["name"], identity=identity,
                             settings=settings, model_id=args.model, out_path=out,
                             save=lambda d: save_quantized(net, d, settings), stand_in=args.stand_in,
                             random_weights=args.random_weights, smoke=args.smoke, progress=not args.quiet,
                             reference=reference, n_params=n_params,
                             extra={"quantization": ev.memory_breakdown(net), "quantize": report})
    print(ev.summary_line(record))
    b, d = record["bits_per_weight"], record.get("divergence")
    print(f"  {b['quantized_layers']['bits_per_weight']:.3f} bits per quantized weight, "
          f"{b['model']['bits_per_weight']:.3f} over the whole model; quantized in {report['seconds']:.1f} s"
          + (f"; KLD {d['kld_mean']:.4f} (p99 {d['kld_p99']:.4f}), top-1 {100 * d['top1_agreement']:.1f}%"
             if d else ""))
    if args.smoke:
        print("SMOKE RUN: tiny random model, the numbers mean nothing")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    ev.run_cli(main, build_parser())
