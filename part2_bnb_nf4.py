#!/usr/bin/env python3
"""Part 2: bitsandbytes 8-bit (LLM.int8()), 4-bit FP4 and NF4 (with and without double
quantization), and why NF4 beats linear 4-bit.

Each mode loads the model through transformers' BitsAndBytesConfig, is measured by
evaluate.py (same text, windows, tokens as the baseline) and writes a results JSON:

    python part2_bnb_nf4.py --mode nf4                    # gpt2, WikiText-2, GPU if present
    python part2_bnb_nf4.py --mode all                    # int8, fp4, nf4, nf4-dq, one after the other
    python part2_bnb_nf4.py --mode int8 --threshold 0     # LLM.int8() without outlier decomposition
    python part2_bnb_nf4.py --compare                     # NF4 vs linear 4-bit: error per layer, histogram
    python part2_bnb_nf4.py --bench                       # fp32, fp16, every mode: latency side by side

Assumptions, stated once:
- bitsandbytes quantizes the linear layers inside the model (GPT-2's Conv1D too,
  transposed to (out, in)); the embeddings, the output layer (tied to wte in GPT-2),
  norms and biases stay in the load dtype. The results JSON counts each.
- 4-bit uses bitsandbytes' block size of 64, the same as Part 1's from-scratch int4/NF4,
  so the comparison differs only in the levels.
- Compute dtype: float16 on a GPU, float32 on a CPU (bitsandbytes' CPU backend); the
  non-quantized tensors are loaded in that dtype. LLM.int8() casts its inputs to
  float16 whatever the compute dtype.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import tempfile
from pathlib import Path

import torch

import evaluate as ev
import part1_quantize_scratch as p1
import results
from study import plan, registry

MODES = plan.BNB_MODES                            # study/plan.py says which modes the study runs
# LLM.int8() warns at every matmul that it casts float32 inputs to float16; said once, in the docstring.
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
# On a CPU with AVX512-BF16, bitsandbytes looks for an optional faster 4-bit kernel (the
# 'kernels' package) and warns on every run when it is absent; its own kernel serves.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
BLOCK = 64                      # bitsandbytes' 4-bit block size, and Part 1's
THRESHOLD_DEFAULT = registry.BNB_INT8_THRESHOLD  # LLM.int8()'s outlier threshold, bitsandbytes' default
KINDS_4BIT = tuple(registry.COMPARE_KINDS)       # --compare's formats: bitsandbytes' and Part 1's


# -----------------------------------------------------------------------------
# 1. Loading through BitsAndBytesConfig

def check_backend(device: torch.device) -> str:
    """'cuda' or 'cpu' if bitsandbytes can quantize there; otherwise one clear error."""
    try:
        import bitsandbytes.functional as bnbf
    except Exception as e:  # ImportError, or a broken native library
        raise ev.UserError(f"bitsandbytes cannot be imported ({type(e).__name__}: {e}); "
                           "pip install -r requirements.txt") from None
    if device.type == "cuda":
        return "cuda"
    try:                    # bitsandbytes >= 0.48 has a CPU backend; older ones need CUDA
        x = torch.randn(2 * BLOCK)
        q, st = bnbf.quantize_4bit(x, blocksize=BLOCK, quant_type="nf4")
        bnbf.dequantize_4bit(q, st)
    except Exception as e:
        raise ev.UserError(f"bitsandbytes cannot run here: no CUDA GPU, and its CPU backend failed "
                           f"({type(e).__name__}: {ev.one_line(e)})") from None
    return "cpu"


# Model types whose activations overflow float16: Gemma 3 270M's logits are NaN from the first window
# in float16 (measured here, on a CPU and through bitsandbytes on an H200); bfloat16 keeps fp32's range.
HALF_OVERFLOWS = ("gemma2", "gemma3", "gemma3_text")


def compute_dtype_for(device: torch.device, name: str | None, model_type: str | None = None) -> str:
    """auto: float32 on a CPU; on a GPU float16, or bfloat16 for a model that overflows float16."""
    if name in (None, "auto"):
        if device.type != "cuda":
            return "float32"
        return "bfloat16" if model_type in HALF_OVERFLOWS else "float16"
    if name not in ev.DTYPES:
        raise ev.UserError(f"unknown compute dtype '{name}' (choose auto, {', '.join(ev.DTYPES)})")
    return name


def bnb_config(mode: str, compute_dtype: str, threshold: float = THRESHOLD_DEFAULT):
    """transformers' BitsAndBytesConfig for one mode."""
    from transformers import BitsAndBytesConfig
    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    if mode in ("fp4", "nf4", "nf4-dq"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=mode[:3],
                                  bnb_4bit_use_double_quant=mode == "nf4-dq",
                                  bnb_4bit_compute_dtype=ev.DTYPES[compute_dtype])
    raise ev.UserError(f"unknown mode '{mode}' (choose {', '.join(MODES)} or all)")


