"""Part 2: the bitsandbytes modes, NF4 against linear 4-bit, and accuracy against efficiency.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
from report.common import (
    BAND_NOTE,
    Study,
    band,
    delta,
    describe,
    group_label,
    heading,
    heading_number,
    model_label,
    noise_said,
)
from report.doc import Doc
from report.formats import f_band, f_mib, f_pct, f_ppl, f_ratio, mib
from report.sections.closing import cite
from study import registry


def nf4_section(doc: Doc, s: Study) -> None:
    doc.h2("NF4 against linear 4-bit")
    doc.p(
        "<b>What NF4 is</b> " + cite("qlora", "bitsandbytes") + ". Linear (uniform) 4-bit quantization divides "
        "each block of 64 "
        "weights by its largest magnitude (absmax) and rounds to 16 evenly spaced levels in "
        "[-1, 1]. NF4 keeps the same absmax scale but puts its 16 levels at quantiles of a "
        "normal distribution, so that for exactly normal weights each level would take an equal "
        "share: the levels are dense near zero, where most weights are, and sparse in the "
        "tails. The scale is the same; what differs is the spacing of the levels "
        "it multiplies. FP4 is bitsandbytes' other 4-bit format, a tiny float (sign, exponent, "
        "mantissa): its levels are spaced by powers of two, denser near zero than uniform but "
        "not matched to the weights. Double quantization stores the absmax of each block itself "
        "in 8 bits (with a second scale per 256 blocks) instead of 32."
    )
    c = s.compare
    cross_check_table = None
    if c:
        cm = c["compare"]
        m, h = cm["mean_rel_mse"], cm["histogram"]
        e = h["code_entropy_bits"]
        use = {k: (min(v), max(v)) for k, v in h.get("code_use", {}).items() if v}
        use = use if {"nf4", "uniform16"} <= set(use) else None
        kinds = [k for k in ("bnb-nf4", "scratch-nf4", "scratch-int4", "bnb-fp4") if k in m]
        doc.table(
            ["4-bit format", "mean relative MSE", "vs NF4"],
            [[k, f"{m[k]:.3e}", f_ratio(m[k] / m["bnb-nf4"])] for k in kinds],
            f"Reconstruction error of every block linear ({len(cm['layers'])} layers, block "
            f"{cm['block_size']}), MSE / mean(w²) averaged over layers; "
            f"{escape(model_label(c))}. Scratch NF4 against bitsandbytes NF4: max "
            f"difference {cm['cross_check']['max_rel_diff']:.1e} of max |w|.",
            widths=[4, None, None],
        )
        cross_check_table = doc.n_tab                       # cited below, by its number
        doc.label("nf4-error-table", "Table")
        doc.p(
            f"On the layer {escape(h['layer'])}, NF4's 16 codes carry {e['nf4']:.2f} bits of "
            f"information per weight (out of 4); 16 evenly spaced levels from -1 to 1 (no exact zero) carry "
            f"{e['uniform16']:.2f}"
            + (f", and Part 1's int4 (15 evenly spaced levels, zero among them) {e['int4_scratch']:.2f}"
               if "int4_scratch" in e else "")
            + (f". Real weights are not exactly normal: NF4's codes are used {use['nf4'][0]:,} "
               f"to {use['nf4'][1]:,} times each on that layer, uniform levels' "
               f"{use['uniform16'][0]:,} to {use['uniform16'][1]:,} times" if use else "")
            + ": uniform levels waste codes on the tails, where few weights fall (Figure "
            f"{doc.n_fig + 1}, next). That is the accuracy side of linear against nonlinear "
            "quantization. The "
            "efficiency side: NF4 and FP4 cost exactly the same memory (4 bits plus one "
            "absmax per 64 weights), but a nonlinear code cannot be computed by an integer "
            "multiply; it is looked up in a 16-entry table and the matmul runs in 16-bit "
            "floats, so neither saves compute, only bytes."
        )
        levels_fig = pr.compare_figures(c)
        doc.figure(
            levels_fig["levels"],
            "A real layer's weights, each divided by its block's absmax, with the 16 NF4 levels (red) and 16 "
            "uniform levels (blue, dotted): NF4's levels crowd where the weights are, the uniform ones spend "
            "codes on the nearly empty tails.",
        )
        doc.label("nf4-levels")
    g = s.find_group("bnb-nf4", "bnb-fp4")
    if g:
        r = s.runs(g)
        names = [n for n in ("bnb-int8", "bnb-fp4", "bnb-nf4", "bnb-nf4-dq", "scratch-int4-int4", "scratch-int4-nf4")
                 if n in r]
        bands = {n: band(r, n) for n in names}                # each a bootstrap: computed once
        banded = any(bands.values())                          # a band column only where a run has one
        rows = [[n, describe(r[n]), f_mib(r[n]["memory"]["weights_mib"]),
                 f_mib(mib((r[n].get("quantization") or {}).get("scales_and_zero_points"))),
                 f_ppl(r[n]["perplexity"]["ppl"]), f_pct(delta(r, n))] + ([f_band(bands[n])] if banded else [])
                for n in names]
        doc.table(
            ["method", "what", "weights MiB", "scales MiB", "perplexity", "vs fp32"] + (["95% band"] if banded else []),
            rows,
            f"bitsandbytes and Part 1's 4-bit on the same tokens ({escape(group_label(g))})."
            + (" " + BAND_NOTE if banded else ""),
            widths=[2.6, 3.9, 1.5, 1.4, 2.0, 1.6, 3.0] if banded else [2.8, 5.4, None, None, None, None],
        )
        doc.label("part2-table", "Table")
        x = nf4_facts(r)
        text = []
        if x["dq_scales_mib"] is not None:
            a, b = x["dq_scales_mib"]
            text.append(
                f"Double quantization shrinks the scales from {f_mib(a)} to {f_mib(b)} MiB and "
                f"changes perplexity by {f_pct(x['dq_delta'])} relative to NF4{noise_said(r, 'bnb-nf4-dq', 'bnb-nf4')}."
            )
        cpu = cpu_dq_facts(s)
        if cpu:
            text.append(
                f"On the CPU ({escape(cpu['group'])}), bitsandbytes {escape(cpu['version'])} keeps each "
                f"block's absmax in {escape(cpu['dtype'])} and double quantization saves no bytes there: "
                f"NF4 and NF4-DQ both hold {f_mib(cpu['scales_mib'])} MiB of scales."
            )
        if x["int8_delta"] is not None:
            text.append(
                f"8-bit LLM.int8() is at {f_pct(x['int8_delta'])}"
                + ("" if x["scratch_int8_delta"] is None else
                   f", more than Part 1's per-channel INT8 ({f_pct(x['scratch_int8_delta'])})")
                + ": it rounds the activations to int8 too (one absmax per row of the input), "
                "keeping only the columns with an outlier above its threshold in fp16, while Part 1 "
                "keeps every activation in full precision."
            )
        err = (s.compare or {}).get("compare", {}).get("mean_rel_mse", {})
        if {"bnb-fp4", "scratch-int4-int4"} <= set(r) and {"bnb-fp4", "scratch-int4"} <= set(err):
            worse = delta(r, "bnb-fp4") > delta(r, "scratch-int4-int4")
            text.append(
                f"FP4 scores {'worse' if worse else 'better'} than Part 1's linear int4 ({f_pct(delta(r, 'bnb-fp4'))} "
                f"against {f_pct(delta(r, 'scratch-int4-int4'))}), and its error per weight is "
                f"{'larger' if err['bnb-fp4'] > err['scratch-int4'] else 'smaller'} too ({err['bnb-fp4']:.2e} against "
                f"{err['scratch-int4']:.2e}): a float's levels double in spacing toward the block's absmax, so "
                "FP4 is finer than int4 near zero but coarser where the larger weights of a block fall, and unlike "
                "NF4 its spacing is not matched to how the weights spread.")
        if x["scratch_nf4_ppl"] is not None:
            text.append(
                f"Part 1's from-scratch NF4 gives {f_ppl(x['scratch_nf4_ppl'])} against "
                f"bitsandbytes' {f_ppl(x['bnb_nf4_ppl'])} ({f_pct(x['scratch_vs_bnb'])}"
                f"{noise_said(r, 'scratch-int4-nf4', 'bnb-nf4')}). Both "
                "make the same codes from the same weights"
                + ("" if cross_check_table is None else
                   f" (the cross-check in Table {cross_check_table}'s caption)")
                + "; the runs differ in what is not quantized: bitsandbytes computes in "
                f"{x['bnb_compute']} and keeps the rest of the model in it, Part 1's run kept "
                f"{', '.join(x['scratch_dtypes'])}."
            )
        if text:
            doc.p(" ".join(text))


def cpu_dq_facts(s: Study) -> dict | None:
    """Where a CPU run's NF4 and NF4-DQ hold the same scale bytes: the absmax's dtype, the version."""
    for k in s.ppl_groups():
        if k[6] != "cpu":                             # the group's device kind (pr.eval_groups' key)
            continue
        r = s.runs(k)
        if not {"bnb-nf4", "bnb-nf4-dq"} <= set(r):
            continue
        a, b = (mib((r[n].get("quantization") or {}).get("scales_and_zero_points")) for n in ("bnb-nf4", "bnb-nf4-dq"))
        if a and b and abs(a - b) < 0.01 * a:
            half = [t for t in r["bnb-nf4"]["memory"].get("by_dtype_bytes", {}) if t in ("bfloat16", "float16")]
            return {"group": group_label(k), "scales_mib": a, "dtype": half[0] if half else "16 bits",
                    "version": (r["bnb-nf4"].get("environment") or {}).get("versions", {}).get("bitsandbytes", "?")}
    return None


def nf4_facts(r: dict[str, dict]) -> dict:
    """The Part 2 comparison's numbers: double quantization, LLM.int8(), scratch against bnb NF4."""

    def scales(n):
        return (
            mib((r[n].get("quantization") or {}).get("scales_and_zero_points")) if n in r else None
        )

    dq = (scales("bnb-nf4"), scales("bnb-nf4-dq"))
    return {
        "dq_scales_mib": dq if all(dq) else None,
        "dq_delta": delta(r, "bnb-nf4-dq", "bnb-nf4") if all(dq) else None,
        "int8_delta": delta(r, "bnb-int8") if "bnb-int8" in r else None,
        "scratch_int8_delta": delta(r, "scratch-int8-per_channel") if "scratch-int8-per_channel" in r else None,
        "scratch_nf4_ppl": r["scratch-int4-nf4"]["perplexity"]["ppl"]
        if "scratch-int4-nf4" in r
        else None,
        "bnb_nf4_ppl": r["bnb-nf4"]["perplexity"]["ppl"],
        "scratch_vs_bnb": delta(r, "scratch-int4-nf4", "bnb-nf4") if "scratch-int4-nf4" in r
        else None,
        "bnb_compute": r["bnb-nf4"]["method"]["settings"].get("compute_dtype", "?"),
        "scratch_dtypes": [t for t in r["scratch-int4-nf4"]["memory"].get("by_dtype_bytes", {})
                           if t.startswith(("float", "bfloat"))] if "scratch-int4-nf4" in r else [],
    }


