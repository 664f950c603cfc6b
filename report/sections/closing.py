"""The main report's end: which scheme to choose for a memory budget and a device, the
conclusions, the references; and the glossary appendix.

The decision table is read from the records like every other table: for each device, the
headline model's group with the most runs; for each budget (a share of that model's fp32
weights), the run with the lowest perplexity that fits, the next best beside it so that a
near tie shows, and the decode-time ratio from the side-by-side bench where that method ran in it.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
from report.common import Study, delta, group_label, heading, heading_number, method, tie
from report.doc import Doc
from report.formats import f_mib, f_pct, f_ratio
from study import noise

BUDGETS = (0.5, 0.3, 0.2)               # shares of the model's fp32 weight bytes (at 100% fp32 itself fits)
TIE_PCT = 1.0                            # "within 1% of fp32": the conclusions' bar for near-lossless
# a run's name -> its row in a bench's table (the benches name Part 1's rows by kind and path)
BENCH_NAMES = {"baseline-fp16": "fp16", "baseline-fp32": "fp32", "scratch-int8-per_channel": "scratch-int8",
               "scratch-int4-int4": "scratch-int4", "scratch-int4-nf4": "scratch-nf4"}


def decision_groups(s: Study) -> list[tuple]:
    """One group per device kind: the headline model's with the most runs and a fp32 baseline."""
    if s.headline is None:
        return []
    out = {}
    for k in s.ppl_groups():
        runs = s.runs(k)
        if k[0] != s.headline[0] or "baseline-fp32" not in runs:
            continue
        if k[6] not in out or len(runs) > len(s.runs(out[k[6]])):
            out[k[6]] = k
    return [out[d] for d in sorted(out)]


def decode_ratio(s: Study, key: tuple, name: str) -> float | None:
    """The decode-time ratio against fp16 of this method in the generate() bench on the group's
    model and device (one side-by-side run), or None where it did not run there."""
    b = next((r for r in s.benches if method(r) == "bnb-bench" and pr.short_model(r) == key[0]
              and pr.device_kind(r) == key[6]), None)
    row = None if b is None else b["bench"]["table"].get(BENCH_NAMES.get(name, name))
    return None if row is None else row.get("decode_ratio")


def decision_rows(s: Study) -> list[dict]:
    """For each device and budget: the lowest-perplexity run that fits, and the next one."""
    rows = []
    for k in decision_groups(s):
        r = s.runs(k)
        fp32 = r["baseline-fp32"]["memory"]["weights_mib"]
        for share in BUDGETS:
            fits = sorted((n for n in r if r[n]["memory"]["weights_mib"] <= share * fp32 * 1.0001),
                          key=lambda n: r[n]["perplexity"]["ppl"])
            pick = fits[0] if fits else None
            rows.append({"group": k, "share": share, "budget_mib": share * fp32, "pick": pick,
                         "next": fits[1] if len(fits) > 1 else None, "runs": r,
                         "ratio": None if pick is None else decode_ratio(s, k, pick)})
        within = sorted((n for n in r if delta(r, n) <= TIE_PCT), key=lambda n: r[n]["memory"]["weights_mib"])
        if rows and within:
            rows[-len(BUDGETS)]["least_within_1pct"] = within[0]
    for row in rows:
        row.setdefault("least_within_1pct", None)
    return rows


def lossless_words(rows: list[dict]) -> str | None:
    """The least memory within TIE_PCT of fp32 on each device, then each device's pick at the
    second-smallest budget (Table 10's): how close 8-bit comes, in the table's own terms."""
    least = [(x["least_within_1pct"], x) for x in rows if x["least_within_1pct"]]
    if not least:
        return None
    said = lambda n, x: f"{f_pct(delta(x['runs'], n))}, {escape(short_device(x['group'][5]))}"  # noqa: E731
    names = {n for n, _ in least}
    if len(names) == 1:
        n = least[0][0]
        text = (f"Within {TIE_PCT:g}% of fp32's perplexity, the least memory is {escape(n)}'s "
                f"{f_mib(least[0][1]['runs'][n]['memory']['weights_mib'])} MiB ("
                + "; ".join(said(n, x) for _, x in least) + ")")
    else:
        text = (f"Within {TIE_PCT:g}% of fp32's perplexity, the least memory is "
                + "; ".join(f"{escape(n)}'s {f_mib(x['runs'][n]['memory']['weights_mib'])} MiB ({said(n, x)})"
                            for n, x in least))
    share = sorted(BUDGETS)[1] if len(BUDGETS) > 1 else None
    picks = [x for x in rows if x["share"] == share and x["pick"] and x["pick"] not in names]
    if picks:
        text += (f"; the lowest perplexity within {share:.0%} of fp32's memory is "
                 + " and ".join(f"{escape(x['pick'])}'s ({f_mib(x['runs'][x['pick']]['memory']['weights_mib'])} "
                                f"MiB, {said(x['pick'], x)})" for x in picks))
    return text + ". A scale per row or group keeps 8-bit within 1%; one per matrix does not."


