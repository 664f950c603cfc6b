"""What the speed records say: the tables, ratios and bounds that every reader renders.

Pure functions of results records (plain dicts): the terminal tables that the benches print,
RESULTS.md (scripts/results_table.py), the figures (plot_results.py) and the report all take
their rows from here. This module imports no torch and no bench, so a reader rebuilds a
figure from JSON without the GPU stack.
"""
from __future__ import annotations

# Peak memory bandwidth from NVIDIA's spec sheets, matched against the device name (first
# match wins): the floor of a decode step is weight bytes / this. Unknown GPUs get no floor.
HBM_PEAK_BYTES_PER_S = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))


def hbm_bytes_per_s(device_name: str) -> float | None:
    return next((bw for key, bw in HBM_PEAK_BYTES_PER_S if key in device_name), None)


def bench_bandwidth(record: dict) -> float | None:
    """The peak bandwidth (bytes/s) of the GPU that a bench record ran on: the table above,
    matched against the recorded device name; else what the bench recorded. (Benches made
    before the table assumed an H100's 3.35 TB/s whatever the GPU.)"""
    name = (record.get("environment") or {}).get("device_name") or ""
    bw = hbm_bytes_per_s(name) or record["bench"].get("hbm_bytes_per_s")
    return float(bw) if bw else None


# The speed benches' rows in words (their names are the benches' own, not the evaluation runs'): the
# report's table of methods lists them beside the evaluated methods.
BENCH_METHOD_WORDS = {
    "scratch-int8-naive": "Part 1's INT8 (per channel) dequantizing each whole weight matrix before its matmul",
    "scratch-int8-fast": "Part 1's INT8 (per channel) on its Triton GEMV, which reads int8 and dequantizes in "
                         "registers",
    "scratch-int4-fast": "Part 1's linear int4 (absmax per 64) on its Triton GEMV",
    "scratch-nf4-fast": "Part 1's NF4 (absmax per 64) on its Triton GEMV",
    "rtn-w4-pc-fast": "GPTQ's and AWQ's storage (4-bit, a scale and zero point per output channel), made by "
                      "round-to-nearest, on its Triton GEMV",
    "rtn-w4-g64-fast": "the same storage with a scale and zero point per 64 inputs of a row",
    "torchao-int8wo": "a peer: torchao's int8 weight-only, the decode step under torch.compile",
    "torchao-int4wo": "a peer: torchao's int4 weight-only (groups of 64, bfloat16), under torch.compile",
    "hf-static-compile": "a peer: transformers' generate() with its static cache, compiled",
}


# -----------------------------------------------------------------------------
# 4. The benchmark: every method, generate() and the fast path, round-robin

def decode_floor_ms(weight_bytes: int, bytes_per_s: float | None) -> float | None:
    return None if bytes_per_s is None else weight_bytes / bytes_per_s * 1e3


def cpu_targets_text(bench: dict) -> str:
    """Part 1 INT8's decode time against llama.cpp Q8_0's and fp32's, same run, from a CPU
    bench's int8_targets (the table is printed by evaluate.save_side_by_side; RESULTS.md uses
    this line too). Records made before the CPU's fused step have no vs_fp32_static: there
    INT8 and fp32 were both on the static path."""
    t = bench.get("int8_targets") or {}
    fused = "vs_fp32_static" in t
    names = {"vs_llama_cpp_q8_0": "llama.cpp Q8_0's", "vs_fp32": "fp32's (fused step)" if fused else "fp32's",
             "vs_fp32_static": "fp32's (static path)"}
    return (f"Part 1 INT8 on the {'fused step' if fused else 'static path'} decodes a token in "
            + ", ".join(f"{v:.2f}x {names[k]}" for k, v in t.items())
            + f" time, {bench['threads']} threads") if t else ""
CHAIN_DEFINITIONS = {
    "empty": "links that only wait for the link before (PDL as in the fused step): the launch chain alone",
    "vector": "links that wait, then each program reads the whole vector (the hidden size) that the link before "
              "wrote and writes its share of the next, as a GEMV's programs read their input: the least measured "
              "for this many separate kernels that each read the whole vector, whatever their weights",
    "vector-no-pdl": "the vector links launched without PDL: what PDL saves the chain",
    "grid-barrier": "the vector links as one persistent kernel, one program per SM, a simple software grid "
                    "barrier between links in place of a kernel boundary (one counter: each program adds on "
                    "arrival, then polls with acquire loads): what a decode step written as one kernel with this "
                    "barrier would pay for as many dependencies",
}
BOUND_CHAINS = ("vector", "grid-barrier")    # chains that do a link's least work: the faster is taken as the bound


