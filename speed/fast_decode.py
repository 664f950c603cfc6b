#!/usr/bin/env python3
"""GPU speed without the overhead: the command line of the static-KV-cache, CUDA-graph decode
bench for GPT-2, Llama and Gemma 3, and of the CPU bench and the fused step's anatomy.

    python speed/fast_decode.py --model DIR --text-file FILE            # the bench (CUDA needed)
    python speed/fast_decode.py --methods fp16,scratch-int8-fast        # a subset
    python speed/fast_decode.py --device cpu --model DIR --text-file FILE   # the CPU bench, llama.cpp beside
    python speed/fast_decode.py --anatomy --model DIR --text-file FILE      # what bounds the fused step (CUDA)
    python speed/fast_decode.py --batch 1,4,16 --model DIR --text-file FILE # decode at a server's batch (CUDA)
    python speed/fast_decode.py --help

Why: at GPT-2's size, Hugging Face generate spends a decoded token on Python and kernel
launches, not on reading the weights (on an H100 those take under 0.1 ms), so fewer
weight bytes cannot show. The fast path removes the overhead:
  - a static KV cache, preallocated for prompt + new tokens, written in place;
  - each step (the prompt pass, one decode step, the 1x512 prefill) captured once as a
    CUDA graph and replayed: one launch per step, no Python between kernels; the decode
    step also takes the argmax and feeds it back on the device, so 128 tokens are 128
    replays and one copy back;
  - Part 1's int8 and 4-bit layers, and the calibrated storage (GPTQ, AWQ, round-to-nearest)
    run fused Triton kernels (a GEMV at decode that dequantizes in registers), set with
    part1.set_path(model, "fast") and calibrated.quantizer.set_path(model, "fast").
The fused step goes further: one decode step as five kernels a block (speed/fused_step.py),
Triton on CUDA and C++ on a CPU, where the per-token Python of the static path is most of
a step (on 2 cores: about 45 small ops a block; the fused step makes five calls).
--anatomy times that step beside chains of as many links doing none of its work (separate
kernels, and one persistent kernel with grid barriers), and profiles each kernel
(speed/anatomy.py): what a step of that many dependent links can take.
It computes what the model computes, in the same order per token: each block's modules are
called as they are (quantized or not), only attention reads the static cache. Greedy
tokens are checked against the same model's generate() in every run, each Part 1 layer
against dequantize-then-matmul, and each linear layer is timed alone at one token.

Assumptions: batch 1, and a GPT-2 (model_type gpt2: wte/wpe, blocks of ln_1, attn.c_attn,
attn.c_proj, ln_2, mlp, then ln_f and lm_head), a Llama (model_type llama: embed_tokens,
blocks of input_layernorm, self_attn.q/k/v/o_proj with rotary and grouped-query heads,
post_attention_layernorm, mlp, then norm and lm_head) or a Gemma 3 text model (model_type
gemma3_text: its scaled embedding, q/k norms, sliding-window layers and norms after attention
and MLP; static path only: the fused step is written for GPT-2's and Llama's blocks, and the
bench says so). A method whose layers cannot be captured (LLM.int8() has data-dependent
shapes) runs the same static-cache path without a graph, and the results say so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":                        # run as a script: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import evaluate as ev  # noqa: E402
from speed.anatomy import ANATOMY_METHODS, save_anatomy
from speed.anatomy import anatomy as step_anatomy
from speed.batch_bench import (
    BATCH_METHODS,
    DEFAULT_BATCH_METHODS,
    MAX_BATCH,
    batch_bench,
    batch_prompts,
    parse_batches,
)
from speed.cpu_bench import CPU_METHODS, CPU_PATH, cpu_bench
from speed.gpu_bench import DEFAULT_METHODS, FAST_PATH, HALF, METHODS, bench, parse_methods
from speed.readings import batch_table_text, cpu_targets_text, table_text
from speed.static_cache import check_architecture


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast_decode.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2",
                   help="Hub id or local folder of a GPT-2, Llama or Gemma 3 model (default: gpt2)")
    p.add_argument("--dataset", default="wikitext2", choices=list(ev.DATASETS),
                   help="text whose first tokens are the prompts (default: wikitext2)")
    p.add_argument("--text-file", default=None, help="local UTF-8 text instead of a Hub dataset")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda: the GPU bench (generate(), the fast path, the fused step, the peers); cpu: the CPU "
                        "bench (the static-cache path beside llama.cpp's GGUF files of the same model)")
    p.add_argument("--methods", default=None,
                   help=f"comma list; on cuda of {', '.join(METHODS)}, with one of fp16 or bf16 (the baseline: "
                        f"every method computes in its dtype); on cpu of {', '.join(CPU_METHODS)} (default: all of "
                        "the device's, but on cuda the calibrated storage's rtn-* rows, torchao's int4 and bf16; "
                        "bf16 in place of fp16 for a model that overflows float16, such as Gemma 3)")
    p.add_argument("--gguf-dir", default="gguf", help="CPU bench: folder for the GGUF files it makes (default: gguf)")
    ev.add_latency_args(p)
    p.add_argument("--anatomy", action="store_true",
                   help="cuda: instead of the bench, the fused step's anatomy: each method's step and the same step "
                        "with its weights in L2, beside chains of as many links doing none of the work (as "
                        "separate kernels and as one persistent kernel with grid barriers: the least measured for "
                        "that many links), each link profiled; methods of "
                        f"{', '.join(ANATOMY_METHODS)} (default: the first three)")
    p.add_argument("--batch", default=None,
                   help="cuda: instead of the bench, decode at these batch sizes (comma list with 1, up to "
                        f"{MAX_BATCH}; e.g. 1,4,16) on the static-cache path, every method and batch side by side; "
                        f"methods of {', '.join(BATCH_METHODS)} (default: {', '.join(DEFAULT_BATCH_METHODS)})")
    p.add_argument("--no-tune-tiles", action="store_true",
                   help="cuda: keep the tiles Triton's autotuner picks for the fused step's GEMVs and head (each "
                        "kernel timed alone) instead of timing the whole decode step per candidate tile")
    p.add_argument("--stand-in", default=None, help="which model this one stands in for, stored with the results")
    p.add_argument("--random-weights", action="store_true",
                   help="the weights are random (a stand-in for shapes and speed); stored as model.random_weights")
    p.add_argument("--results-dir", default="results", help="folder for the results JSON (default: results)")
    p.add_argument("--out", default=None,
                   help="exact results file (default: gpu-decode-bench__<model>__cuda__<hash>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="a tiny random GPT-2 made on the spot; numbers mean nothing")
    return p


def half_for(model_type: str, methods: list[str], explicit: bool) -> list[str]:
    """The GPU bench's methods for this architecture: a model whose activations overflow float16
    (Gemma 3: NaN logits) runs bf16 in place of fp16 by default, and refuses fp16 when asked."""
    from part2_bnb_nf4 import HALF_OVERFLOWS
    if model_type not in HALF_OVERFLOWS or "fp16" not in methods:
        return methods
    if explicit:
        raise ev.UserError(f"a {model_type} model overflows float16 (NaN logits): give bf16 in place of fp16 "
                           "in --methods")
    return ["bf16" if m == "fp16" else m for m in methods]


def main(*, model: str = "gpt2", dataset: str = "wikitext2", text_file: str | None = None, device: str = "cuda",
         methods: str | None = None, gguf_dir: str = "gguf", prefill_tokens: int = ev.DEFAULTS.prefill_tokens,
         prompt_tokens: int = ev.DEFAULTS.prompt_tokens, new_tokens: int = ev.DEFAULTS.new_tokens,
         repeats: int = ev.DEFAULTS.repeats, warmup: int = ev.DEFAULTS.warmup, anatomy: bool = False,
         batch: str | None = None, no_tune_tiles: bool = False, stand_in: str | None = None,
         random_weights: bool = False, results_dir: str = "results", out: str | None = None, quiet: bool = False,
         smoke: bool = False) -> dict:
    """The command line's flags as keywords (--help says what each does)."""
    args = ev.with_defaults(build_parser(), dict(locals()))
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        raise ev.UserError("the GPU decode benchmark needs CUDA, and no GPU was found (use a CUDA machine, "
                           "or --device cpu for the CPU bench)")
    if args.anatomy and cpu:
        raise ev.UserError("--anatomy is the GPU's fused step: it runs with --device cuda")
    if args.batch is not None and (cpu or args.anatomy):
        raise ev.UserError("--batch is the GPU's batched decode: it runs with --device cuda, without --anatomy")
    batches = parse_batches(args.batch) if args.batch is not None else None
    choices = CPU_METHODS if cpu else ANATOMY_METHODS if args.anatomy else BATCH_METHODS if batches else METHODS
    default = (ANATOMY_METHODS[:3] if args.anatomy else DEFAULT_BATCH_METHODS if batches
               else DEFAULT_METHODS if choices is METHODS else choices)
    methods = parse_methods(args.methods or ",".join(default), choices,
                            ("fp32",) if cpu else ("fp16",) if args.anatomy else tuple(HALF))
    ev.check_at_least(*ev.latency_minimums(args))
    ev.check_output_dir(args.results_dir, "--results-dir")
    if args.out:
        ev.check_output_file(args.out, "--out")
    if args.smoke:                       # the tiny model's context is 128: its own small lengths
        import tempfile
        args.model, args.text_file = ev.make_smoke_inputs(tempfile.mkdtemp(prefix="qstudy-smoke-"))
        vars(args).update({k: v for k, v in ev.SMOKE_SETTINGS.items() if k in vars(args)})
    ev.check_model_source(args.model)
    if cpu and any(m.startswith("gguf-") for m in methods):
        import bonus_gguf
        bonus_gguf.check_gguf_dir(args.gguf_dir, args.model)
    config = ev.load_config(args.model)
    check_architecture(config.model_type, f"'{args.model}'")
    if not cpu and not args.anatomy:
        methods = half_for(config.model_type, methods, explicit=args.methods is not None)
    ev.check_latency_fits(ev.EvalConfig(prefill_tokens=args.prefill_tokens, prompt_tokens=args.prompt_tokens,
                                        new_tokens=args.new_tokens), ev.model_context(config))
    source = ev.load_text(args.dataset, args.text_file)
    tokenizer = ev.load_tokenizer(args.model)
    ids = ev.tokenize(tokenizer, source.text, ev.TIMING_TEXT_TOKENS)
    if batches:
        batch_prompts(ids, max(batches), args.prompt_tokens)        # enough text for the prompts, before any load
        result = batch_bench(args.model, ids, methods, batches, args.prompt_tokens, args.new_tokens, args.repeats,
                             args.warmup, progress=not args.quiet)
        record = ev.save_timing_record("batch", "batch-decode-bench", {"methods": methods, "batches": batches},
                                       {"id": args.model}, source, result, args, torch.device("cuda"),
                                       ("batches", "prompt_tokens", "new_tokens", "repeats", "warmup"))
        print(batch_table_text(result))
        print(f"wrote {record.path}")
        return record
    if cpu:
        result = cpu_bench(args.model, tokenizer, ids, methods, args.prefill_tokens, args.prompt_tokens,
                           args.new_tokens, args.repeats, args.warmup, args.gguf_dir, progress=not args.quiet)
        record = ev.save_side_by_side("cpu-decode-bench", {"methods": methods, "static_path": CPU_PATH},
                                      {"id": args.model}, source, result, args, torch.device("cpu"))
        print(cpu_targets_text(result))
        return record
    if args.anatomy:
        return save_anatomy(step_anatomy(args.model, tokenizer, ids, methods, args.prompt_tokens, args.new_tokens,
                                    args.repeats, args.warmup, tune=not args.no_tune_tiles), methods, source, args)
    result = bench(args.model, tokenizer, ids, methods, args.prefill_tokens, args.prompt_tokens, args.new_tokens,
                   args.repeats, args.warmup, progress=not args.quiet, tune=not args.no_tune_tiles)
    record = ev.save_side_by_side("gpu-decode-bench", {"methods": methods, "fast_path": FAST_PATH},
                                  {"id": args.model}, source, result, args, torch.device("cuda"))
    print(table_text(result))
    return record


if __name__ == "__main__":
    ev.run_cli(main, build_parser())
