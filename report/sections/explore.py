"""The exploration directions: GPTQ, AWQ and round-to-nearest on one grid, BF16, the targets,
and how much the calibration text moves the result.
"""
from __future__ import annotations

import statistics
from xml.sax.saxutils import escape

import plot_results as pr
from report.common import Study, band, delta, group_label, heading, heading_number, noise_said, tie
from report.doc import Doc
from report.formats import f_band, f_mib, f_pct, f_ppl, f_ratio
from report.sections.closing import cite
from study import plan, registry, standins

CALIBRATED_FAMILIES = ("rtn", "gptq", "awq")
# The study's targets, fixed before the runs, against round-to-nearest at equal bits and grouping: (calibrated
# run, its round-to-nearest twin, the largest ratio of their perplexity changes that meets it).
TARGETS = (("gptq-w4-pc", "rtn-w4-pc", 0.5), ("gptq-w4-pc-ao", "rtn-w4-pc", 0.5),
           ("gptq-w3-g64", "rtn-w3-g64", 0.5), ("awq-w4-g64", "rtn-w4-g64", 0.7))
# the calibration sources as the text names them (calibrated/calibration.py holds each one's origin)
SOURCE_WORDS = {"enwiki": "2016 Wikipedia, the default", "botchan": "a novel", "wikitext2-test-tail":
                "the test split's unscored end"}
BPW_TARGET = 4.6          # at most this many bits per weight, the best calibrated 4-bit beats NF4


def disagree_note(s: Study, gains: dict) -> str:
    """Where two groups' calibration paragraphs disagree on GPTQ against round-to-nearest (a tie in
    one, beyond the noise in the other): which holds more tokens, said after the last of them."""
    said = {k: t for k, t in gains.items() if t is not None}
    if len(said) < 2 or len(set(said.values())) < 2 or list(gains)[-1] not in said:
        return ""
    tokens = {k: s.runs(k)["gptq-w4-g64"]["perplexity"]["n_tokens_scored"] for k in said}
    big = max(tokens, key=tokens.get)
    small = min(tokens, key=tokens.get)
    return (f" The two disagree on GPTQ against round-to-nearest: {tokens[small]:,} tokens are "
            f"{100 * tokens[small] / tokens[big]:.0f}% of the {tokens[big]:,} that call it "
            + ("a tie." if said[big] else "beyond the noise."))


def explore_facts(s: Study) -> dict | None:
    """The exploration grid's group (the most tokens with AWQ in it) and what the text says of
    it: plain numbers, nothing formatted."""
    g = s.find_group("awq-w4-g64", "rtn-w4-g64") or s.find_group("rtn-w4-g64")
    if g is None:
        return None
    r = s.runs(g)
    grid = [n for n in r if registry.of(r[n])["family"] in CALIBRATED_FAMILIES]
    targets = []
    for q, rtn, limit in TARGETS:
        if q in r and rtn in r:
            ratio = delta(r, q) / delta(r, rtn)
            targets.append({"method": q, "against": rtn, "limit": limit, "ratio": ratio, "met": ratio <= limit})
    nf4 = delta(r, "bnb-nf4") if "bnb-nf4" in r else None
    four = [n for n in grid if registry.of(r[n])["bits"] == 4 and registry.of(r[n])["family"] != "rtn"]
    best = min(four, key=lambda n: r[n]["perplexity"]["ppl"], default=None)
    best_within = min((n for n in four if (pr.layer_bits(r[n]) or 99) <= BPW_TARGET),
                      key=lambda n: r[n]["perplexity"]["ppl"], default=None)
    proxy = {}
    for n in grid:
        blocks = (r[n].get("quantize") or {}).get("blocks") or []
        ratios = [ly["proxy_error"] / ly["proxy_error_rtn"] for b in blocks for ly in b.get("layers", [])
                  if ly.get("proxy_error_rtn")]
        if ratios:
            proxy[n] = statistics.median(ratios)
    cal = {}
    for k in s.ppl_groups():
        rk = s.runs(k)
        runs = {n: v for n, v in rk.items() if registry.of(v)["key"] == "gptq-w4"
                and v["method"]["settings"]["group_size"] == plan.CALIBRATED_GROUP}
        if len(runs) >= 2 and "baseline-fp32" in rk:
            cal[k] = {n: (v["method"]["settings"]["calibration"]["source"], delta(rk, n)) for n, v in runs.items()}
    return {"group": g, "runs": r, "grid": grid, "targets": targets, "nf4": nf4, "best": best,
            "best_within": best_within, "proxy": proxy, "calibration": cal}


