"""Decode at the batch a server would use: the static-cache path at batch 1, 4, 16, round-robin on one GPU.

At batch 1 a decode step reads every weight once for one token, so fewer weight bytes can pay;
at batch B it reads them once for B tokens, and the step turns from reading weights into
multiplying them. This bench times one decode step of each method at each batch, side by side
in one run, to show where the quantized advantage ends. Every method runs the static-cache path
(speed/static_cache.py) captured as a CUDA graph: fp16 through cuBLAS; Part 1's INT8 and 4-bit
through their Triton kernels (a GEMV per row up to kernels.GEMV_ROWS rows, then tiles that read
each weight tile once for all rows). The fused step is batch 1 only and is not timed here.
"""
from __future__ import annotations

import sys

import torch

import evaluate as ev
from speed import kernels
from speed.decoder import FastDecoder, leading_equal, time_steps
from speed.gpu_bench import HALF, baseline_of, load_method
from speed.readings import decode_floor_ms, hbm_bytes_per_s

BATCH_METHODS = ("fp16", "bf16", "scratch-int8-fast", "scratch-int4-fast", "scratch-nf4-fast")
DEFAULT_BATCH_METHODS = ("fp16", "scratch-int8-fast", "scratch-int4-fast")
DEFAULT_BATCHES = (1, 4, 16)
MAX_BATCH = kernels.MM4_ROWS          # Part 1's 4-bit kernels take at most this many rows
BATCH_DEFINITION = ("ms per decode step of the static-cache path (one CUDA graph replay) for B sequences at once, "
                    "after their prompt pass (untimed): new_tokens - 1 steps timed with CUDA events per repeat, "
                    "median of the repeats; tokens_per_s = B / that time; every (method, batch) timed in turn")


def parse_batches(spec: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16]: whole numbers from 1 to MAX_BATCH, each once, with 1 among them."""
    try:
        batches = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ev.UserError(f"--batch takes whole numbers separated by commas, like 1,4,16 (got '{spec}')") from None
    if not batches or any(b < 1 or b > MAX_BATCH for b in batches) or len(set(batches)) != len(batches):
        raise ev.UserError(f"--batch takes distinct sizes from 1 to {MAX_BATCH} (got '{spec}')")
    if 1 not in batches:
        raise ev.UserError("--batch must include 1: every batch is compared with batch 1's step")
    return sorted(batches)


def batch_prompts(ids: torch.Tensor, batch: int, prompt_tokens: int) -> torch.Tensor:
    """batch prompts of prompt_tokens each, consecutive slices of the text's tokens ids (1, T): (batch, P)."""
    flat = ids.reshape(-1)
    if flat.numel() < batch * prompt_tokens:
        raise ev.UserError(f"the text has {flat.numel()} tokens, fewer than {batch} prompts of {prompt_tokens}")
    return flat[:batch * prompt_tokens].reshape(batch, prompt_tokens)


@torch.no_grad()
def batch_bench(model_id: str, ids: torch.Tensor, methods: list[str], batches: list[int], prompt_tokens: int,
                new_tokens: int, repeats: int, warmup: int, progress: bool = True) -> dict:
    """Every method at every batch on the static-cache path, captured, timed round-robin. Each row of a
    batch is checked against the same prompt decoded alone (batch 1): its leading equal tokens."""
    dev = torch.device("cuda")
    base = baseline_of(methods)
    half = HALF[base]
    bandwidth = hbm_bytes_per_s(torch.cuda.get_device_name())
    prompts = batch_prompts(ids, max(batches), prompt_tokens).to(dev)            # (max B, P)
    entries, rows = {}, {}
    for name in methods:
        m = load_method(name, model_id, "cuda", half)
        weights = ev.tensor_bytes(m)
        decoders = {b: FastDecoder(m, prompt_tokens, new_tokens, batch=b) for b in batches}
        for dec in decoders.values():
            dec.capture()
        alone = [decoders[1].generate(prompts[i]).clone() for i in range(max(batches))]   # each prompt alone
        rows[name] = {"weights_mib": weights["mib"], "weights_bytes": weights["bytes"],
                      "floor_ms": decode_floor_ms(weights["bytes"], bandwidth), "batches": {}}
        for b, dec in decoders.items():
            made = dec.generate(prompts[:b]).clone().reshape(new_tokens, b)            # (n, B)
            equal = [leading_equal(made[:, i], alone[i]) for i in range(b)]
            rows[name]["batches"][str(b)] = {"cuda_graph": dec.graphs, "why_no_graph": dec.why_no_graph,
                                             "rows_leading_tokens_equal": equal}
            entries[f"{name}@{b}"] = (dec.start, dec.programs["decode"])
        if progress:
            print(f"  {name}: {weights['mib']:.1f} MiB, batches {', '.join(map(str, batches))} captured",
                  file=sys.stderr, flush=True)
    times = time_steps(entries, new_tokens - 1, repeats, warmup)
    for name, row in rows.items():
        for b in batches:
            t = times[f"{name}@{b}"]
            cell = row["batches"][str(b)]
            cell["decode_ms_per_step"] = t
            cell["tokens_per_s"] = b / (t["median"] / 1e3)
            cell[f"vs_{base}"] = t["median"] / times[f"{base}@{b}"]["median"]          # the same batch
            cell["vs_batch_1"] = t["median"] / times[f"{name}@1"]["median"]            # the same method
    return {"table": rows, "baseline": base, "compute_dtype": half, "batches": batches, "repeats": repeats,
            "warmup": warmup, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "order": "round-robin: each repeat times " + ", ".join(entries) + " in turn",
            "decode_definition": BATCH_DEFINITION, "hbm_bytes_per_s": bandwidth,
            "note": f"vs_{base}: against {base} at the same batch; vs_batch_1: against the same method at batch 1; "
                    "rows_leading_tokens_equal: per sequence, its leading greedy tokens equal to the same prompt "
                    "decoded alone (other kernels at other batch sizes round differently; reported, not relied on)"}