def bound_chain(chains: dict) -> str:
    """Of the chains that do each link's least work (BOUND_CHAINS: separate kernels, or one
    persistent kernel with grid barriers), the one measured fastest: the least measured for
    that many links, taken as the bound of any step of as many. Records from before the
    grid-barrier chain have only 'vector'."""
    return min((c for c in BOUND_CHAINS if c in chains), key=lambda c: chain_ms(chains, c))


def chain_ms(chains: dict, chain: str | None = None) -> float:
    """A chain's ms per step (median), from an anatomy's chains; None: the bound chain (bound_chain)."""
    return chains[chain or bound_chain(chains)]["step_ms"]["median"]


def link_us(result: dict, chain: str | None = None) -> float:
    """A chain's µs per link in an anatomy result (its ms per step over the step's links); None: the bound chain."""
    return chain_ms(result["chains"], chain) * 1000 / result["links"]


def link_groups(links: list[dict]) -> dict:
    """The links by what they do, every block's alike ('3.attn.c_attn' is 'attn.c_attn'):
    {what: {"links": how many, "adds_us": the us they add to a step, together}}, in step order."""
    import re
    out = {}
    for link in links:
        g = out.setdefault(re.sub(r"^\d+\.", "", link["role"]), {"links": 0, "adds_us": 0.0})
        g["links"] += 1
        g["adds_us"] += link["adds_us"]
    return out


def block_links(links: list[dict]) -> tuple[list[dict], list[dict]]:
    """link_groups split by position: a block's five kinds in launch order (GPT-2's and Llama's
    names differ), and the rest of a step (the embedding before them, the head and the token
    pick after)."""
    groups = list(link_groups(links).values())
    return groups[1:6], groups[:1] + groups[6:]


def lowest_ratio(chain_ms: float, floor_ms: float, fp16_floor_ms: float) -> float:
    """The lowest decode-time ratio to fp16 that any step of a chain taking chain_ms could
    reach, for weights whose bytes take floor_ms at peak bandwidth (fp16's: fp16_floor_ms), if
    each hid its weight bytes behind the chain as well as the other: a step takes at least
    the longer of the two, and fp16 need take no more. Never below floor / fp16 floor; 1 once
    the chain outlasts fp16's bytes."""
    return max(chain_ms, floor_ms) / max(chain_ms, fp16_floor_ms)


def most_links(target: float, chain_us_per_link: float, floor_ms: float, fp16_floor_ms: float) -> int | None:
    """The most links a step could have for lowest_ratio to reach target, each link taking
    chain_us_per_link; None where the weights' bytes alone keep the ratio above target."""
    if floor_ms > target * fp16_floor_ms:
        return None
    return int(target * fp16_floor_ms * 1000 / chain_us_per_link)


WHOLE_VECTOR_KERNELS = ("_fused_gemv", "_argmax_head")   # links whose every program reads the whole vector


def mixed_chain_ms(result: dict, name: str = "fp16") -> float | None:
    """A tighter floor than the vector chain for name's step: its links whose programs read the
    whole vector (the GEMVs, the head) at the vector chain's time per link, the others
    (attention, the embedding, the token pick) at the empty chain's. None without a profile."""
    links = result["steps"][name].get("links")
    if not links:
        return None
    whole = sum(link["kernel"] in WHOLE_VECTOR_KERNELS for link in links)
    return (whole * link_us(result, "vector") + (len(links) - whole) * link_us(result, "empty")) / 1000


TARGET_RATIO = 0.9           # issue 18's target for INT8 and 4-bit against fp16 on the fused step


def anatomy_rows(result: dict) -> list[dict]:
    """The anatomy's rows, for every renderer (terminal, RESULTS.md, the report): each method's
    step, then each chain. A row: name, ms, vs_fp16, and for a method l2_ms, floor_ms,
    lowest_ratio, most_links (for TARGET_RATIO, most_links), tokens."""
    steps, chains = result["steps"], result["chains"]
    base = steps[result["baseline"]]
    per_link = link_us(result)
    rows = []
    for name, r in steps.items():
        floors = (r["floor_ms"], base["floor_ms"])
        rows.append({"name": name, "ms": r["step_ms"]["median"], "vs_fp16": r["vs_baseline"],
                     "l2_ms": r["l2_step_ms"]["median"], "floor_ms": r["floor_ms"], "lowest_ratio": r["lowest_ratio"],
                     "most_links": None if None in floors else most_links(TARGET_RATIO, per_link, *floors),
                     "tokens": r["fused_leading_tokens_equal"]})
    for c, r in chains.items():
        rows.append({"name": f"chain: {c}", "ms": r["step_ms"]["median"],
                     "vs_fp16": r["step_ms"]["median"] / base["step_ms"]["median"]})
    return rows


