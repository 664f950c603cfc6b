"""Speed: latency of every method, the fast path and the fused step, the CPU bench, and model size.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
import plots.speed as ps
from report.common import Study, bandwidth, heading, method, model_label
from report.doc import Doc
from report.formats import f_mib, f_ms, f_ratio, mib
from report.sections.anatomy import anatomy_section
from speed import readings


def bench_rows(b: dict) -> list[list[str]]:
    rows = []
    for name, v in b["bench"]["table"].items():
        pre, dec = v["prefill_ms"], v["decode_ms_per_token"]
        rows.append(
            [
                name,
                f_mib(v.get("weights_mib")),
                f"{f_ms(pre['median'])} ({f_ms(pre['p10'])}–{f_ms(pre['p90'])})",
                f"{f_ms(dec['median'])} ({f_ms(dec['p10'])}–{f_ms(dec['p90'])})",
                f_ratio(v["prefill_ratio"]),
                f_ratio(v["decode_ratio"]),
            ]
        )
    return rows


BENCH_TITLES = {"bnb-bench": "Every method through generate()",
                "gpu-decode-bench": "generate() against the fast decode path",
                "cpu-decode-bench": "The CPU: static path and fused step beside llama.cpp",
                "scratch-int8-bench": "Part 1's INT8, naive and fast"}


def latency_section(doc: Doc, s: Study) -> None:
    doc.h1("Speed in detail: every bench", key="speed-detail")
    if not s.benches:
        doc.p("No latency benchmark in these results.")
        return
    x = latency_facts(s)
    if x["lengths"] is not None:
        p, q, n = x["lengths"]
        said = (
            f"prefill is one forward pass over 1×{p} tokens, decode greedy generation of {n} "
            f"new tokens after a {q}-token prompt"
        )
    else:
        said = (
            "prefill is one forward pass over a batch of one prompt, decode greedy generation "
            "of new tokens after a shorter prompt, with the lengths that each table's caption "
            "gives"
        )
    doc.p(
        "Each benchmark loads every method into one process and times them in turn, repeat "
        "after repeat, so that a ratio compares methods under the same conditions. Here "
        f"{said}; decode is reported per new token. Medians, with p10–p90 in brackets."
    )
    first = s.headline[0] if s.headline else None
    for b in sorted(s.benches, key=lambda b: (pr.short_model(b) != first, pr.device_kind(b) == "cpu")):
        bb = b["bench"]
        title = "The fused decode step, the fast path and the peers" if "fused_path" in bb else \
            BENCH_TITLES.get(method(b), method(b))
        doc.h2(f"{title} · {model_label(b)} · {pr.device_of(b)}")
        doc.table(
            [
                "method",
                "weights MiB",
                "prefill ms",
                "decode ms/token",
                "prefill ratio",
                "decode ratio",
            ],
            bench_rows(b),
            f"Prefill 1×{bb['prefill_tokens']} tokens; decode "
            f"{bb['new_tokens']} new tokens"
            + (f" after {bb['prompt_tokens']}" if bb.get("prompt_tokens") else "")
            + f"; {escape(bb.get('decode_definition', ''))}; {bb['repeats']} repeats, "
            f"{escape(bb.get('order', ''))}; ratios against "
            f"{escape(bb.get('baseline', 'fp32'))}."
            + (f" {escape(bb['note'])}." if bb.get("note") else ""),
            widths=[3.2, None, None, None, None, None],
        )
        doc.figure(
            pr.bench_figure(b),
            "Prefill and decode time as a ratio of the baseline's, same run.",
            max_height_cm=15,
        )
        if "fast_path" in bb:
            fast_table(doc, b)
            doc.figure(pr.fast_figure(b), "Decode time per token on the fast path and with Hugging Face "
                       "generate(), same run, log scale, whiskers p10–p90; the tick on each fast-path bar is the "
                       "time to read that method's weights once at the GPU's peak bandwidth.", max_height_cm=12)
        if "fused_path" in bb:
            fused_table(doc, b)
            fused_logits_table(doc, b)
            doc.figure(pr.fused_figure(b), "Decode time per token on the fast path (grey), on the fused step "
                       "(blue) and by the peers' own recipes (orange), same run, log scale; the tick on each "
                       "row is the time to read that method's weights once at the GPU's peak bandwidth.",
                       max_height_cm=12)
        if method(b) == "cpu-decode-bench":
            cpu_bench_paragraph(doc, b)
    why = why_text(x)
    if why:
        doc.p("<b>Why.</b> " + why)
    size_section(doc, s)
    anatomy_section(doc, s)


def why_text(x: dict) -> str:
    """Why quantized decode is not faster at this size: latency_facts' numbers as sentences."""
    why = []
    if x["gpu"]:
        g = x["gpu"]
        if g["floor_ms"] is not None:
            why.append(
                f"On the GPU ({g['model']}), fp16 decodes a token in {f_ms(g['fp16_ms'])} ms while reading its "
                f"{f_mib(g['fp16_mib'])} MiB of weights at {g['tb_per_s']:.2f} TB/s would "
                f"take {g['floor_ms']:.3f} ms: decode time at this size is kernel launches and "
                "Python, not memory traffic, so fewer bytes cannot help and every extra "
                "dequantize kernel hurts. "
            )
        if g["int8_ratio"] is not None:
            why.append(
                f"LLM.int8() is the slowest ({f_ratio(g['int8_ratio'])} fp16's decode time): "
                "each matmul also finds outlier columns and runs a second fp16 matmul for them."
            )
    if x["cpu"]:
        c = x["cpu"]
        why.append(
            f"On the CPU ({c['model']}), where a decode step does read the weights from memory, Part 1's "
            f"fast INT8 kernel decodes at {f_ratio(c['fast_ratio'])} fp32's time"
            + (
                ""
                if c["naive_ratio"] is None
                else " while the naive one (dequantize the whole matrix, then matmul) takes "
                f"{f_ratio(c['naive_ratio'])}"
            )
            + "."
        )
    return " ".join(why)