def tie_word(runs: dict, a: str, b: str) -> str:
    """'; a tie' where b's band against a holds zero, '; worse' where not, '' where it cannot be said."""
    t = tie(runs, a, b)
    return "" if t is None else "; a tie" if t else "; worse"


def bpw_of(rec: dict) -> str:
    """', N bits per weight' over the whole model where the record says, else ''."""
    b = (rec.get("bits_per_weight") or {}).get("model") or {}
    return f", {b['bits_per_weight']:.2f} bits per weight over the whole model" if b.get("bits_per_weight") else ""


def short_device(name: str) -> str:
    """'CPU' for a CPU's long name ('cpu: Intel(R) ...'), a GPU's name as it is."""
    return "CPU" if name.lower().startswith("cpu") else name


def decision(doc: Doc, s: Study) -> None:
    doc.h1(heading("choose", "Which scheme to choose"), key="choose")
    rows = decision_rows(s)
    if not rows:
        doc.p("No comparable perplexity runs in these results.")
        return
    doc.p("For each memory budget (a share of fp32's weights), the lowest-perplexity run that fits and the next "
          "best; where they tie (the 95% band of their difference holds zero), speed, hardware or tooling "
          "decides.")
    timed = sum(x["ratio"] is not None for x in rows) * 2 >= len(rows)   # a column of dashes says nothing
    out = []
    for x in rows:
        r, n, nxt = x["runs"], x["pick"], x["next"]
        out.append([f"{x['share']:.0%} ({f_mib(x['budget_mib'])} MiB)", short_device(x["group"][5]),
                    n or "nothing fits", f_mib(r[n]["memory"]["weights_mib"]) if n else "–",
                    f_pct(delta(r, n)) if n else "–",
                    f"{nxt} ({f_pct(delta(r, nxt))}{tie_word(r, n, nxt)})" if nxt else "–"]
                   + ([f_ratio(x["ratio"]) if x["ratio"] is not None else "–"] if timed else []))
    doc.table(["budget (of fp32)", "device", "pick", "weights MiB", "vs fp32", "next best"]
              + (["decode vs fp16"] if timed else []), out,
              "The lowest perplexity within each memory budget, per device (" + "; ".join(
                  escape(group_label(k)) for k in decision_groups(s)) + "). The two devices' runs score "
              "different token counts, so compare picks within a device; "
              + ("decode: the generate() bench's ratio." if timed else
                 f"decode: {heading_number('speed')} (most picks ran in no side-by-side bench)."),
              widths=[2.3, 2.1, 4.0, 1.5, 1.4, 4.0, 1.5] if timed else [2.9, 2.1, 4.1, 1.5, 1.4, 4.8])
    doc.label("decision-table", "Table")


def conclusions(doc: Doc, s: Study) -> None:
    from report.sections.front import a_calibrated, a_models, a_speed
    doc.h1(heading("conclusions", "Conclusions"), key="conclusions")
    items = []
    rows = decision_rows(s)
    lossless = lossless_words(rows)
    if lossless:
        items.append(f"<b>Near-lossless.</b> {lossless}")
    four = [x for x in rows if x["share"] == min(BUDGETS) and x["pick"]]
    if four:
        items.append("<b>At a fifth of fp32's memory</b> the best run is " + "; ".join(
            f"{escape(x['pick'])} ({f_pct(delta(x['runs'], x['pick']))}{bpw_of(x['runs'][x['pick']])}, "
            f"{escape(short_device(x['group'][5]))})" for x in four)
            + ": below 8 bits every scheme here costs perplexity that shows.")
    for label, answer in (("Calibration", a_calibrated), ("A larger model", a_models), ("Speed", a_speed)):
        text = answer(s)
        if text:
            items.append(f"<b>{label}.</b> {text}")
    doc.bullets(items)


# The works the text cites: key -> the entry. Numbered in this order; cite() gives "[n]".
REFERENCES = (
    ("llm-int8", "T. Dettmers, M. Lewis, Y. Belkada, L. Zettlemoyer. LLM.int8(): 8-bit Matrix Multiplication for "
                 "Transformers at Scale. NeurIPS 2022. arXiv:2208.07339."),
    ("qlora", "T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer. QLoRA: Efficient Finetuning of Quantized LLMs. "
              "NeurIPS 2023. arXiv:2305.14314 (NF4, double quantization)."),
    ("gptq", "E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh. GPTQ: Accurate Post-Training Quantization for "
             "Generative Pre-trained Transformers. ICLR 2023. arXiv:2210.17323."),
    ("awq", "J. Lin, J. Tang, H. Tang, S. Yang, W.-M. Chen, W.-C. Wang, G. Xiao, X. Dang, C. Gan, S. Han. AWQ: "
            "Activation-aware Weight Quantization for LLM Compression and Acceleration. MLSys 2024. "
            "arXiv:2306.00978."),
    ("llama.cpp", "G. Gerganov and contributors. llama.cpp and the GGUF format. github.com/ggml-org/llama.cpp."),
    ("bitsandbytes", "bitsandbytes: k-bit quantization for PyTorch. github.com/bitsandbytes-foundation/bitsandbytes."),
    ("transformers", "T. Wolf et al. Transformers: State-of-the-Art Natural Language Processing. EMNLP 2020 "
                     "(demos); its perplexity guide describes the sliding window used here."),
    ("wikitext", "S. Merity, C. Xiong, J. Bradbury, R. Socher. Pointer Sentinel Mixture Models. ICLR 2017 "
                 "(WikiText-2)."),
    ("lm-eval", "L. Gao et al. A framework for few-shot language model evaluation (lm-evaluation-harness): word "
                "perplexity and bits per byte for WikiText."),
    ("smollm2", "L. Ben Allal et al. SmolLM2: When Smol Goes Big. arXiv:2502.02737."),
    ("gemma3", "Gemma Team. Gemma 3 Technical Report. arXiv:2503.19786."),
    ("gpt2", "A. Radford, J. Wu, R. Child, D. Luan, D. Amodei, I. Sutskever. Language Models are Unsupervised "
             "Multitask Learners. 2019."),
)
_NUMBER = {k: i + 1 for i, (k, _) in enumerate(REFERENCES)}