def anatomy_text(result: dict) -> str:
    """The anatomy for the terminal: the steps and chains, then the time each kind of link adds."""
    n = result["links"]
    lines = [f"{'step of ' + str(n) + ' links':<24} {'ms/step':>8} {'vs fp16':>7} {'weights in L2':>13} "
             f"{'bytes at peak':>13} {'lowest ratio':>12} {'links for ' + str(TARGET_RATIO):>13} {'tokens':>7}"]
    for r in anatomy_rows(result):
        line = f"{r['name']:<24} {r['ms']:>8.4f} {r['vs_fp16']:>7.2f}"
        if "l2_ms" in r:
            line += (f" {r['l2_ms']:>13.4f} {or_dash(r['floor_ms'], '.4f'):>13} {or_dash(r['lowest_ratio'], '.2f'):>12}"
                     f" {or_dash(r['most_links'], 'd'):>13} {r['tokens']:>3}/{result['new_tokens']}")
        lines.append(line)
    measured = " and ".join(c for c in BOUND_CHAINS if c in result["chains"])
    lines.append(f"ms per decode step, median of {result['repeats']} round-robin repeats; bytes at peak = weight bytes "
                 f"/ spec peak bandwidth; lowest ratio = max(chain, bytes) / max(chain, fp16's bytes), chain = the "
                 f"{bound_chain(result['chains'])} chain (the faster of {measured}); links for "
                 f"{TARGET_RATIO} = the most links a step could have for that ratio (that chain's time per link)")
    profiled = {name: link_groups(r["links"]) for name, r in result["steps"].items() if "links" in r}
    if profiled:
        kinds = next(iter(profiled.values()))
        lines += ["", f"{'us a step, by link':<24} {'links':>5} " + " ".join(f"{name[:18]:>18}" for name in profiled)]
        for kind, g in kinds.items():
            lines.append(f"{kind:<24} {g['links']:>5} " + " ".join(
                f"{p[kind]['adds_us'] if kind in p else float('nan'):>18.1f}" for p in profiled.values()))
        lines.append(f"{'all links':<24} {n:>5} " + " ".join(
            f"{sum(g['adds_us'] for g in p.values()):>18.1f}" for p in profiled.values()))
    for name, r in result["steps"].items():
        if "why_not" in r:
            lines.append(f"{name}: no profile ({r['why_not']})")
    return "\n".join(lines)


def table_text(result: dict) -> str:
    lines = [f"{'method':<20} {'MiB':>7} {'graph':>5} | {'generate: prefill':>17} {'decode':>9} {'ratio':>6} |"
             f" {'fast: prefill':>13} {'ratio':>6} {'decode':>8} {'ratio':>6} {'floor':>7} {'x floor':>8}"
             f" {'peak MiB':>9} {'tokens':>7}"]
    for name, r in result["table"].items():
        f = r["fast_path"]
        lines.append(f"{name:<20} {r['weights_mib']:>7.1f} {'yes' if r['cuda_graph'] else 'no':>5} | "
                     f"{r['prefill_ms']['median']:>14.2f} ms {r['decode_ms_per_token']['median']:>9.3f} "
                     f"{r['decode_ratio']:>6.2f} | {f['prefill_ms']['median']:>10.3f} ms {f['prefill_ratio']:>6.2f} "
                     f"{f['decode_ms_per_token']['median']:>8.3f} {f['decode_ratio']:>6.2f} "
                     f"{or_dash(r['floor_ms'], '.4f'):>7} "
                     f"{or_dash(f['x_floor'], '.1f'):>8} {r['peak_bytes'] / 2**20:>9.1f} "
                     f"{r['leading_tokens_equal']:>3}/{result['new_tokens']}")
    lines.append(f"decode in ms per token (median of {result['repeats']} round-robin repeats); ratios against fp16 "
                 "on the same path; floor = weight bytes / "
                 + (f"{result['hbm_bytes_per_s'] / 1e12:.2f} TB/s (spec peak)" if result.get("hbm_bytes_per_s")
                    else "peak bandwidth (unknown for this GPU: no floor)") + "; tokens = leading "
                 "greedy tokens of the fast path equal to generate()'s")
    lines += ["", fused_table_text(result)]
    names = [k for k in next(iter(result["table"].values()))["layers_us"] if k != "graph"]
    lines += ["", f"{'us per call, 1 token':<20} " + " ".join(f"{k:>16}" for k in names)
              + f" {'linears/token':>14}"]
    for name, r in result["table"].items():
        lines.append(f"{name:<20} " + " ".join(f"{r['layers_us'][k]['median']:>8.2f} ({r['layer_ratio'][k]:>4.2f})"
                                               for k in names) + f" {r['linear_us_per_token']:>11.0f} us"
                     + ("" if r["kernel_max_rel_err"] is None else f"  err {r['kernel_max_rel_err']:.1e}")
                     + ("" if r["layers_us"]["graph"] else "  (eager)"))
    lines.append(f"each layer: {result['layer_calls_per_replay']} calls in one CUDA graph, median; (ratio to fp16); "
                 "linears/token = blocks x the block's layers + lm_head; err = worst relative error of a Part 1 "
                 "layer against dequantize-then-matmul in fp32")
    return "\n".join(lines)


