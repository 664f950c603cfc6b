"""The GPU bench: every method on generate() and on the fast path, round-robin on one GPU.

Each method is loaded, checked (greedy tokens against generate(), each Part 1 layer against
dequantize-then-matmul), and timed beside the others in one run, with the peers (torchao,
transformers' static cache under torch.compile) doing the same job.
"""
from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

import evaluate as ev
from speed import kernels
from speed.decoder import (
    TUNE_ROUNDS,
    FastDecoder,
    first_line,
    fused_step_logits,
    generate_tokens,
    leading_equal,
    logit_agreement,
    on_side_stream,
    teacher_logits,
    tune_tiles,
)
from speed.fused_step import FUSED_PATH, fused_architecture
from speed.readings import decode_floor_ms, hbm_bytes_per_s

NOT_CAPTURABLE = {"bnb-int8": "LLM.int8() splits outlier columns by value (data-dependent shapes): not capturable"}
FAST_PATH = "static KV cache, one CUDA graph per step (prompt pass, decode step, prefill), argmax on the device"
# The peers: the same job done by others' recipes, in the same round-robin run.
COMPILE_MODE = "max-autotune-no-cudagraphs"       # the mode of gpt-fast's decode step; the graph is ours
PEERS = {"torchao-int8wo": "torchao int8 weight-only (Int8WeightOnlyConfig) on every linear layer (GPT-2's Conv1D "
                           "made nn.Linear first), the static-cache decode step under torch.compile(mode="
                           f"'{COMPILE_MODE}'), replayed from one CUDA graph",
         "torchao-int4wo": "torchao int4 weight-only, groups of 64 (Int4WeightOnlyConfig, tinygemm's tile_packed_to_4d "
                           "layout, which computes in bfloat16: the model is loaded in bfloat16), every linear layer, "
                           f"the same compiled decode step (mode '{COMPILE_MODE}') replayed from one CUDA graph",
         "hf-static-compile": "{base}, transformers generate() with cache_implementation='static', which compiles "
                              "the forward (torch.compile, mode 'reduce-overhead': CUDA graphs)"}
# The storage GPTQ, AWQ and round-to-nearest share (calibrated/quantizer.py), on its GEMV: made by
# round-to-nearest, which needs no calibration; GPTQ's and AWQ's codes differ, not their bytes or
# the kernel that reads them (AWQ adds an input scale where it could not fold one).
CALIBRATED_STORAGE = {"rtn-w4-pc-fast": (4, 0), "rtn-w4-g64-fast": (4, 64)}
# the half-precision baselines: the one in --methods is the dtype every method computes in (Gemma 3
# overflows float16, so its bench runs bf16), and the baseline of every ratio
HALF = {"fp16": "float16", "bf16": "bfloat16"}
METHODS = ("fp32", *HALF, "bnb-int8", "bnb-nf4", "scratch-int8-naive", "scratch-int8-fast",
           "scratch-int4-fast", "scratch-nf4-fast", *CALIBRATED_STORAGE) + tuple(PEERS)
# --methods left out: the methods as before the calibrated storage and torchao's int4 peer were added
DEFAULT_METHODS = tuple(m for m in METHODS if m not in CALIBRATED_STORAGE and m not in ("torchao-int4wo", "bf16"))


LAYER_CALLS = 50      # back-to-back calls of one layer per timed graph replay
COPY_BYTES = 1 << 30  # the device-to-device copy that measures the practical bandwidth: far past L2
COPY_DEFINITION = (f"device-to-device copy of {COPY_BYTES >> 20} MiB, bytes moved (read + write) / time, CUDA "
                   "events, median of 20 after 3 warm-up copies; copy_floor_ms = weight bytes / this")