def size_section(doc: Doc, s: Study) -> None:
    """The fused step against model size: readings.size_rows as a table, the figure, and
    what the rows with the weights-in-L2 diagnostic say."""
    rows = s.size_rows
    if len(rows) < 2:
        return
    doc.h2("The fused step against model size")
    dash = lambda v: "–" if v is None else f_ratio(v)                      # noqa: E731
    table = []
    for r in rows:
        q8, q4 = r["scratch-int8-fast"] or {}, r["scratch-int4-fast"] or {}
        table.append([escape(r["model"]) + (" (stand-in)" if r["stand_in"] else ""), f"{r['params'] / 1e6:.0f}M",
                      str(r["kernels"]), f"{r['fp16_ms']:.3f}", f"{r['fp16_x_floor']:.1f}×",
                      "–" if r["fp16_bytes_share"] is None else f"{r['fp16_bytes_share']:.0%}",
                      dash(q8.get("vs_fp16_fused")), dash(q8.get("l2_vs_fp16_l2")),
                      dash(q4.get("vs_fp16_fused")), dash(q4.get("l2_vs_fp16_l2"))])
    doc.table(["model", "params", "kernels", "fp16 ms", "× floor", "fp16 bytes", "INT8", "INT8 l2",
               "int4", "int4 l2"], table,
              "The fused decode step on each CUDA bench, smallest model first; each row is its own round-robin "
              "run, and its ratios are side by side within it. fp16 ms: fp16's fused ms per token; fp16 bytes: "
              "the share of that step its weights' bytes take (the weights-in-L2 diagnostic); INT8, int4: Part "
              "1's fused step against fp16's; l2: the same with every method's weights in L2, against fp16's, "
              "what unpacking the format costs the chain. The larger GPT-2 stand-ins carry GPT-2 medium's, "
              "large's and xl's released widths, layers and heads, with random weights.",
              widths=[3.6, None, None, None, None, None, None, None, None, None])
    doc.figure(ps.SIZES_FIGURE, "Left: Part 1's INT8 and int4 on the fused step against fp16's (filled) and with "
               "every weight in L2 against fp16's (hollow), by model size. Right: the share of fp16's step that "
               "its weights' bytes take.", max_height_cm=11)
    d = s.size_l2_rows
    if len(d) < 2:
        return
    lo, hi = d[0], d[-1]
    i8 = [r["scratch-int8-fast"]["vs_fp16_fused"] for r in d]
    i8l2 = [r["scratch-int8-fast"]["l2_vs_fp16_l2"] for r in d]
    free = [r["scratch-int8-fast"]["free_unpack_vs_fp16_fused"] for r in d]
    q4 = [r["scratch-int4-fast"]["l2_vs_fp16_l2"] for r in d
          if r["scratch-int4-fast"] and r["scratch-int4-fast"]["l2_vs_fp16_l2"] is not None]
    doc.p(f"From {escape(lo['model'])} ({lo['params'] / 1e6:.0f}M parameters) to {escape(hi['model'])} "
          f"({hi['params'] / 1e6:.0f}M), the weights' bytes grow from {lo['fp16_bytes_share']:.0%} to "
          f"{hi['fp16_bytes_share']:.0%} of fp16's fused step, so a smaller format has more to save. Part 1's INT8 "
          f"collects little of it: it takes {min(i8):.2f}× to {max(i8):.2f}× fp16's time at these sizes, because "
          f"its step with the weights in L2 is {min(i8l2):.2f}× to {max(i8l2):.2f}× fp16's step with the weights "
          "in L2. Both run the same kernels except for the weight's load and conversion and the tiles each "
          "method's tuning picked; the bench does not separate the two. Had INT8's step in L2 cost what fp16's "
          f"does, INT8 would take {free[0]:.2f}× fp16's fused time at {escape(lo['model'])} and {free[-1]:.2f}× "
          f"at {escape(hi['model'])} (inferred: fp16's step in L2 plus INT8's own reads)"
          + (": at the smallest size the chain of kernels keeps INT8 above 0.90× whatever its format, at the "
             "largest its unpacking does." if free[0] > 0.9 >= free[-1] else ".")
          + (f" Part 1's int4 pays more for its unpacking still: with the weights in L2 its step is "
             f"{min(q4):.2f}× to {max(q4):.2f}× fp16's." if len(q4) == len(d) else ""))


