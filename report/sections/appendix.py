"""The appendix: every memory and perplexity table, and the list of results files.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
from plots import models as pm
from report.common import Study, group_label, method, model_label
from report.doc import Doc
from report.formats import f_mib, f_pct, f_ppl, mib, pct_change


def memory_ppl_tables(doc: Doc, s: Study) -> None:
    doc.appendix("every group of comparable runs", key="appendix-groups")
    doc.p(
        "Why the sizes change: an INT8 weight takes 1 byte instead of 4 (fp32) or 2 (fp16), a "
        "4-bit weight half a byte; each scheme adds its scales (one float per output channel, "
        "or per block of 64) and keeps some tensors in full precision: norms and biases "
        "everywhere, and in bitsandbytes the embeddings and the output layer too. The columns "
        "below split every model's bytes that way. Why perplexity changes: rounding every "
        "weight to one of 256 (8-bit) or 16 (4-bit) levels adds an error proportional to the "
        "step between levels; a scale per small group keeps the step small, one scale for a "
        "whole matrix lets a single large weight stretch it."
    )
    text = peak_text(s)
    if text:
        doc.p(text)
    for k in s.memory_groups():
        rs = s.groups[k]
        meaningful = pr.perplexity_means_something(rs[0])
        base = next((r["perplexity"]["ppl"] for r in rs if method(r) == "baseline-fp32"), None)
        rows = []
        for r in rs:
            m, q = r["memory"], r.get("quantization") or {}
            row = [
                method(r),
                f_mib(m["weights_mib"]),
                f_mib(mib(q.get("quantized_weights"))),
                f_mib(mib(q.get("scales_and_zero_points"))),
                f_mib(mib(q.get("full_precision"))),
                f_mib(m.get("disk_mib")),
                f_mib(m.get("peak_mib")),
            ]
            if meaningful:
                ppl = r["perplexity"]["ppl"]
                row += [f_ppl(ppl), f_pct(pct_change(ppl, base)) if base else "–"]
            rows.append(row)
        head = ["method", "weights", "codes", "scales", "full prec.", "disk", "peak"]
        widths = [5.0] + [None] * 6
        if meaningful:
            head += ["perplexity", "vs fp32"]
            widths += [None, None]
        doc.h2(group_label(k))
        doc.table(
            head,
            rows,
            f"{escape(model_label(rs[0]))}, all sizes in MiB: the weights in "
            "memory, split into quantized codes, scales/zero points and "
            "full-precision tensors; the size on disk; the peak memory of the run's perplexity pass "
            + ("(CUDA max allocated, weights included)." if pr.device_kind(rs[0]) == "cuda" else
               "(the rise of the process's peak RSS during the pass: it leaves out weights loaded "
               "before it and counts the backend's own buffers, such as llama.cpp's, so compare it "
               "only between runs of one backend)."),
            widths,
        )
        names = pr.group_figures(k)
        if meaningful and k == s.headline:
            doc.p(f"Figure {doc.refs.get('pareto', '?')}, in the supporting appendix, plots its memory against "
                  "perplexity.")
        elif meaningful:
            doc.figure(names["pareto"], pareto_caption(s.runs(k)), max_height_cm=pr.PARETO_HEIGHT_CM)
        else:
            doc.figure(names["memory"], memory_caption(s.runs(k)), max_height_cm=12)


def pareto_caption(r: dict) -> str:
    """A group's memory-against-perplexity figure, with its own takeaway: the runs on its front."""
    pts = {(v["memory"]["weights_mib"], v["perplexity"]["ppl"]): n for n, v in r.items()}
    front = [pts[p] for p in pm.frontier(list(pts))]
    return ("Memory against perplexity; the dashed line joins the runs no other run beats on both: "
            + ", ".join(f"{escape(n)} ({f_mib(r[n]['memory']['weights_mib'])} MiB)" for n in front)
            + ". Below: the methods within 3% of the best perplexity, each labelled.")