def parse_modes(spec: str) -> list[str]:
    if spec.strip().lower() == "all":
        return list(MODES)
    modes = [m.strip() for m in spec.split(",")]
    if not all(modes):
        raise ev.UserError(f"malformed --mode '{spec}': use e.g. nf4 or int8,nf4 or all")
    for m in modes:
        if m not in MODES:
            raise ev.UserError(f"unknown mode '{m}' (choose {', '.join(MODES)} or all)")
    return list(dict.fromkeys(modes))


def check_threshold(threshold: float) -> None:
    if not math.isfinite(threshold) or threshold < 0:
        raise ev.UserError(f"--threshold must be a finite number >= 0 (got {threshold}); 0 turns the "
                           f"outlier columns off")


def compare_layers(model) -> list[str]:
    """The block linears --compare measures: those with a whole number of blocks of BLOCK."""
    blocks_name, block_list = p1.decoder_blocks(model)
    return [f"{blocks_name}.{i}.{name}" for i, block in enumerate(block_list)
            for name, m in block.named_modules() if p1.is_linear(m) and p1.linear_weight(m).numel() % BLOCK == 0]


def check_layer(model, layer: str | None) -> None:
    """--layer against the model's layers, on ev.skeleton() before the weights load."""
    names = compare_layers(model)
    if not names:
        raise ev.UserError(f"no linear layer in the decoder blocks has a multiple of {BLOCK} weights")
    if layer is not None and layer not in names:
        raise ev.UserError(f"--layer {layer}: no such block linear (e.g. {names[len(names) // 2]})")


def check_4bit_shapes(model, modes: list[str], device: torch.device) -> None:
    """bitsandbytes' CPU 4-bit kernel repacks each weight at its first forward into rows of
    in_features / BLOCK absmax values, so a layer whose input width is not a multiple of
    BLOCK fails there, after the load (CUDA takes any width). Checked on ev.skeleton()
    (shapes only) before the weights load."""
    if device.type != "cpu" or not any(m != "int8" for m in modes):
        return
    for name, module in model.named_modules():
        if p1.is_linear(module) and module is not model.get_output_embeddings():
            out_f, in_f = p1.linear_weight(module).shape
            if in_f % BLOCK:
                raise ev.UserError(f"bitsandbytes' CPU 4-bit kernel needs input widths that are multiples of "
                                   f"{BLOCK}: {name} has {in_f} (use --mode int8, a GPU, or another model)")


def load_bnb(model_id: str, mode: str, device: str, compute_dtype: str, threshold: float = THRESHOLD_DEFAULT,
             device_map: str | None = None):
    """(model, tokenizer) quantized by bitsandbytes on load. Without --device-map the
    whole model goes to the one device; 'auto' lets accelerate spread it."""
    dev = ev.resolve_device(device)
    cfg = bnb_config(mode, compute_dtype, threshold)
    if device_map is None:
        device_map = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    return ev.load_model(model_id, compute_dtype, device, device_map, quantization_config=cfg)