def latency_facts(s: Study) -> dict:
    """The benches' lengths (one tuple if they all agree) and the numbers behind 'Why'."""
    lengths = {
        (b["bench"]["prefill_tokens"], b["bench"].get("prompt_tokens"), b["bench"]["new_tokens"])
        for b in s.benches
    }
    facts = {
        "lengths": next(iter(lengths)) if len(lengths) == 1 else None,
        "gpu": None,
        "cpu": None,
    }
    gb = s.headline_bench("bnb-bench") or s.bench("bnb-bench", "cuda")
    if gb and "fp16" in gb["bench"]["table"]:
        t = gb["bench"]["table"]
        bw = bandwidth(s)
        facts["gpu"] = {
            "model": model_label(gb),
            "fp16_ms": t["fp16"]["decode_ms_per_token"]["median"],
            "fp16_mib": t["fp16"]["weights_mib"],
            "tb_per_s": None if bw is None else bw / 1e12,
            "floor_ms": readings.decode_floor_ms(t["fp16"]["weights_mib"] * 2**20, bw),
            "int8_ratio": t["bnb-int8"]["decode_ratio"] if "bnb-int8" in t else None,
        }
    cb = s.bench("scratch-int8-bench", "cpu")
    if cb and "int8-fast" in cb["bench"]["table"]:
        t = cb["bench"]["table"]
        facts["cpu"] = {
            "model": model_label(cb),
            "fast_ratio": t["int8-fast"]["decode_ratio"],
            "naive_ratio": t["int8-naive"]["decode_ratio"] if "int8-naive" in t else None,
        }
    return facts