def memory_caption(r: dict) -> str:
    """A group's weight-memory figure (random weights: no perplexity), with its own takeaway."""
    mib_of = {n: v["memory"]["weights_mib"] for n, v in r.items()}
    big, small = max(mib_of, key=mib_of.get), min(mib_of, key=mib_of.get)
    return (f"Weight memory by method: {escape(small)} holds the least ({f_mib(mib_of[small])} MiB), "
            f"{escape(big)} the most ({f_mib(mib_of[big])} MiB).")


def appendix(doc: Doc, s: Study) -> None:
    doc.appendix("the results files", key="appendix-files")
    rows = [
        [
            r["_file"],
            model_label(r)
            if isinstance(r.get("model"), dict)
            else str(r.get("stand_in") or "").split(" ")[0] + " (stand-in)",
            pr.device_of(r),
            str(r.get("timestamp", ""))[:16].replace("T", " "),
        ]
        for r in s.records
    ]
    doc.table(
        ["file", "model", "device", "measured (UTC)"],
        rows,
        "Every file this report read. Each records its command, settings, text sha256, "
        "device and library versions.",
        widths=[7.6, 3.3, 3.4, 2.2],
    )


def supporting(doc: Doc, s: Study) -> None:
    """An appendix: the figures and tables the main sections lean on but need not show."""
    from report.sections import bonus, limitations, part2
    doc.appendix("supporting figures and tables", key="appendix-support")
    doc.h2("Part 2: where 4-bit error comes from, and memory against perplexity")
    part2.supporting(doc, s)
    bonus.equal_bits(doc, s)
    limitations.open_questions(doc, s)


def peak_facts(s: Study) -> dict | None:
    """On the headline group: each run's peak above its weights (MiB), and which runs' peaks held the
    unquantized fp32 copy for the KL divergence (a GPU record written before peak_excludes_reference)."""
    g = s.headline
    if g is None or g[6] != "cuda":
        return None
    r = s.runs(g)
    if "baseline-fp32" not in r:
        return None
    above = {n: v["memory"]["peak_mib"] - v["memory"]["weights_mib"] for n, v in r.items()
             if v["memory"].get("peak_mib") is not None}
    held = [n for n, v in r.items() if v.get("divergence") and not v["memory"].get("peak_excludes_reference")]
    return {"group": g, "above": above, "held": held, "ref_mib": r["baseline-fp32"]["memory"]["weights_mib"]}


def peak_text(s: Study) -> str | None:
    """What each peak holds, from the headline group's records (a GPU's max allocated memory)."""
    x = peak_facts(s)
    if x is None:
        return None
    a, held = x["above"], x["held"]
    say = lambda n: f"{escape(n)} {f_mib(a[n])}" if n in a else None     # noqa: E731
    base = [t for t in (say("baseline-fp32"), say("baseline-fp16"), say("scratch-int8-per_channel")) if t]
    text = ("<b>What a peak holds.</b> A run's peak (the windowed perplexity pass, CUDA max allocated) is its "
            "weights plus one window's working set: the logits (window × vocabulary) in the compute dtype and "
            "again in fp32 for the loss, and the activations. Above the weights, in MiB: " + ", ".join(base)
            + " (Part 1's INT8 dequantizes each weight matrix before its matmul, the tied embedding used as "
            "output layer the largest).")
    if held:
        text += (f" The {len(held)} runs that measured a KL divergence (GPTQ, AWQ, round-to-nearest) took their "
                 f"peaks while an unquantized fp32 copy of the model ({f_mib(x['ref_mib'])} MiB), kept for that "
                 "divergence, sat on the GPU: their peaks are not comparable with the others', and nothing is "
                 "read from them.")
    if "bnb-int8" in a and "baseline-fp16" in a:
        text += (f" LLM.int8() adds {f_mib(a['bnb-int8'])} MiB, {a['bnb-int8'] / a['baseline-fp16']:.1f}× fp16's "
                 "working set: its matmuls quantize each activation row to int8, keep int32 outputs and split "
                 "outlier columns into an fp16 matmul, and the records do not break that down: an open "
                 "question, not an explanation.")
    return text