def copy_bandwidth(dev: torch.device, nbytes: int = COPY_BYTES, repeats: int = 20) -> dict:
    """The bandwidth a plain copy reaches on this GPU, in bytes/s: the practical ceiling of a step
    that only reads its weights once (spec sheets quote a peak no kernel reaches)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    rates = []
    for i in range(3 + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:
            rates.append(2 * nbytes / (start.elapsed_time(end) / 1e3))
    del src, dst
    torch.cuda.empty_cache()
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "n": repeats}


def block_layers(config) -> tuple[str, tuple[tuple[str, int], ...]]:
    """Block 0's path and its linear layers as (name, input width), for the architecture."""
    d = config.hidden_size
    if config.model_type == "gpt2":
        return "transformer.h.0", (("attn.c_attn", d), ("attn.c_proj", d), ("mlp.c_fc", d),
                                   ("mlp.c_proj", config.n_inner or 4 * d))
    heads = config.num_attention_heads * (getattr(config, "head_dim", None) or d // config.num_attention_heads)
    return "model.layers.0", (("self_attn.q_proj", d), ("self_attn.k_proj", d), ("self_attn.v_proj", d),
                              ("self_attn.o_proj", heads), ("mlp.gate_proj", d), ("mlp.up_proj", d),
                              ("mlp.down_proj", config.intermediate_size))


def timed_layers(model):
    """(name, module, input width) of block 0's linear layers, then of lm_head."""
    prefix, layers = block_layers(model.config)
    for name, width in layers:
        yield name, model.get_submodule(f"{prefix}.{name}"), width
    yield "lm_head", model.lm_head, model.config.hidden_size


def compute_dtype(model) -> torch.dtype:
    """The dtype activations run in: the final norm's (kept unquantized by every method)."""
    return (model.transformer.ln_f if model.config.model_type == "gpt2" else model.model.norm).weight.dtype




@torch.no_grad()
def layer_times(model, graphs: bool, repeats: int = 20, calls: int = LAYER_CALLS) -> dict:
    """Microseconds per call of each linear layer at decode shape (one token): `calls`
    calls captured as one CUDA graph, so no launch overhead (what a decode step's graph
    sees), timed with CUDA events over `repeats` replays; eager calls if graphs=False.
    -> {layer: summary of us per call}, plus 'graph'."""
    dtype = compute_dtype(model)
    out = {"graph": graphs}
    for name, mod, k in timed_layers(model):
        x = torch.randn(1, 1, k, dtype=dtype, device="cuda")

        def run(mod=mod, x=x):
            for _ in range(calls):
                mod(x)
        on_side_stream([run, run])
        call = run
        if graphs:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run()
            call = g.replay
        call()
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3 / calls)
        out[name] = ev.summarize(samples)
    return out


@torch.no_grad()
def kernel_error(model, rows: int = 1) -> float | None:
    """Worst relative error, over block 0's Part 1 and calibrated layers and lm_head, of the layer's output
    at decode shape against dequantize-then-matmul in fp32: the check that the fused
    kernels compute what Part 1's weights mean (the token check only compares a model
    with itself). None if the model has no Part 1 layers."""
    import part1_quantize_scratch as p1
    from calibrated.quantizer import QuantLinear
    dtype, worst = compute_dtype(model), None
    for _, mod, k in timed_layers(model):
        if not isinstance(mod, (p1.Int8Linear, p1.Linear4bit, QuantLinear)):
            continue
        x = torch.randn(rows, k, dtype=dtype, device=model.device)
        bias = None if mod.bias is None else mod.bias.float()
        xs = x.float() * mod.input_scale.float() if getattr(mod, "input_scale", None) is not None else x.float()
        ref = F.linear(xs, mod.dequantized_weight(torch.float32), bias)      # AWQ's kept input scale too
        err = ((mod(x).float() - ref).abs().max() / ref.abs().max()).item()
        worst = err if worst is None else max(worst, err)
    return worst