def fast_table(doc: Doc, b: dict) -> None:
    t = b["bench"]["table"]
    base = b["bench"].get("baseline", "fp16")
    fb = t[base]["fast_path"]["decode_ms_per_token"]["median"]
    bw = readings.bench_bandwidth(b)
    rows = []
    for n, v in t.items():
        fp = v.get("fast_path")
        if not fp:
            continue
        floor = readings.decode_floor_ms(v["weights_mib"] * 2**20, bw)
        rows.append(
            [
                n,
                f"{f_ms(fp['prefill_ms']['median'])}",
                f"{f_ms(fp['decode_ms_per_token']['median'])}",
                f_ratio(fp["decode_ms_per_token"]["median"] / fb),
                "–" if floor is None else f"{floor:.4f}",
                "–" if floor is None else f"{fp['decode_ms_per_token']['median'] / floor:.1f}×",
                f_mib(mib(v.get("peak_bytes"))),
                "yes" if v.get("cuda_graph") else "no",
                f"{v.get('leading_tokens_equal', '?')}/{b['bench']['new_tokens']}",
            ]
        )
    doc.table(
        [
            "method",
            "prefill ms",
            "decode ms/token",
            f"vs {base}",
            "floor ms",
            "× floor",
            "peak MiB",
            "graph",
            "tokens",
        ],
        rows,
        f"The fast decode path ({escape(b['bench']['fast_path'])}), same run; "
        + ("no floor (the GPU's peak bandwidth is unknown); " if bw is None else
           f"floor = weight bytes ÷ {bw / 1e12:.2f} TB/s (the GPU's spec peak); ")
        + "peak = CUDA "
        "memory above what was held before the method was loaded; tokens = leading greedy "
        "tokens equal to the same model's generate().",
        widths=[3.2] + [None] * 8,
    )
    diverging = [(n, v.get("leading_tokens_equal"), v.get("kernel_max_rel_err")) for n, v in t.items()
                 if v.get("tokens_equal_generate") is False]
    if diverging:
        doc.p(
            "<b>Tokens.</b> "
            + ", ".join(f"{escape(n)}: {k}/{b['bench']['new_tokens']}" for n, k, _ in diverging)
            + " of the fast path's greedy tokens equal generate()'s before the first difference. The two "
            "paths run the same layers through different kernels (a fused GEMV against dequantize-then-"
            "cuBLAS, attention over a static cache against transformers' own), so their "
            f"{b['bench'].get('compute_dtype', 'float16')} roundings differ; where the two best logits are "
            "nearly tied, one flipped token changes "
            "every token after it. That the layers compute the same thing is checked apart, layer by "
            "layer against dequantize-then-matmul in fp32 (the max err column of the next table)."
        )
    why = [n for n, v in t.items() if v.get("why_no_graph")]
    if why:
        doc.p(
            "Without a CUDA graph: "
            + "; ".join(f"{escape(n)}: {escape(t[n]['why_no_graph'])}" for n in why)
            + "."
        )
    if all("layers_us" in v for v in t.values()):
        layer_table(doc, b)