def fused_rows(result: dict) -> list[dict]:
    """The fused-step table's rows, for every renderer (terminal, RESULTS.md, the report): per
    method its fast path, its fused step and, where measured, the fused step with its weights
    in L2 (path 'l2', with weight_bytes_share), then the peers. Each row: method, path ('fast',
    'fused', 'l2' or 'peer'), ms (median ms/token, or None with why_not), vs_fp16_fused,
    x_floor, tokens (leading greedy tokens equal to the reference), kernels (a fused row's
    kernels a step, or None). [] for a bench made before the fused step."""
    if "fused_path" not in result:
        return []

    def row(name, path, p, tokens, kernels_=None, why_not=None):
        p = p or {}
        return {"method": name, "path": path, "why_not": why_not,
                "ms": p["decode_ms_per_token"]["median"] if p.get("decode_ms_per_token") else None,
                "vs_fp16_fused": p.get("vs_fp16_fused"), "x_floor": p.get("x_floor"), "tokens": tokens,
                "kernels": kernels_}
    rows = []
    for name, r in result["table"].items():
        rows.append(row(name, "fast", r["fast_path"], r.get("leading_tokens_equal")))
        if r.get("fused_path"):
            rows.append(row(name, "fused", r["fused_path"], r.get("fused_leading_tokens_equal"),
                            r.get("fused_kernels_per_step")))
            if r.get("fused_l2_path"):
                rows.append({**row(name, "l2", r["fused_l2_path"], None, r.get("fused_kernels_per_step")),
                             "weight_bytes_share": r["fused_l2_path"]["weight_bytes_share"]})
        else:
            rows.append(row(name, "fused", None, None, why_not=f"not run: {r.get('why_not_fused')}"))
    for name, p in result.get("peers", {}).items():
        rows.append(row(name, "peer", p, p.get("leading_tokens_equal"),
                        why_not=f"cannot run: {p['why_not']}" if p.get("why_not") else None))
    return rows


def calibrated_bench(rec: dict) -> bool:
    """A bench of the calibrated methods' storage (gpu_bench.CALIBRATED_STORAGE's methods): its own
    question, kept out of the size figure and out of the other benches' figure names."""
    return any(n.startswith(("rtn-", "gptq-", "awq-")) for n in (rec.get("bench") or {}).get("table") or {})


def size_rows(records: list[dict]) -> list[dict]:
    """The fused step against model size, one row per CUDA bench with fp16 on the fused path,
    smallest model first: its fp16 fused ms/token, x floor and weights' bytes share (the L2
    diagnostic), and per Part 1 method (INT8, int4) its fused time against fp16's and its
    step without weight bytes against fp16's (l2_vs_fp16_l2: what unpacking the format costs
    the chain), and free_unpack_vs_fp16_fused: what its fused step would take against fp16's
    if its step without weight bytes cost what fp16's does (inferred: fp16's step in L2 plus
    the method's own reads). params: fp16's weight bytes / 2, every tensor counted once (GPT-2
    ties its output layer to the embedding)."""
    def ms(p):
        return p["decode_ms_per_token"]["median"]

    rows = []
    for rec in records:
        b = rec.get("bench") or {}
        fp = (b.get("table") or {}).get("fp16") or {}
        if (not str(rec.get("environment", {}).get("device", "")).startswith("cuda") or not fp.get("fused_path")
                or calibrated_bench(rec)):
            continue
        l2 = fp.get("fused_l2_path")
        row = {"model": rec["model"]["id"], "stand_in": bool(rec["model"].get("stand_in")),
               "file": rec.get("_file"), "params": fp["weights_bytes"] / 2,
               "kernels": fp.get("fused_kernels_per_step"), "fp16_ms": ms(fp["fused_path"]),
               "fp16_x_floor": fp["fused_path"]["x_floor"],
               "fp16_bytes_share": l2["weight_bytes_share"] if l2 else None}
        for name in ("scratch-int8-fast", "scratch-int4-fast"):
            r = b["table"].get(name) or {}
            f, q2 = r.get("fused_path"), r.get("fused_l2_path")
            row[name] = None if not f else {
                "vs_fp16_fused": f["vs_fp16_fused"], "x_floor": f["x_floor"],
                "l2_vs_fp16_l2": ms(q2) / ms(l2) if q2 and l2 else None,
                # inferred, not measured: fp16's step in L2 plus this method's own reads (its fused
                # step minus its step in L2), against fp16's fused step
                "free_unpack_vs_fp16_fused": ((ms(l2) + ms(f) - ms(q2)) / ms(fp["fused_path"])
                                              if q2 and l2 else None)}
        rows.append(row)
    return sorted(rows, key=lambda r: r["params"])