def method_identity(mode: str, threshold: float) -> dict:
    """The registry's identity of a bitsandbytes mode (its name is the results' method name)."""
    return registry.identity(f"bnb-{mode}", threshold=threshold if mode == "int8" else None)


def settings_of(mode: str, compute_dtype: str, threshold: float) -> dict:
    import bitsandbytes
    s = {"library": "bitsandbytes", "bitsandbytes_version": bitsandbytes.__version__,
         "mode": mode, "compute_dtype": compute_dtype, "load_dtype": compute_dtype,
         "quantized": "every linear layer (nn.Linear, Conv1D) except the output layer",
         "kept_in_load_dtype": "embeddings, output layer (lm_head), norms, biases"}
    if mode == "int8":
        s.update(scheme="LLM.int8(): per-row absmax int8, outlier features (|x| > threshold) in fp16",
                 threshold=threshold)
    else:
        s.update(scheme=f"{mode[:3].upper()} 4-bit, absmax per block of {BLOCK}",
                 block_size=BLOCK, double_quant=mode == "nf4-dq")
    return s


# -----------------------------------------------------------------------------
# 2. NF4 against linear 4-bit: the same weights through four quantizers

def bnb_roundtrip(w: torch.Tensor, quant_type: str) -> torch.Tensor:
    """bitsandbytes' own 4-bit quantize + dequantize of an (out, in) fp32 weight."""
    import bitsandbytes.functional as bnbf
    q, state = bnbf.quantize_4bit(w.contiguous(), blocksize=BLOCK, quant_type=quant_type)
    return bnbf.dequantize_4bit(q, state).float()


def scratch_roundtrip(w: torch.Tensor, kind: str) -> torch.Tensor:
    packed, absmax = p1.quantize_4bit(w, kind, BLOCK)
    return p1.dequantize_4bit(packed, absmax, kind, w.shape)


def roundtrip(w: torch.Tensor, kind: str) -> torch.Tensor:
    lib, quant = kind.split("-")
    return bnb_roundtrip(w, quant) if lib == "bnb" else scratch_roundtrip(w, quant)