def fused_table(doc: Doc, b: dict) -> None:
    """The fused decode step beside the fast path and the peers: ms per token, against fp16
    on the fused step, against the floor, and the tokens that agree with generate()."""
    bb = b["bench"]
    n = bb["new_tokens"]
    rows = []
    paths = {"fast": "fast path", "fused": "fused step", "l2": "weights in L2", "peer": "peer"}
    for r in readings.fused_rows(bb):
        if r["why_not"]:
            rows.append([r["method"], paths[r["path"]], escape(r["why_not"]), "", "", "", ""])
            continue
        rows.append([r["method"], paths[r["path"]], f"{r['ms']:.3f}",
                     "–" if r["vs_fp16_fused"] is None else f_ratio(r["vs_fp16_fused"]),
                     "–" if r["x_floor"] is None else f"{r['x_floor']:.1f}×",
                     f"bytes {r['weight_bytes_share']:.0%}" if r["path"] == "l2" else
                     "–" if r["tokens"] is None else f"{r['tokens']}/{n}",
                     str(r["kernels"] or "–") if r["path"] == "fused" else ""])
    l2_note = (" Weights in L2: a diagnostic, the fused step with every weight read from its first rows, which "
               "stay in L2, so it runs without its weights' HBM bytes (its tokens mean nothing); bytes: the share "
               "of the fused step that this removes, the most a smaller weight format could save."
               if "fused_l2_definition" in bb else "")
    doc.table(["method", "path", "ms/token", "vs fp16 fused", "× floor", "tokens", "kernels/step"], rows,
              f"The fused decode step ({escape(bb['fused_path'])}) beside the fast path and the peers, same "
              f"round-robin run, {bb['repeats']} repeats, {n} tokens after {bb['prompt_tokens']}. Tokens: "
              "leading greedy tokens equal to the same model's generate() (a peer: torchao to its own eager "
              "generate(), transformers' static cache to fp16's). Kernels/step only where every layer is fused; "
              "a layer the fused GEMV cannot read (bitsandbytes', the calibrated storage's) runs as its module around "
              "the fused attention, embedding and head." + l2_note
              + (" Peers: " + "; ".join(f"{escape(k)}: {escape(p['recipe'])}" for k, p in bb["peers"].items()) + "."
                 if bb.get("peers") else ""),
              widths=[3.0, 1.8, None, None, None, None, None])
    t, peers = bb["table"], bb.get("peers", {})
    if "fp16" not in t or not t["fp16"].get("fused_path"):
        return
    f16, fast16 = t["fp16"]["fused_path"], t["fp16"]["fast_path"]
    l2 = t["fp16"].get("fused_l2_path")
    text = [f"The fused step decodes an fp16 token in {f16['decode_ms_per_token']['median']:.3f} ms against "
            f"{fast16['decode_ms_per_token']['median']:.3f} ms on the fast path "
            f"({fast16['decode_ms_per_token']['median'] / f16['decode_ms_per_token']['median']:.1f}× faster), "
            f"still {f16['x_floor']:.1f}× the time to read its weights once: with "
            f"{t['fp16'].get('fused_kernels_per_step')} dependent kernels a token, each waiting for the one "
            "before, launches and dependent loads, not bytes, take most of the step"
            + (f". With its weights in L2 the same step takes {l2['decode_ms_per_token']['median']:.3f} ms: the "
               f"weights' bytes are {l2['weight_bytes_share']:.0%} of it, the most any weight format could save on "
               "this step"
               if l2 else " (inferred: the bench takes no profile)") + "."
            + (" Each kernel was launched with programmatic dependent launch: it loads what no earlier kernel of "
               "the step can change (its first weight tile"
               + (" with the norm's weights, the int8 scales and the bias" if "fused_head_programs_per_sm" in bb
                  else "") + "; the filled part of the cache) while the kernel before finishes."
               if bb.get("fused_pdl") else "")]
    i8 = (t.get("scratch-int8-fast") or {}).get("fused_path")
    if i8:
        text.append(f"Part 1's INT8 on it takes {f_ratio(i8['vs_fp16_fused'])} fp16's time")
        i8l2 = t["scratch-int8-fast"].get("fused_l2_path")
        if i8l2:
            text[-1] += (f", and {f_ratio(i8l2['vs_fp16_fused'])} with its weights in L2: even with no weight "
                         f"bytes to read, its step would be only {1 - i8l2['vs_fp16_fused']:.0%} faster than fp16's")
        ao = peers.get("torchao-int8wo") or {}
        if not ao.get("why_not") and ao.get("decode_ms_per_token"):
            text[-1] += (f"; torchao's int8 under torch.compile takes {f_ratio(ao['vs_fp16_fused'])}, so Part 1's "
                         f"is {ao['decode_ms_per_token']['median'] / i8['decode_ms_per_token']['median']:.1f}× "
                         "faster in the same run")
        text[-1] += "."
    doc.p(" ".join(text))