def or_dash(v, fmt: str) -> str:
    """v formatted, or a dash where there is none."""
    return "–" if v is None else format(v, fmt)


def fused_table_text(result: dict) -> str:
    """Decode on each path against fp16 on the fused path, the floor, and the peers beside them."""
    rows = fused_rows(result)
    if not rows:
        return ""
    n = result["new_tokens"]
    lines = [f"{'method':<20} {'path':<8} {'ms/token':>9} {'vs fp16 fused':>14} {'x floor':>8} {'tokens':>8}"
             f" {'kernels/step':>13}"]
    for r in rows:
        if r["why_not"]:
            lines.append(f"{r['method']:<20} {r['path']:<8} {r['why_not']}")
            continue
        ratio, floor = or_dash(r["vs_fp16_fused"], ".2f"), or_dash(r["x_floor"], ".1f")
        tokens = "–" if r["tokens"] is None else f"{r['tokens']}/{n}"
        lines.append(f"{r['method']:<20} {r['path']:<8} {r['ms']:>9.4f} {ratio:>14} {floor:>8} {tokens:>8} "
                     f"{r['kernels'] or '':>13}"
                     + (f"  weights' bytes: {r['weight_bytes_share']:.0%} of the fused step" if r["path"] == "l2"
                        else ""))
    lines.append("ms/token: median decode, round-robin; vs fp16 fused: against fp16 on the fused path in the same "
                 "run; x floor: against weight bytes / peak bandwidth; tokens: leading greedy tokens equal to "
                 "generate()'s (a peer: to its reference); l2: the fused step with every weight read from rows "
                 "that stay in L2 (a diagnostic, no tokens): the step without its weights' HBM bytes")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# 6. Decode at a batch (speed/batch_bench.py): where the quantized advantage ends

def batch_rows(result: dict) -> list[dict]:
    """One row per (method, batch) of a batch bench: ms per step with its spread, tokens/s, the ratio
    against the baseline at that batch and against the method at batch 1, and how many of the batch's
    sequences make the tokens they make alone (all their tokens)."""
    base, n = result["baseline"], result["new_tokens"]
    out = []
    for name, row in result["table"].items():
        for b in result["batches"]:
            c = row["batches"][str(b)]
            out.append({"method": name, "batch": b, "ms": c["decode_ms_per_step"], "tokens_per_s": c["tokens_per_s"],
                        "vs_base": c[f"vs_{base}"], "vs_batch_1": c["vs_batch_1"],
                        "rows_alike": sum(e == n for e in c["rows_leading_tokens_equal"])})
    return out


def batch_table_text(result: dict) -> str:
    """The batch bench for the terminal and RESULTS.md (a Markdown table)."""
    base = result["baseline"]
    lines = [f"| method | batch | ms per step (p10-p90) | tokens/s | vs {base} | vs batch 1 | sequences as alone |",
             "|---|---|---|---|---|---|---|"]
    for r in batch_rows(result):
        ms = r["ms"]
        lines.append(f"| {r['method']} | {r['batch']} | {ms['median']:.3f} ({ms['p10']:.3f}-{ms['p90']:.3f}) "
                     f"| {r['tokens_per_s']:.0f} | {r['vs_base']:.2f} | {r['vs_batch_1']:.2f} "
                     f"| {r['rows_alike']}/{r['batch']} |")
    lines.append(f"\n{result['decode_definition']}; {result['note']}")
    return "\n".join(lines)