def rtn_twin(runs: dict[str, dict], name: str) -> str | None:
    """The round-to-nearest run on the same bits and grouping as this calibrated one."""
    st = runs[name]["method"]["settings"]
    return next((n for n, v in runs.items() if registry.of(v)["family"] == "rtn"
                 and v["method"]["settings"]["bits"] == st["bits"]
                 and v["method"]["settings"]["group_size"] == st["group_size"]), None)


def finding(s: Study) -> str | None:
    """The summary's line on the exploration: the best calibrated 4-bit against its
    round-to-nearest twin and NF4, and how many of the targets are met."""
    x = explore_facts(s)
    if x is None or x["best"] is None:
        return None
    r, best = x["runs"], x["best"]
    twin = rtn_twin(r, best)
    d = r[best].get("divergence")
    return (f"<b>Calibrated 4-bit ({heading_number('explore')}).</b> {escape(best)} moves perplexity by "
            f"{f_pct(delta(r, best))}"
            + (f" (KL divergence {d['kld_mean']:.3f})" if d else "")
            + f" at {pr.layer_bits(r[best]):.3f} bits per weight"
            + (f", against round-to-nearest's {f_pct(delta(r, twin))} on the same grid" if twin else "")
            + (f" and bitsandbytes NF4's {f_pct(x['nf4'])}" if x["nf4"] is not None else "")
            + f" ({escape(group_label(x['group']))}); {sum(t['met'] for t in x['targets'])} of the "
            f"{len(x['targets'])} targets against round-to-nearest "
            f"{'is' if sum(t['met'] for t in x['targets']) == 1 else 'are'} met.")


def unbanded_lead(r: dict, best: str, others: list[str]) -> str:
    """Where the best run keeps no per-window NLL (no band of its own): its lead over the next best, in
    points of perplexity change, against the widest band of the runs that have one; '' where it has one."""
    if band(r, best) is not None or not others:
        return ""
    runner = min(others, key=lambda n: delta(r, n))
    widths = [b[1] - b[0] for b in (band(r, n) for n in others) if b is not None]
    if not widths:
        return ""
    lead = delta(r, runner) - delta(r, best)
    return (f"; its run kept no per-window NLL, so it has no band, but its lead over {escape(runner)}, "
            f"{lead:.1f} points, is {lead / max(widths):.0f}× the widest band of the other 4-bit runs, "
            f"{max(widths):.2f} points")