def fused_logits_table(doc: Doc, b: dict) -> None:
    """The fused step's logits step by step, against the same model's modules and against fp32,
    on the same tokens (gpu_bench: fused_logits), and what they say of its token agreement."""
    bb = b["bench"]
    t = {k: v["fused_logits"] for k, v in bb["table"].items() if v.get("fused_logits")}
    if not t:
        return
    rows, near_ties = [], []
    for name, fl in t.items():
        own, f32 = fl["vs_own_modules"], fl["vs_fp32"]
        rows.append([name, f"{own['max_abs_logit_diff']:.3f}", f"{own['kld_mean']:.1e}",
                     f"{own['top1_agree']}/{own['steps']}", f"{f32['max_abs_logit_diff']:.2f}",
                     f"{f32['kld_mean']:.1e}" if f32["kld_mean"] < 0.01 else f"{f32['kld_mean']:.3f}",
                     f"{f32['kld_max']:.1e}" if f32["kld_max"] < 0.01 else f"{f32['kld_max']:.2f}",
                     f"{f32['top1_agree']}/{f32['steps']}"])
        tokens = bb["table"][name].get("fused_leading_tokens_equal")
        if tokens is not None and tokens < bb["new_tokens"] and own["top1_agree"] == own["steps"]:
            near_ties.append(f"{escape(name)} ({tokens}/{bb['new_tokens']})")
    steps = next(iter(t.values()))["vs_fp32"]["steps"]
    doc.table(["method", "own: max |Δ|", "own: KLD", "own: top-1", "fp32: max |Δ|", "fp32: KLD mean",
               "fp32: KLD max", "fp32: top-1"], rows,
              f"The fused step's logits, read after each of the {steps} decode steps of its own greedy run "
              "(its final hidden state through the model's norm and output layer), against the same model's "
              "modules (own) and against the unquantized fp32 model (fp32), both fed the same tokens. "
              "max |Δ|: the largest difference of one logit over every step; KLD: KL(reference ‖ fused step) "
              "per step, in nats; top-1: steps whose most likely next token agrees.",
              widths=[3.2, 1.55, 1.45, 1.45, 1.55, 1.65, 1.65, 1.55])
    if near_ties:
        said = near_ties[0] if len(near_ties) == 1 else ", ".join(near_ties[:-1]) + " and " + near_ties[-1]
        doc.p("<b>Near ties, not wrong kernels.</b> " + said + " leave generate()'s greedy "
              "tokens early, yet their fused step picks the same top token as their own modules at every "
              "step above: the first flip comes where two logits are nearly tied, and every later token "
              "follows from it. Their distance from fp32 is the quantization's, not the kernels'.")


def cpu_bench_paragraph(doc: Doc, b: dict) -> None:
    bb = b["bench"]
    t = bb.get("int8_targets") or {}
    if not t:
        return
    fused = "vs_fp32_static" in t                   # records since the CPU's fused step
    said = [(t.get("vs_llama_cpp_q8_0"), "llama.cpp Q8_0's time"),
            (t.get("vs_fp32"), "fp32's on the same step" if fused else "fp32's on the same path"),
            (t.get("vs_fp32_static"), "fp32's on the static path")]
    text = ("On the CPU the fused step is the GPU's five calls a block, made by C++ kernels (float32 and Part 1's "
            "int8 rows read in place, on torch's threads) instead of the static path's small ops from Python. "
            if fused else "")
    text += (f"Part 1's INT8 {'on the fused step' if fused else 'on the static-cache path'} decodes a token in "
             + ", ".join(f"{f_ratio(v)} {w}" for v, w in said if v is not None)
             + f", {bb['threads']} threads each. llama.cpp's Q8_0 also rounds each activation block to 8 bits "
             "and multiplies integers; Part 1 keeps activations in fp32 (the assignment's rule), so it reads int8 "
             "weights but multiplies in floating point.")
    n = bb["new_tokens"]
    short = [f"{escape(k)} ({v['leading_tokens_equal']}/{n})" for k, v in bb["table"].items()
             if v.get("leading_tokens_equal") is not None and v["leading_tokens_equal"] < n]
    text += (" Every static-path and fused row makes the same greedy tokens as its model's generate()." if not short
             else " Every static-path and fused row makes its model's generate() tokens, except (first tokens "
                  "that match, of those made): " + ", ".join(short) + ".")
    doc.p(text)