def part2(doc: Doc, s: Study) -> None:
    doc.h1(heading("part2", "Part 2: bitsandbytes"), key="part2")
    nf4_section(doc, s)
    accuracy_efficiency(doc, s)


def accuracy_efficiency(doc: Doc, s: Study) -> None:
    g = s.headline
    b = s.headline_bench("bnb-bench")
    if not g or not b:
        return
    r, t = s.runs(g), b["bench"]["table"]
    pairs = [("bnb-int8", "bnb-int8"), ("bnb-fp4", "bnb-fp4"), ("bnb-nf4", "bnb-nf4"),
             ("bnb-nf4-dq", "bnb-nf4-dq"), ("scratch-int8-per_channel", "scratch-int8"),
             ("scratch-int4-int4", "scratch-int4"), ("scratch-int4-nf4", "scratch-nf4")]
    base = b["bench"].get("baseline", "fp16")
    rows = [[n, f_mib(t[k]["weights_mib"]), f_ratio(t[k]["prefill_ratio"]), f_ratio(t[k]["decode_ratio"]),
             f_pct(delta(r, n))] for n, k in [("baseline-fp16", base)] + pairs if n in r and k in t]
    doc.h2("Accuracy against efficiency")
    doc.table(["method", "weights MiB", f"prefill vs {base}", f"decode vs {base}", "perplexity vs fp32"], rows,
              f"Memory, speed and accuracy of one model: the weights and the time ratios come from one "
              f"side-by-side run, where every model computes in {escape(base)} "
              f"({b['bench']['repeats']} round-robin repeats, Hugging Face generate(), "
              f"{escape(pr.device_of(b))}), the perplexities from the runs of "
              f"{doc.label_of('headline-table') or 'the appendix'}.",
              widths=[4.5, None, None, None, None])
    x = tradeoff_facts(r, t, pairs, base)
    if x:
        doc.p(
            "<b>The trade</b> (weights as the evaluation runs store them; the bench's copies above keep their "
            f"unquantized tensors in fp16, so those parts are half the size). Within 1% of fp32's perplexity, the "
            f"smallest model is {escape(x['best8'][0])}: "
            f"{f_mib(x['best8'][1])} MiB, {f_ratio(x['best8'][2])} smaller than fp32, at {f_pct(x['best8'][3])}. "
            f"The smallest in the table is {escape(x['small'][0])} ({f_mib(x['small'][1])} MiB, "
            f"{f_ratio(x['small'][2])} smaller) at {f_pct(x['small'][3])}. Through generate() "
            + (f"no quantized method is faster than {base} here: decode takes {f_ratio(x['lo'])} to "
               f"{f_ratio(x['hi'])} {base}'s time, because every layer adds dequantization work to a step "
               "whose time is launches, not bytes. So at this size" if x["lo"] >= 1 else
               f"decode takes {f_ratio(x['lo'])} to {f_ratio(x['hi'])} {base}'s time. So at this size")
            + " quantization buys memory, paid for in "
            "perplexity (little at 8 bits, much at 4) and in speed (unless the decode path removes the "
            "overhead: " + heading_number("speed") + "). On a device where the weights barely fit, the memory is "
            "what counts."
        )