def entropy_bits(codes: torch.Tensor, n: int = 16) -> float:
    """Shannon entropy of the 4-bit codes, in bits: 4.0 means every level is used equally."""
    p = torch.bincount(codes.reshape(-1).long(), minlength=n).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def compare_4bit(model, layer: str | None = None, bins: int = 200) -> dict:
    """Per-layer reconstruction MSE of bnb NF4, bnb FP4, scratch NF4 and scratch int4
    (all block 64) on the float model's block linears; the cross-check scratch NF4 ==
    bnb NF4 after dequantization; and, for one real layer, the histogram of its
    block-normalized weights w / absmax(block) with the levels each scheme can hit."""
    blocks_name, block_list = p1.decoder_blocks(model)
    rows, worst_cross = [], 0.0
    for i, block in enumerate(block_list):
        for name, module in block.named_modules():
            if not p1.is_linear(module):
                continue
            w = p1.linear_weight(module).detach().float().cpu()                   # (out, in)
            if w.numel() % BLOCK:
                continue
            if not torch.isfinite(w).all():
                raise ev.UserError(f"{blocks_name}.{i}.{name} holds NaN or infinite weights: no error to measure")
            rec = {k: roundtrip(w, k) for k in KINDS_4BIT}
            power = float(w.pow(2).mean())
            row = {"layer": f"{blocks_name}.{i}.{name}", "block": i, "component": p1.component_of(name),
                   "shape": list(w.shape), "weight_mean_square": power}
            for k, r in rec.items():
                row[f"mse_{k}"] = float((r - w).pow(2).mean())
                row[f"rel_mse_{k}"] = row[f"mse_{k}"] / power if power else 0.0    # an all-zero layer: exact
            cross = float((rec["scratch-nf4"] - rec["bnb-nf4"]).abs().max())
            row["max_abs_diff_scratch_vs_bnb_nf4"] = cross
            worst_cross = max(worst_cross, cross / max(float(w.abs().max()), 1e-30))
            rows.append(row)
    if not rows:
        raise ev.UserError("no linear layer in the decoder blocks has a multiple of 64 weights")
    mean = {k: sum(r[f"rel_mse_{k}"] for r in rows) / len(rows) for k in KINDS_4BIT}

    chosen = next((r for r in rows if r["layer"] == layer), None) if layer else rows[len(rows) // 2]
    if chosen is None:
        raise ev.UserError(f"--layer {layer}: no such block linear (e.g. {rows[0]['layer']})")
    w = p1.linear_weight(model.get_submodule(chosen["layer"])).detach().float().cpu()
    x = w.reshape(-1, BLOCK)
    x = (x / p1._safe(x.abs().amax(dim=1, keepdim=True))).reshape(-1)            # in [-1, 1]
    counts = torch.histc(x, bins=bins, min=-1.0, max=1.0)
    nf4_codes = p1.nf4_codes(x)
    int4_codes = p1.int4_codes(x)
    uni16 = torch.linspace(-1, 1, 16)
    uni16_codes = (x[:, None] - uni16).abs().argmin(dim=1)
    std = float(x.std())
    histogram = {
        "layer": chosen["layer"], "shape": chosen["shape"], "block_size": BLOCK,
        "x": "w / absmax of its block of 64", "bins": bins, "range": [-1.0, 1.0],
        "counts": [int(c) for c in counts.tolist()],
        "normal_fit_std": std,
        "levels": {"nf4": list(p1.NF4_LEVELS), "uniform16": uni16.tolist(),
                   "int4_scratch": [(k - 8) / 7 for k in range(1, 16)]},
        "code_entropy_bits": {"nf4": entropy_bits(nf4_codes), "uniform16": entropy_bits(uni16_codes),
                              "int4_scratch": entropy_bits(int4_codes)},
        "code_use": {"nf4": torch.bincount(nf4_codes, minlength=16).tolist(),
                     "uniform16": torch.bincount(uni16_codes, minlength=16).tolist(),
                     "int4_scratch": torch.bincount(int4_codes.long(), minlength=16).tolist()},
    }
    return {"block_size": BLOCK, "kinds": list(KINDS_4BIT), "layers": rows, "mean_rel_mse": mean,
            "cross_check": {"what": "max |scratch NF4 - bnb NF4| after dequantization, over every layer, "
                                    "relative to the layer's max |w|",
                            "max_rel_diff": worst_cross, "tolerance": 1e-6, "ok": worst_cross <= 1e-6},
            "histogram": histogram}


# -----------------------------------------------------------------------------
# 3. Speed side by side: baselines, every bitsandbytes mode, scratch 4-bit

def bench(model_id: str, tokenizer, ids: torch.Tensor, cfg: ev.EvalConfig, modes: list[str], device: str,
          compute_dtype: str, threshold: float, progress: bool) -> dict:
    """Load every method once, then time prefill and decode round-robin (ev.side_by_side).
    fp16 is timed only on a GPU (CPU fp16 matmuls are not what anyone deploys)."""
    dev = ev.resolve_device(device)
    models = {}
    base, _ = ev.load_model(model_id, "float32", device)
    ev.check_timing_lengths(base, cfg.prefill_tokens, cfg.prompt_tokens, cfg.new_tokens, cfg.repeats)
    models["fp32"] = base
    if dev.type == "cuda":
        models["fp16"] = ev.load_model(model_id, "float16", device)[0]
    for mode in modes:
        models[method_identity(mode, threshold)["name"]] = load_bnb(model_id, mode, device, compute_dtype, threshold)[0]
    for bits, kind in ((8, "per_channel"), (4, "int4"), (4, "nf4")):
        m = copy.deepcopy(models["fp16"] if dev.type == "cuda" else base)
        p1.quantize_model(m, "whole", bits, kind)
        if bits == 8:
            p1.set_path(m, "fast")                      # Part 1's INT8 with its fused kernel
        models[f"scratch-{'int8' if bits == 8 else kind}"] = m
    prefill_ids, prompt = ev.timing_inputs(ids, cfg.prefill_tokens, cfg.prompt_tokens, dev)
    methods = {}
    for name, m in models.items():
        with torch.no_grad():                 # one forward first: LLM.int8() sets its row scales lazily
            m(prompt)
        weights = ev.tensor_bytes(m)
        methods[name] = {**ev.hf_calls(m, tokenizer, prefill_ids, prompt, cfg.new_tokens),
                         "weights_mib": weights["mib"], "weight_dtype_bytes": weights["by_dtype_bytes"]}
    baseline = "fp16" if dev.type == "cuda" else "fp32"
    result = ev.side_by_side(methods, dev, cfg.new_tokens, cfg.repeats, cfg.warmup, baseline, progress)
    return {**result, "prefill_tokens": cfg.prefill_tokens, "prompt_tokens": cfg.prompt_tokens,
            "new_tokens": cfg.new_tokens, "decode_definition": ev.DECODE_DEFINITION,
            "compute_dtype": compute_dtype, "threads": torch.get_num_threads(),
            "note": "scratch-int8 is Part 1's from-scratch INT8 (per-channel, its fast path: the fused kernel); "
                    "scratch-int4/nf4 are Part 1's from-scratch 4-bit (dequantize then F.linear); all "
                    f"in the {'fp16' if dev.type == 'cuda' else 'fp32'} model"}


# -----------------------------------------------------------------------------
# 4. CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="part2_bnb_nf4.py", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("bitsandbytes")
    g.add_argument("--mode", default="all",
                   help=f"{', '.join(MODES)}, a comma list, or all (default: all)")
    g.add_argument("--threshold", type=float, default=THRESHOLD_DEFAULT,
                   help="LLM.int8() outlier threshold: activations above it stay fp16 (default: 6.0)")
    g.add_argument("--compute-dtype", default="auto",
                   help="dtype of the 4-bit matmuls and of the unquantized tensors: auto (float16 on a GPU, "
                        "bfloat16 there for models that overflow float16 such as Gemma 3; float32 on a CPU), "
                        "float32, float16, bfloat16")
    g = p.add_argument_group("what to run")
    g.add_argument("--compare", action="store_true",
                   help="NF4 vs linear 4-bit: per-layer reconstruction error of bnb NF4/FP4 and Part 1's "
                        "NF4/int4 (block 64), the scratch-vs-bnb NF4 cross-check, a weight histogram")
    g.add_argument("--layer", default=None, help="--compare: the layer for the histogram (default: a middle one)")
    g.add_argument("--bench", action="store_true",
                   help="time fp32, fp16 (GPU), every --mode and Part 1's INT8 (fast path), int4 and NF4 side by "
                        "side; print ratios")
    g.add_argument("--save", default=None,
                   help="also save_pretrained each quantized model into this folder (one subfolder per mode)")
    ev.add_quantizer_args(p, g)
    return p


def main(*, mode: str = "all", threshold: float = 6.0, compute_dtype: str = "auto", compare: bool = False,
         layer: str | None = None, bench: bool = False, save: str | None = None, skip_kld: bool = False,
         run: ev.RunOptions = ev.RUN) -> list[results.Record] | results.Record:
    """Quantize with bitsandbytes, evaluate through evaluate.py, write results JSON; returns
    the records (each with .path), or the one record of --compare or --bench. The keywords are
    this script's own flags, run the shared ones (evaluate.RunOptions)."""
    args = ev.with_defaults(build_parser(), dict(locals()))
    modes = parse_modes(args.mode)                                       # fail before loading anything
    check_threshold(args.threshold)
    if args.compare and args.bench:
        raise ev.UserError("--compare and --bench are two runs: give one of them")
    if args.save is not None and (args.compare or args.bench):
        raise ev.UserError("--save saves quantized models: it goes with a plain run, not --compare or --bench")
    if args.out and len(modes) > 1 and not (args.compare or args.bench):
        raise ev.UserError(f"--out names one results file, but --mode {args.mode} makes {len(modes)}: "
                           f"give one mode, or use --results-dir")
    if args.dtype != "float32":
        raise ev.UserError("--dtype is the baseline's; bitsandbytes loads the model in its compute dtype: "
                           "use --compute-dtype")
    if args.threshold != THRESHOLD_DEFAULT and ("int8" not in modes or args.compare):
        raise ev.UserError("--threshold is LLM.int8()'s outlier threshold: it goes with --mode int8")
    if args.layer is not None and not args.compare:
        raise ev.UserError("--layer picks the histogram's layer of --compare: it goes with --compare")
    if args.bench and args.skip_latency:
        raise ev.UserError("--bench is a timing run: it takes no --skip-latency")
    with tempfile.TemporaryDirectory(prefix="qstudy-smoke-") as workdir:
        if args.smoke:
            ev.smoke_setup(args, workdir)
        if args.compare:                                                # weights only: no text needed
            if args.quiet:
                from transformers.utils import logging as hf_logging
                hf_logging.disable_progress_bar()
            ev.check_output_dir(args.results_dir, "--results-dir")
            if args.out:
                ev.check_output_file(args.out, "--out")
            check_layer(ev.skeleton(args.model), args.layer)
            return run_compare(args)
        dev = ev.resolve_device(args.device)
        compute_dtype = compute_dtype_for(dev, args.compute_dtype, ev.load_config(args.model).model_type)
        cfg, source = ev.prepare(args)
        progress = not args.quiet
        if args.save is not None:
            ev.check_output_dir(args.save, "--save")
            if ev.is_model_folder(args.save, args.model):
                raise ev.UserError(f"--save '{args.save}' is the model's own folder: give a new folder")
            ev.check_out_outside_save(args.out, args.save)
            for mode in modes:
                folder = Path(args.save) / method_identity(mode, args.threshold)["name"]
                ev.check_new_folder(folder, "--save", args.model)
        skel = ev.skeleton(args.model)
        check_4bit_shapes(skel, modes, dev)
        if args.bench:                                                  # it also times Part 1's 4-bit
            p1.check_quantizable(skel, "whole", 4, "nf4")
        check_backend(dev)
        if args.bench:
            return run_bench(args, cfg, source, modes, compute_dtype, progress)
        records = []
        n_params = ev.param_count(skel)                                     # the model's own count
        reference = None if args.skip_kld else ev.load_model(args.model, "float32", args.device,
                                                              args.device_map)[0]
        for mode in modes:
            print(f"== bitsandbytes {mode} ({compute_dtype} compute) on {dev.type}", flush=True)
            model, tokenizer = load_bnb(args.model, mode, args.device, compute_dtype, args.threshold,
                                        args.device_map)
            identity = method_identity(mode, args.threshold)
            name = identity["name"]
            settings = settings_of(mode, compute_dtype, args.threshold)
            out = Path(args.out) if args.out else \
                ev.run_path(args.results_dir, name, args.model, source, cfg, args.smoke, dev.type, settings)
            # Save before the first forward: on a CPU with AVX512-BF16, bitsandbytes 0.50
            # repacks 4-bit weights at the first forward and rounds their absmax to bfloat16;
            # a save after that no longer holds the loaded model. (evaluate() sizes the model
            # on disk before its first forward for the same reason.)
            if args.save:
                folder = Path(args.save) / name
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
            record = ev.evaluate(model, tokenizer, source, cfg, method=name, identity=identity,
                                 settings=settings,
                                 model_id=args.model, out_path=None, stand_in=args.stand_in,
                                 random_weights=args.random_weights, smoke=args.smoke, progress=progress,
                                 reference=reference, n_params=n_params)
            record["quantization"] = ev.memory_breakdown(model)           # after a forward: int8 scales exist
            record["method"]["settings"]["cpu_repacked_4bit"] = cpu_repacked(model)
            if args.save:
                record["saved_to"] = f"{Path(args.save).name}/{name}"
            record = results.write(record, out)
            print(ev.summary_line(record))
            print("  " + breakdown_line(record["quantization"]))
            print(f"wrote {out}")
            records.append(record)
            del model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return records


def cpu_repacked(model) -> bool:
    """True if bitsandbytes' CPU kernel repacked the 4-bit weights (absmax now bfloat16)."""
    return any(getattr(getattr(p, "quant_state", None), "packing_format_for_cpu", False)
               for p in model.parameters())


def breakdown_line(q: dict) -> str:
    fp = q["full_precision_detail"]
    return (f"bytes: quantized weights {q['quantized_weights'] / ev.MiB:.2f} MiB, quantization statistics "
            f"{q['scales_and_zero_points'] / ev.MiB:.2f} MiB, kept in full precision "
            f"{q['full_precision'] / ev.MiB:.2f} MiB ("
            + ", ".join(f"{k} {v / ev.MiB:.2f}" for k, v in fp.items() if v) + ")")


def run_compare(args) -> results.Record:
    check_backend(torch.device("cpu"))                                   # the round trips run on the CPU
    model, _ = ev.load_model(args.model, "float32", "cpu")
    result = compare_4bit(model, args.layer)
    settings = {"block_size": BLOCK, "kinds": list(KINDS_4BIT)}
    record = results.new_record(
        "compare", "nf4-vs-linear-4bit", settings,
        {**ev.describe_model(args.model, model), "stand_in": args.stand_in, "random_weights": args.random_weights},
        torch.device("cpu"), smoke=args.smoke, compare=result)
    out = Path(args.out) if args.out else results.result_path(
        args.results_dir, "nf4-vs-linear-4bit", args.model, [], settings | {"layer": args.layer}, args.smoke)
    record = results.write(record, out)
    mean = result["mean_rel_mse"]
    print(f"reconstruction error, mean over {len(result['layers'])} block linears, "
          f"relative to mean(w^2) (block {BLOCK}):")
    for k in KINDS_4BIT:
        print(f"  {k:<13} {mean[k]:.3e}   ({mean[k] / mean['bnb-nf4']:.2f}x bnb NF4)")
    h = result["histogram"]
    print(f"code entropy on {h['layer']} (bits of 4 used): " +
          ", ".join(f"{k} {v:.2f}" for k, v in h["code_entropy_bits"].items()))
    c = result["cross_check"]
    print(f"cross-check scratch NF4 vs bitsandbytes NF4: max relative difference {c['max_rel_diff']:.2e} "
          f"({'ok' if c['ok'] else 'MISMATCH'})")
    print(f"wrote {out}")
    return record


def run_bench(args, cfg, source, modes, compute_dtype, progress) -> dict:
    tokenizer = ev.load_tokenizer(args.model)
    ids = ev.tokenize(tokenizer, source.text, cfg.max_tokens or ev.TIMING_TEXT_TOKENS)
    result = bench(args.model, tokenizer, ids, cfg, modes, args.device, compute_dtype, args.threshold, progress)
    settings = {"modes": modes, "threshold": args.threshold, "compute_dtype": compute_dtype}
    return ev.save_side_by_side("bnb-bench", settings, {"id": args.model}, source, result, args,
                                ev.resolve_device(args.device))

if __name__ == "__main__":
    ev.run_cli(main, build_parser())