def layer_table(doc: Doc, b: dict) -> None:
    """Per-layer time at one token (issue 7's bench), and what it says about the decode step."""
    t, bb = b["bench"]["table"], b["bench"]
    base = bb.get("baseline", "fp16")
    names = [k for k in t[base]["layers_us"] if k != "graph"]
    rows = []
    for n, v in t.items():
        err = v.get("kernel_max_rel_err")
        rows.append(
            [n + ("" if v["layers_us"].get("graph", True) else " (eager)")]
            + [f"{v['layers_us'][k]['median']:.2f}" for k in names]
            + [
                f"{v['linear_us_per_token']:.0f}",
                f_ratio(v["linear_us_per_token"] / t[base]["linear_us_per_token"]),
                "" if err is None else f"{err:.1e}",
            ]
        )
    short = {
        "attn.c_attn": "c_attn",
        "attn.c_proj": "attn proj",
        "mlp.c_fc": "c_fc",
        "mlp.c_proj": "mlp proj",
        "self_attn.q_proj": "q",
        "self_attn.k_proj": "k",
        "self_attn.v_proj": "v",
        "self_attn.o_proj": "o",
        "mlp.gate_proj": "gate",
        "mlp.up_proj": "up",
        "mlp.down_proj": "down",
    }
    doc.table(
        ["method"] + [short.get(k, k) for k in names] + ["µs/token", f"vs {base}", "max err"],
        rows,
        f"Microseconds per call of block 0's linear layers and of lm_head at one token: "
        f"{bb.get('layer_calls_per_replay', '?')} calls captured in one CUDA graph (eager calls where a "
        f"method has no graph), median of {2 * bb['repeats']} replays. µs/token: the number of blocks × "
        "the block's layers + lm_head, all linear layers of one decode step; max err: the worst "
        "relative error of Part 1's layers against dequantize-then-matmul in fp32.",
        widths=[3.2] + [None] * (len(names) + 3),
    )
    x = layer_facts(b)
    text = [
        f"In {base}, the linear layers take about {x['base_linear_us']:.0f} µs of a "
        f"{x['base_step_us']:.0f} µs decode step; the other ~{x['rest_us']:.0f} µs (attention over "
        "the cache, layer norms, residual adds, embedding, argmax, and the gaps between kernels) "
        "are the same kernels whatever the weights are. So even a method whose linear layers "
        f"were free could not decode faster than {f_ratio(x['best_possible'])} {base}'s time at "
        "this size."
    ]
    if len(x["q4_linear_us"]) > 1:
        text.append(
            "Among the 4-bit layers: "
            + ", ".join(f"{escape(n)} {us:.0f} µs" for n, us in x["q4_linear_us"])
            + " per token."
        )
    if x["int4_and_nf4"]:
        text.append(
            "Part 1's int4 and NF4 read the same bytes; the difference is decoding a "
            "code: int4 is one subtraction (the ÷7 is folded into the block's absmax), "
            "NF4 looks each code up among 16 levels (a select tree in registers), which "
            "costs arithmetic on every weight."
        )
    if x["lm_head_us"] is not None:
        int8_us, base_us = x["lm_head_us"]
        text.append(
            "Whole-model INT8 also stores the tied embedding / output layer in int8: "
            f"lm_head takes {int8_us:.1f} µs against {base_us:.1f} µs in {base}; the 4-bit "
            f"methods keep it in {base}, as bitsandbytes does."
        )
    doc.p(" ".join(text))


def layer_facts(b: dict) -> dict:
    """What the per-layer times say about one decode step, in numbers."""
    t, base = b["bench"]["table"], b["bench"].get("baseline", "fp16")
    step = {n: v["fast_path"]["decode_ms_per_token"]["median"] * 1e3 for n, v in t.items()}
    lin = {n: v["linear_us_per_token"] for n, v in t.items()}
    rest = step[base] - lin[base]
    lm_head = [t[n]["layers_us"].get("lm_head") for n in ("scratch-int8-fast", base) if n in t]
    return {
        "base_linear_us": lin[base],
        "base_step_us": step[base],
        "rest_us": rest,
        "best_possible": rest / step[base],
        "q4_linear_us": [
            (n, lin[n]) for n in ("scratch-int4-fast", "scratch-nf4-fast", "bnb-nf4") if n in lin
        ],
        "int4_and_nf4": "scratch-int4-fast" in lin and "scratch-nf4-fast" in lin,
        "lm_head_us": (lm_head[0]["median"], lm_head[1]["median"])
        if len(lm_head) == 2 and all(lm_head)
        else None,
    }


def speed(doc: Doc, s: Study) -> None:
    """report/speed.pdf: every bench, the fused step against model size, the anatomy."""
    latency_section(doc, s)