def load_method(name: str, model_id: str, device: str, half: str = "float16"):
    """One method's model, ready to run, its activations in `half` (float16 or bfloat16)."""
    import part1_quantize_scratch as p1
    if name == "fp32" or name in HALF:
        return ev.load_model(model_id, HALF.get(name, "float32"), device)[0]
    if name.startswith("bnb-"):
        import part2_bnb_nf4 as p2
        return p2.load_bnb(model_id, name[4:], device, half)[0]
    m = ev.load_model(model_id, half, device)[0]
    if name in CALIBRATED_STORAGE:
        from calibrated import methods, quantizer
        methods.quantize(m, "rtn", quantizer.Grid(*CALIBRATED_STORAGE[name]), None, methods.Options(), progress=False)
        quantizer.set_path(m, "fast")
        return m
    if name.startswith("scratch-int8"):
        p1.quantize_model(m, "whole", 8, "per_channel")
    else:
        p1.quantize_model(m, "whole", 4, name.split("-")[1])            # int4 or nf4
    p1.set_path(m, "fast" if name.endswith("-fast") else "naive")
    return m


def parse_methods(spec: str, choices: tuple = METHODS, bases: tuple = tuple(HALF)) -> list[str]:
    """The comma list as names, checked: known, and exactly one of the baselines `bases` among them."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in choices:
            raise ev.UserError(f"unknown method '{n}' (choose from {', '.join(choices)})")
    present = [b for b in bases if b in names]
    if len(present) != 1:
        raise ev.UserError(f"--methods must include {' or '.join(bases)}, the baseline of every ratio"
                           + (f", once: {' and '.join(present)} are both baselines" if present else ""))
    return names


def baseline_of(methods: list[str]) -> str:
    """The half-precision baseline in a checked method list (parse_methods): fp16 or bf16."""
    return next(m for m in methods if m in HALF)


def conv1d_to_linear(model) -> None:
    """GPT-2's Conv1D layers as nn.Linear (weight transposed, same numbers), in place: what
    torchao's quantize_() finds and quantizes."""
    from transformers.pytorch_utils import Conv1D
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D):
            lin = torch.nn.Linear(mod.weight.shape[0], mod.nf, device=mod.weight.device, dtype=mod.weight.dtype)
            lin.weight.data = mod.weight.data.t().contiguous()
            lin.bias.data = mod.bias.data
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, lin)




def peer(name: str, model_id: str, tokenizer, prompt: torch.Tensor, prefill_ids: torch.Tensor, prompt_tokens: int,
         new_tokens: int, prefill_tokens: int, base_tokens: torch.Tensor,
         base: str = "fp16") -> tuple[dict | None, dict]:
    """One peer: (its timed calls, its row), or (None, a row that says why it cannot run).
    base_tokens: the baseline's eager generate(); base: the baseline (fp16 or bf16), whose dtype it loads in."""
    row = {"recipe": PEERS[name].format(base=base), "why_not": None}
    try:
        m = ev.load_model(model_id, "bfloat16" if name == "torchao-int4wo" else HALF[base], "cuda")[0]
        if name.startswith("torchao-"):
            from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
            conv1d_to_linear(m)
            linears = {n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
            quantize_(m, Int8WeightOnlyConfig() if name == "torchao-int8wo" else
                      Int4WeightOnlyConfig(group_size=64, int4_packing_format="tile_packed_to_4d"))
            # torchao leaves a layer it cannot take (an in-width that groups do not divide) as it was
            row["quantized_linears"] = sum(type(mod.weight) is not torch.nn.Parameter
                                           for n, mod in m.named_modules() if n in linears)
            row["linears"] = len(linears)
            ref = generate_tokens(m, tokenizer, prompt, new_tokens)          # its own eager generate()
            fast = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, compiled=COMPILE_MODE)
            fast.capture()
            if not fast.graphs:
                raise RuntimeError(fast.why_no_graph)
            got = fast.generate(prompt).clone()
            calls = {"prefill": lambda: fast.prefill(prefill_ids), "decode": lambda: fast.generate(prompt)}
            row["torchao_version"] = __import__("torchao").__version__
        else:
            gen = ev.greedy_config(tokenizer, new_tokens)
            gen.cache_implementation = "static"
            mask = torch.ones_like(prompt)
            ref = base_tokens                                     # the baseline model's eager generate()
            got = m.generate(prompt, attention_mask=mask, generation_config=gen)[0, prompt.shape[1]:]
            calls = {"prefill": lambda: m(prefill_ids, use_cache=False),
                     "decode": lambda: m.generate(prompt, attention_mask=mask, generation_config=gen)}
        torch.cuda.synchronize()
        row["weights_bytes"] = ev.tensor_bytes(m)["bytes"]
        row["leading_tokens_equal"] = leading_equal(got, ref)
        return calls, row
    except Exception as e:  # a peer that cannot run here is a row that says why, not a crash
        row["why_not"] = first_line(e)
        import traceback
        traceback.print_exc(limit=-6)
        print(f"  {name}: cannot run ({row['why_not']})", file=sys.stderr, flush=True)
        return None, row