def cite(*keys: str) -> str:
    """'[n]' or '[n, m]' for the works in REFERENCES."""
    return "[" + ", ".join(str(_NUMBER[k]) for k in keys) + "]"


def references(doc: Doc, s: Study) -> None:
    doc.h1("References", key="references")
    for i, (_, entry) in enumerate(REFERENCES, 1):
        doc.p(f"[{i}] {escape(entry)}", "ref")


GLOSSARY = (
    ("absmax", "the largest absolute value in a block of weights; dividing by it maps the block onto [-1, 1]"),
    ("AWQ", "activation-aware weight quantization: scales input channels by activation size before rounding"),
    ("bits per byte (bpb)", "total negative log-likelihood in bits over the UTF-8 bytes of the text: compares "
                            "models with different tokenizers"),
    ("bits per weight (bpw)", "the stored bytes of the quantized layers (codes, scales, zero points) × 8 over "
                              "their weights"),
    ("CUDA graph", "a recorded sequence of GPU kernels replayed with one launch"),
    ("Conv1D", "GPT-2's linear layer, which stores its weight as (in, out), the transpose of nn.Linear's"),
    ("decode", "generating one new token from the cached context; prefill: the forward pass over the prompt"),
    ("double quantization (DQ)", "quantizing the 4-bit blocks' fp32 scales themselves to 8 bits (QLoRA)"),
    ("FP4", "a 4-bit floating-point code (sign, exponent, mantissa)"),
    ("GEMV", "matrix-vector product: a linear layer applied to one token"),
    ("GGUF / GGML", "llama.cpp's single-file model format / its tensor library"),
    ("GPTQ", "rounds a layer's weights one column at a time, correcting the others with second-order "
             "information from calibration activations"),
    ("HBM", "the GPU's high-bandwidth memory; its bandwidth bounds how fast the weights can be read"),
    ("K-quants (Q4_K, Q5_K, Q6_K)", "llama.cpp types with 256-weight super-blocks and quantized sub-block scales"),
    ("KV cache", "the keys and values of the tokens seen so far, kept so that a decode step attends to them "
                 "without recomputing them"),
    ("KLD", "KL divergence of the quantized model's next-token distribution from fp32's, per scored token"),
    ("launch-bound", "time dominated by starting kernels and Python, not by computing or reading memory"),
    ("L2", "the GPU's last-level cache"),
    ("LLM.int8()", "bitsandbytes' 8-bit matmul that keeps outlier activation columns in fp16"),
    ("paired bootstrap", "the band of a difference between two runs: windows drawn with replacement, the "
                         f"same draws for both runs, {noise.DRAWS:,} times; the 95% band is the middle 95% of the "
                         "differences"),
    ("Pareto front / frontier", "the runs that no other run beats on both axes (less memory and lower error)"),
    ("NF4", "4-bit NormalFloat: 16 levels at the quantiles of a normal distribution (QLoRA)"),
    ("PDL", "programmatic dependent launch: a kernel starts loading while the previous one finishes (Hopper)"),
    ("per channel / per tensor / group g", "one scale per output row / per matrix / per g consecutive weights"),
    ("perplexity", "exp of the mean negative log-likelihood per token; here corpus-level over sliding windows"),
    ("RTN", "round-to-nearest: each weight to its nearest level, no calibration"),
    ("SM", "streaming multiprocessor, one of the GPU's compute units"),
    ("stand-in", "a model used in place of gpt2 where the Hub was unreachable; named beside its numbers"),
    ("static-cache path / fused step", "decoding with a preallocated KV cache and CUDA graphs / with our fused "
                                       "Triton kernels (report/speed.pdf)"),
    ("tied embedding", "one matrix used both as the token embedding and as the output layer, stored once"),
    ("Triton", "a Python language for writing GPU kernels, compiled at run time"),
    ("window L, stride S", "each perplexity window holds L tokens and advances by S, scoring only new tokens"),
)


def glossary(doc: Doc, s: Study) -> None:
    doc.appendix("glossary", key="glossary")
    doc.table(["term", "meaning"], [[t, m] for t, m in GLOSSARY], "The terms the report uses.",
              widths=[4.5, 12.0])