def supporting(doc: Doc, s: Study) -> None:
    """The appendix's share of Part 2: the per-layer error and memory against perplexity."""
    c = s.compare
    if c:
        doc.figure(pr.compare_figures(c)["error"], "Per-layer 4-bit reconstruction error: NF4 sits below FP4 and "
                   "linear int4 on every layer, not on average only.", max_height_cm=9)
    g = s.headline
    if g and doc.figure(pr.group_figures(g)["pareto"],
                        "Weight memory against perplexity, every method of "
                        + (doc.label_of("headline-table") or "the headline table")
                        + "; the dashed line joins the methods that no other beats on both. Below: "
                        "the methods within 3% of the best perplexity, where the 8-bit schemes crowd.",
                        max_height_cm=pr.PARETO_HEIGHT_CM):
        doc.refs["pareto"] = doc.n_fig


def tradeoff_facts(r: dict, t: dict, pairs, base: str) -> dict | None:
    """The smallest method within 1% of fp32, the smallest of all, and the decode ratios."""
    fp32 = r["baseline-fp32"]["memory"]["weights_mib"]
    rows = [(n, r[n]["memory"]["weights_mib"], fp32 / r[n]["memory"]["weights_mib"], delta(r, n))
            for n in r if not registry.is_baseline(r[n]) and not registry.of(r[n])["selective"]]
    near = [x for x in rows if x[3] < 1.0]
    ratios = [t[k]["decode_ratio"] for n, k in pairs if n in r and k in t]
    if not rows or not near or not ratios:
        return None
    return {"best8": min(near, key=lambda x: x[1]), "small": min(rows, key=lambda x: x[1]),
            "lo": min(ratios), "hi": max(ratios)}