def no_graph_words(b: dict) -> str:
    """' bnb-int8 runs without a graph (why).' for each row of a bench that its CUDA graph could not capture."""
    return "".join(f" {escape(n)} runs without a graph" + (f" ({escape(x['why_no_graph'])})" if x.get("why_no_graph")
                                                          else "") + "."
                   for n, x in b["bench"]["table"].items() if x.get("cuda_graph") is False)


def generate_spread_words(s: Study, fast: dict) -> str | None:
    """Why the generate() bench and the fast-path bench's own generate() rows give the baseline different
    times: generate()'s spread within one run, read from both records."""
    b = s.headline_bench("bnb-bench") or s.bench("bnb-bench", "cuda")
    if b is None or b is fast:
        return None
    base = b["bench"].get("baseline", "fp16")
    one, other = b["bench"]["table"].get(base), fast["bench"]["table"].get(base)
    if not one or not other or "decode_ms_per_token" not in other:
        return None
    d, o = one["decode_ms_per_token"], other["decode_ms_per_token"]["median"]
    inside = d["p10"] <= o <= d["p90"]
    return (f"<b>generate() is noisy.</b> There {base}'s p10–p90 spans {f_ms(d['p10'])} to {f_ms(d['p90'])} ms "
            f"around {f_ms(d['median'])}; the bench below timed the same {base} through generate() at {f_ms(o)} "
            "ms, " + ("inside" if inside else "outside") + " that spread. Python and launches set generate()'s "
            "pace and vary with the host: its ratios are rough, the static path's tight.")


def speed_summary(doc: Doc, s: Study) -> None:
    """The main report's speed: what a user gets (generate() and the static-cache path, side by side),
    why a small model is launch-bound, in one figure; the rest is in report/speed.pdf."""
    from report.sections.summary import beyond_words, fast_facts, finding_items
    doc.h1(heading("speed", "Speed: what a user gets"), key="speed")
    if not s.benches:
        doc.p("No latency benchmark in these results.")
        return
    items = finding_items(s)
    doc.p("Each benchmark loads every method into one process and times them in turn, repeat after repeat, "
          "so that a ratio compares methods under the same conditions; decode is per new token, medians "
          "with p10–p90 in report/speed.pdf, which holds every bench and the fused decode step.")
    if "speed" in items:
        doc.p(items["speed"].replace("<b>Speed.</b>", "<b>Every method through generate()</b>, in one "
                                     "side-by-side run (report/speed.pdf has its table):", 1))
    fast = next((b for b in s.benches if "fast_path" in b["bench"] and s.headline
                 and pr.short_model(b) == s.headline[0] and pr.device_kind(b) == "cuda"), None) \
        or next((b for b in s.benches if "fast_path" in b["bench"]), None)
    if fast is not None:
        x = fast_facts(fast, s.benches)
        if x:                                   # the abstract says it whole; here, the numbers the figure shows
            faster = ", ".join(f"{escape(n)} {f_ratio(r)}" for n, _, r, _, _ in x["faster"])
            doc.p(f"<b>With the overhead gone</b> (static KV cache, CUDA graphs), {x['base']} decodes a token in "
                  f"{f_ms(x['base_ms'])} ms on the {escape(x['device'])}"
                  + (f"; the only quantized models faster than it beyond {beyond_words(x)} "
                     f"are {faster} its time." if faster
                     else f"; no quantized model is faster beyond {beyond_words(x)}."))
        gen = generate_spread_words(s, fast)
        if gen:
            doc.p(gen)
        doc.figure(pr.fast_figure(fast), "Decode time per token, generate() against the static-cache path with "
                   "CUDA graphs, in the fast-path bench's own side-by-side run (log scale; whiskers p10–p90). Each "
                   "tick: the time to read that method's weights once at the GPU's peak bandwidth; every bar sits "
                   "far above its tick, so a step is a chain of small dependent kernels, not bytes."
                   + no_graph_words(fast), max_height_cm=9.0)
        doc.label("speed-figure")
    why = why_text(latency_facts(s))
    if why:
        doc.p("<b>Why small models are launch-bound.</b> " + why)