@torch.no_grad()
def bench(model_id: str, tokenizer, ids: torch.Tensor, methods: list[str], prefill_tokens: int,
          prompt_tokens: int, new_tokens: int, repeats: int, warmup: int, progress: bool = True,
          tune: bool = True) -> dict:
    dev = torch.device("cuda")
    base = baseline_of(methods)                 # fp16 or bf16: every method computes in its dtype
    half, vs_base = HALF[base], f"vs_{base}_fused"
    prefill_ids, prompt = ev.timing_inputs(ids, prefill_tokens, prompt_tokens, dev)
    bandwidth = hbm_bytes_per_s(torch.cuda.get_device_name())
    copy = copy_bandwidth(dev)                                  # measured in this run, before any model
    timed, rows, refs = {}, {}, {}
    fp32 = {}                             # the unquantized model, loaded once for the fused step's logits

    def fp32_logits(tokens: torch.Tensor) -> torch.Tensor:
        if not fp32:
            fp32["model"] = ev.load_model(model_id, "float32", "cuda")[0]
        return teacher_logits(fp32["model"], prompt, tokens)

    for name in [m for m in methods if m not in PEERS]:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        m = load_method(name, model_id, "cuda", half)
        ev.check_timing_lengths(m, prefill_tokens, prompt_tokens, new_tokens, repeats)
        m(prompt)                                          # LLM.int8() sets its row scales lazily
        weights = ev.tensor_bytes(m)
        uncapturable = NOT_CAPTURABLE.get(name)
        fused, why_not_fused = None, uncapturable or fused_architecture(m)   # built first: it re-lays out weights
        if why_not_fused is None:
            fused = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, fused=True)
        ref = refs[name] = generate_tokens(m, tokenizer, prompt, new_tokens)
        fast = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, graphs=uncapturable is None,
                           no_graph_reason=uncapturable)
        fast.capture()
        got = fast.generate(prompt).clone()
        same_fused, tiles, l2_step = None, None, None
        if fused is not None:
            if tune and fused.graphs:
                tiles = tune_tiles(fused, prompt)
            fused.capture()
            if not fused.graphs:
                why_not_fused, fused = fused.why_no_graph, None
            else:
                tokens, logits = fused_step_logits(fused, prompt)      # its greedy run, each step's logits read
                same_fused = leading_equal(tokens, ref)
                if fused.fused.kernels_per_step() is not None:          # every layer fused: the diagnostic too
                    l2_step = fused.weights_from_l2()
        torch.cuda.synchronize()
        same = leading_equal(got, ref)
        rows[name] = {"weights_mib": weights["mib"], "weights_bytes": weights["bytes"],
                      "weight_dtype_bytes": weights["by_dtype_bytes"],
                      "floor_ms": decode_floor_ms(weights["bytes"], bandwidth),
                      "copy_floor_ms": decode_floor_ms(weights["bytes"], copy["median"]),
                      "cuda_graph": fast.graphs, "why_no_graph": fast.why_no_graph,
                      "tokens_equal_generate": same == new_tokens, "leading_tokens_equal": same,
                      "fused_leading_tokens_equal": same_fused, "why_not_fused": why_not_fused,
                      "fused_layers": None if fused is None else len(fused.fused.fused_layers),
                      "module_layers": None if fused is None else fused.fused.module_layers,
                      "fused_kernels_per_step": None if fused is None else fused.fused.kernels_per_step(),
                      "fused_tiles": tiles,
                      "peak_bytes": torch.cuda.max_memory_allocated() - before}
        if fused is not None:             # its logits step by step: against its own modules and against fp32
            rows[name]["fused_logits"] = {
                "steps": f"the {new_tokens - 1} decode steps of its own greedy run; each reference reads the "
                         "same tokens (teacher forcing)",
                "vs_own_modules": logit_agreement(logits, teacher_logits(m, prompt, tokens)),
                "vs_fp32": logit_agreement(logits, fp32_logits(tokens))}
        layers = layer_times(m, graphs=uncapturable is None, repeats=repeats * 2)
        rows[name]["kernel_max_rel_err"] = kernel_error(m)
        rows[name]["layers_us"] = layers
        block = [k for k, _ in block_layers(m.config)[1]]
        rows[name]["linear_us_per_token"] = (m.config.num_hidden_layers * sum(layers[k]["median"] for k in block)
                                             + layers["lm_head"]["median"])
        timed[name] = ev.hf_calls(m, tokenizer, prefill_ids, prompt, new_tokens)
        timed[f"{name}·fast"] = {"prefill": lambda f=fast: f.prefill(prefill_ids),
                                 "decode": lambda f=fast: f.generate(prompt)}
        if fused is not None:
            timed[f"{name}·fused"] = {"prefill": lambda f=fused: f.prefill(prefill_ids),
                                      "decode": lambda f=fused: f.generate(prompt)}
        if l2_step is not None:
            timed[f"{name}·fused-l2"] = {"prefill": lambda f=fused: f.prefill(prefill_ids),
                                         "decode": lambda f=fused, s=l2_step: f.generate(prompt, decode=s)}
        print(f"  {name}: {weights['mib']:.1f} MiB, graph {'yes' if fast.graphs else 'no'}, "
              f"fast tokens = generate tokens: {same}/{new_tokens}, fused: "
              + (f"{same_fused}/{new_tokens}, logits vs fp32 KLD mean "
                 f"{rows[name]['fused_logits']['vs_fp32']['kld_mean']:.2e}" if fused is not None
                 else f"no ({why_not_fused})"),
              file=sys.stderr, flush=True)
    fp32.clear()
    torch.cuda.empty_cache()
    peers = {}
    for name in [m for m in methods if m in PEERS]:
        calls, peers[name] = peer(name, model_id, tokenizer, prompt, prefill_ids, prompt_tokens, new_tokens,
                                  prefill_tokens, refs[base], base)
        if calls is not None:
            timed[f"{name}·peer"] = calls
            print(f"  {name}: tokens = its reference: {peers[name]['leading_tokens_equal']}/{new_tokens}",
                  file=sys.stderr, flush=True)
    result = ev.side_by_side(timed, dev, new_tokens, repeats, warmup, base, progress)
    rt = result["table"]
    fb = rt[f"{base}·fast"]
    fused_base = rt[f"{base}·fused"]["decode_ms_per_token"]["median"] if f"{base}·fused" in rt else None

    def path_row(entry: dict, floor: float | None, copy_floor: float | None = None) -> dict:
        d = entry["decode_ms_per_token"]["median"]
        return {"prefill_ms": entry["prefill_ms"], "decode_ms_per_token": entry["decode_ms_per_token"],
                vs_base: None if fused_base is None else d / fused_base,
                "x_floor": None if floor is None else d / floor,
                "x_copy_floor": None if copy_floor is None else d / copy_floor}

    table = {}
    for name in rows:
        hf, fa = rt[name], rt[f"{name}·fast"]
        floor, copy_floor = rows[name]["floor_ms"], rows[name]["copy_floor_ms"]
        table[name] = {**{k: hf[k] for k in ("prefill_ms", "decode_ms_per_token", "prefill_ratio", "decode_ratio")},
                       **rows[name],
                       "fast_path": {**path_row(fa, floor, copy_floor),
                                     "prefill_ratio": fa["prefill_ms"]["median"] / fb["prefill_ms"]["median"],
                                     "decode_ratio": fa["decode_ms_per_token"]["median"] /
                                     fb["decode_ms_per_token"]["median"],
                                     "speedup_over_generate": hf["decode_ms_per_token"]["median"] /
                                     fa["decode_ms_per_token"]["median"]},
                       "fused_path": (path_row(rt[f"{name}·fused"], floor, copy_floor)
                                      if f"{name}·fused" in rt else None),
                       **({"fused_l2_path": {**path_row(rt[f"{name}·fused-l2"], None), "weight_bytes_share":
                                             1 - rt[f"{name}·fused-l2"]["decode_ms_per_token"]["median"] /
                                             rt[f"{name}·fused"]["decode_ms_per_token"]["median"]}}
                          if f"{name}·fused-l2" in rt else {}),
                       "layer_ratio": {k: rows[name]["layers_us"][k]["median"] / rows[base]["layers_us"][k]["median"]
                                       for k in rows[name]["layers_us"] if k != "graph"}}
    for name, row in peers.items():
        if row["why_not"] is None:
            row.update(path_row(rt[f"{name}·peer"], decode_floor_ms(row["weights_bytes"], bandwidth),
                                decode_floor_ms(row["weights_bytes"], copy["median"])))
    return {"table": table, "peers": peers, "baseline": base, "compute_dtype": half, "repeats": repeats,
            "warmup": warmup, "order": result["order"], "prefill_tokens": prefill_tokens,
            "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "decode_definition": ev.DECODE_DEFINITION,
            "fast_path": FAST_PATH, "fused_path": FUSED_PATH, "fused_pdl": kernels.pdl_on(dev),
            "fused_head_programs_per_sm": kernels.HEAD_PROGRAMS_PER_SM,
            "fused_l2_definition": (
                f"fused_l2_path: the fused step with every weight read from its first {kernels.L2_ROWS} rows, which "
                "stay in L2 (a diagnostic: its tokens mean nothing): the step's time without its HBM weight bytes; "
                "weight_bytes_share = 1 - its decode time / the fused step's, the part of the step the weights' "
                "bytes take, so the most a smaller weight format could save"),
            "fused_tiles_definition": (
                "each weight-reading kernel's tile (BN rows x BK columns / warps), chosen by tune_tiles: the whole "
                f"decode step timed per candidate tile, {TUNE_ROUNDS} round-robin rounds, median ms per step"
                if tune else "Triton's autotuner: each kernel timed alone (--no-tune-tiles)"),
            "fast_decode_definition":
                "fast path wall time for the prompt pass + new_tokens-1 decode steps / new tokens",
            "hbm_bytes_per_s": bandwidth, "copy_bytes_per_s": copy, "copy_definition": COPY_DEFINITION,
            "layer_calls_per_replay": LAYER_CALLS,
            "layers_definition": "us per call of block 0's linear layers and lm_head at one token, "
                                 f"{LAYER_CALLS} calls per CUDA graph replay (eager where the method has no graph), "
                                 "median of 2 x repeats replays; linear_us_per_token = the number of blocks x the "
                                 "block's layers + lm_head",
            "note": f"ratios: generate() against {base} generate(); fast path against the {base} fast path; "
                    f"{vs_base}: decode against {base} on the fused path; peers' tokens against their own "
                    f"eager generate() (torchao) or {base}'s (transformers' static cache); "
                    f"every method computes in {half}; "
                    "peak = CUDA memory allocated above what was held before loading the method "
                    "(its weights, KV cache, graphs, activations)"}