def explore(doc: Doc, s: Study) -> None:
    doc.h1(heading("explore", "Exploration: GPTQ, AWQ, BF16 and a larger model"), key="explore")
    x = explore_facts(s)
    if x is None:
        doc.p("<i>No exploration runs in the results (explore_calibrated.py).</i>")
        return
    r, g = x["runs"], x["group"]
    some = next(r[n] for n in x["grid"] if r[n]["method"]["settings"].get("calibration"))
    st, cal = some["method"]["settings"], some["method"]["settings"]["calibration"]
    doc.p(
        "<b>Three ways to choose 4-bit and 3-bit codes, one storage.</b> Every method here writes the "
        "same packed layers: codes two per byte, and per group of inputs of a row (or per output "
        "channel) a scale and a uint8 zero point; 3-bit codes sit in 4-bit containers, and the "
        "bits per weight count the bytes really stored. Only the linears inside the decoder blocks "
        "are quantized; embeddings, norms and the output layer stay as loaded. "
        "<i>Round-to-nearest</i> (RTN) maps each group's minimum and maximum onto the code range and "
        "rounds. <i>GPTQ</i> " + cite("gptq") + " quantizes one column at a time and spreads each "
        "column's rounding error over the columns not yet quantized, weighted by the inverse Hessian "
        "H = 2XXᵀ of the layer's calibration inputs X; H is dampened by "
        f"{st.get('damp', 0.01):g} × its mean diagonal, inverted through a Cholesky factor, and the "
        f"updates are applied lazily in blocks of {st.get('block_size', 128)} columns; activation "
        "order (act-order) takes the columns with the largest Hessian diagonal first. <i>AWQ</i> "
        + cite("awq") + " scales each input channel by s = mean|x|^α before rounding, with α "
        "searched over a grid against the error of the whole block's output, and folds 1/s into the "
        "preceding norm or linear where the architecture allows; it then searches a clipping range "
        f"per group. Both calibrate on {cal['n_samples']} windows of {cal['seq_len']} tokens "
        f"(seed {cal['seed']}) of {escape(cal['description'])} ({escape(cal['licence'])}); a check "
        f"finds {cal['overlap_check']['shared_spans']} spans of {cal['overlap_check']['span_tokens']} "
        "tokens shared with the scored text, and a text that shares any is refused."
    )
    figure = pr.group_figures(g)["bits"]
    best = x["best"]
    takeaway = (f"{best} is the best 4-bit scheme in this figure ({f_pct(delta(r, best))} at "
                f"{pr.layer_bits(r[best]):.3f} bits per weight"
                + unbanded_lead(r, best, [n for n in x["grid"] if n != best and registry.of(r[n])["bits"] == 4])
                + ")" if best else "")
    if best and x["nf4"] is not None:
        takeaway += f", against bitsandbytes NF4's {f_pct(x['nf4'])}"
    where = doc.label_of("explore-table") or "the table below"
    doc.figure(figure, f"What each bit buys, every scheme of every part on one axis (the runs of {where}, with "
               f"Part 1's, bitsandbytes' and the float casts on the same tokens). {takeaway}. 3-bit codes sit in "
               "4-bit containers: w3's memory is w4's, so its rows probe accuracy only.",
               max_height_cm=15.7)
    doc.label("explore-figure")
    bands = {n: band(r, n) for n in x["grid"]}                    # each a bootstrap: computed once
    rows, banded = [], any(bands.values())                         # a band column only where a run has one
    for n in sorted(x["grid"], key=lambda n: (-registry.of(r[n])["bits"], pr.layer_bits(r[n]) or 0,
                                              r[n]["perplexity"]["ppl"])):
        v, d = r[n], r[n].get("divergence") or {}
        secs = (v.get("quantize") or {}).get("seconds")
        rows.append([n, f"{pr.layer_bits(v):.3f}" if pr.layer_bits(v) else "–", f_mib(v["memory"]["weights_mib"]),
                     f_ppl(v["perplexity"]["ppl"]), f_pct(delta(r, n))] + ([f_band(bands[n])] if banded else [])
                    + [f"{d['kld_mean']:.3f}" if d else "–", f"{100 * d['top1_agreement']:.1f}%" if d else "–",
                       "–" if secs is None else f"{secs:.1f}"])
    # the bits and the grouping are in each name (w4, w3; pc: a scale per output channel, g64: per 64 inputs)
    doc.table(["method", "bits per weight", "MiB", "perplexity", "vs fp32"]
              + (["95% band"] if banded else []) + ["KLD", "top-1", "time s"], rows,
              f"The grid on the same tokens as every other row ({escape(group_label(g))}). Names: w4 and w3 "
              "are 4- and 3-bit codes, pc one scale per output channel, g64 one per 64 inputs of a row, ao GPTQ's "
              "act-order, cal-botchan calibrated on a novel. Bits per "
              "weight: the quantized layers' stored bytes × 8 over their weights; MiB: the weights' memory. KLD: "
              "KL(fp32 ‖ method) per scored token, in nats; top-1: the two models' most likely next tokens agree. "
              "Time: to quantize the model on this run's device, calibration included."
              + (" 95% band: of the change against fp32, from a paired bootstrap over the windows (a dash: that "
                 "run's record keeps no per-window NLL)." if banded else ""),
              widths=[4.0, 1.4, 1.05, 1.9, 1.7, 3.05, 1.1, 1.15, 1.15] if banded else None,
              split=True)                          # under the figure, its header row carried to the next page
    doc.label("explore-table", "Table")
    trows = [[f"{t['method']} against {t['against']}", f"≤ {t['limit']:g}", f_ratio(t["ratio"]),
              "met" if t["met"] else "missed"] for t in x["targets"]]
    w = x["best_within"]
    if x["nf4"] is not None:
        trows.append([f"best calibrated 4-bit at ≤ {BPW_TARGET:g} bits/weight beats NF4",
                      f"< {f_pct(x['nf4'])}",
                      f"{w}: {f_pct(delta(r, w))}" if w else "none at that size",
                      "met" if w and delta(r, w) < x["nf4"] else "missed"])
    doc.table(["target (perplexity change, ratio to RTN's)", "needs", "measured", "verdict"], trows,
              "Targets fixed before the runs (the ratio of a calibrated run's perplexity change to "
              "round-to-nearest's at the same bits and grouping), read from the table above.",
              widths=[7.5, None, None, None])
    doc.label("explore-targets", "Table")
    text = []
    gptq = [n for n in x["proxy"] if registry.of(r[n])["family"] == "gptq"]
    if gptq:
        lo, hi = min(x["proxy"][n] for n in gptq), max(x["proxy"][n] for n in gptq)
        q41 = standins.origin(r[gptq[0]]) == "Q4_1"
        text.append(
            "<b>What GPTQ minimizes, and what it moves.</b> On every layer GPTQ lowers the error it "
            f"minimizes, tr((W−Q)H(W−Q)ᵀ): its median over the layers is {lo:.2f} to {hi:.2f} × "
            f"round-to-nearest's ({len(gptq)} GPTQ runs, every block linear)."
            + (" Perplexity moves far less. The stand-in's fp32 weights are themselves dequantized from "
               "Q4_1 (groups of 32 with a scale and a minimum): min/max rounding in groups of 64 may land "
               "close to that lattice (not measured), while GPTQ's error feedback moves weights off it. The published "
               f"gains {cite('gptq')} (OPT-125M: 37.28 to 31.12 at 4-bit) are on weights never rounded before."
               if q41 else ""))
    told = set()                                     # each calibration source described once, at first use
    gains = {}                                       # per group: GPTQ against round-to-nearest, a tie or not
    for k, c in x["calibration"].items():
        rk = s.runs(k)
        gains[k] = tie(rk, "rtn-w4-g64", "gptq-w4-g64") if {"rtn-w4-g64", "gptq-w4-g64"} <= set(rk) else None
        new = [src for src, _ in c.values() if src in SOURCE_WORDS and src not in told]
        told.update(new)
        spread = max(dv for _, dv in c.values()) - min(dv for _, dv in c.values())
        gain = (delta(rk, "rtn-w4-g64") - delta(rk, "gptq-w4-g64")) if {"rtn-w4-g64", "gptq-w4-g64"} <= set(rk) \
            else None
        text.append(
            f"<b>Calibration text.</b> GPTQ 4-bit g64 on {escape(group_label(k))}: "
            + ", ".join(f"{escape(src)} {f_pct(dv)}" for src, dv in sorted(c.values(), key=lambda i: i[1]))
            + (" (" + "; ".join(f"{escape(src)}: {SOURCE_WORDS[src]}" for src in sorted(new)) + ")" if new else "")
            + f". The source moves the perplexity change by {spread:.2f} points"
            + ("" if gain is None else
               f"; GPTQ's change (on the default source) is {abs(gain):.2f} points "
               + ("smaller" if gain > 0 else "larger") + " than round-to-nearest's"
               + noise_said(rk, "gptq-w4-g64", "rtn-w4-g64",
                            "GPTQ's perplexity against round-to-nearest's (in % of the latter)"))
            + "." + disagree_note(s, gains))
    bf = s.find_group("baseline-bf16")
    if bf:
        rb = s.runs(bf)
        text.append(
            f"<b>BF16.</b> The whole model cast to bfloat16 costs {f_pct(delta(rb, 'baseline-bf16'))} "
            f"({escape(group_label(bf))})"
            + (f", fp16 {f_pct(delta(rb, 'baseline-fp16'))}" if "baseline-fp16" in rb else "")
            + ": bfloat16 keeps fp32's exponent range with 8 significant bits, fp16 has 11 significant "
            "bits and a narrow range; at this size neither range nor precision binds.")
    for t in text:
        if t.startswith("<b>BF16.</b>"):
            doc.anchor("bf16")
        doc.p(t)
