"""Part 1: INT8 from scratch, whole model against selective, and the per-block sensitivity.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
from report.common import (
    BAND_NOTE,
    Study,
    band,
    delta,
    full_precision_mib,
    heading,
    heading_number,
    method,
    model_label,
    tie,
)
from report.doc import Doc
from report.formats import f_band, f_mib, f_ms, f_pct, f_ppl, f_timing
from report.sections.closing import cite
from report.settings import latency_of, latency_spread, setting_facts, settings_sentence, short_name
from study import registry


def selective(doc: Doc, s: Study) -> None:
    doc.h2("Whole model against selective quantization")
    g = s.find_group("scratch-int8-per_channel")
    if not g:
        doc.p("Not measured in these results.")
        return
    x = selective_facts(s, g)
    text = (
        f"Quantizing every block linear and {x['embeddings']} to INT8 (per channel) takes "
        f"the weights from {f_mib(x['fp32_mib'])} to {f_mib(x['whole_mib'])} MiB at "
        f"{f_pct(x['whole_delta'])} perplexity."
    )
    for sel in x["selective"]:
        text += (
            f" Quantizing only blocks {', '.join(map(str, sel['blocks']))} "
            f"({', '.join(sel['components'])}) costs {f_pct(sel['delta'])} but saves "
            f"only {f_mib(sel['saved_mib'])} MiB ({sel['share_pct']:.1f}% of what the "
            "whole model saves)."
        )
    doc.p(
        text + " Selective quantization is how to trade: keep the parts that hurt most in full "
        "precision and quantize the rest; the sensitivity scan below says which parts "
        "those are."
    )
    sens = s.sensitivity
    if not sens:
        return
    y = sensitivity_facts(sens)
    doc.h2("Sensitivity: one block, or one component type, at a time")
    doc.p(
        f"Each of the {y['n_blocks']} blocks was quantized alone (INT8, {escape(y['scheme'])}), "
        "then each component type in every block, against a base perplexity of "
        f"{f_ppl(y['base_ppl'])} ({escape(y['model'])}, L={y['L']} S={y['S']}, "
        f"{y['tokens']:,} tokens, {escape(y['device'])}"
        + (f": windows that do not overlap, half as many as at stride {y['L'] // 2} and with less context per "
           "token, which is why its base differs; each change is against this base, on the same windows"
           if y["S"] == y["L"] else "")
        + f"). The largest rises, blocks "
        f"{', '.join(b for b, _ in y['top3'])} ({', '.join(f_pct(d) for _, d in y['top3'])}), are not ranked: "
        "single-block changes this small are within the noise of rounding. "
        f"{y['small']} of {y['n_blocks']} blocks move "
        f"perplexity by less than 0.02%, and {y['negative']} lower it, by up to {f_pct(y['lowest'])}: at INT8 a "
        "single block moves it about as far down as up. By component, "
        f"{escape(y['most'][0])} is the most sensitive ({f_pct(y['most'][1])} over "
        f"{y['most'][2]} modules) and {escape(y['least'][0])} the least "
        f"({f_pct(y['least'][1])})." + scan_against_selective(x, y)
    )
    doc.figure(
        pr.sensitivity_figure(sens),
        "Perplexity change with one block (left) or one component type in every block (right) quantized to "
        f"INT8: the largest rise from one block is {f_pct(y['top3'][0][1])} (block {y['top3'][0][0]}), and "
        f"{escape(y['most'][0])} shows the largest rise of the component types (no band: the scan keeps no "
        "windows).",
    )
    doc.label("sensitivity")


def selective_facts(s: Study, g: tuple) -> dict:
    r = s.runs(g)
    whole = r["scratch-int8-per_channel"]
    fp32, whole_mib = r["baseline-fp32"]["memory"]["weights_mib"], whole["memory"]["weights_mib"]
    selective = []
    for n in (n for n in r if registry.of(r[n])["selective"]):
        st = r[n]["method"]["settings"]
        saved = fp32 - r[n]["memory"]["weights_mib"]
        selective.append(
            {
                "blocks": st.get("blocks") or [],
                "components": st.get("components") or [],
                "delta": delta(r, n),
                "saved_mib": saved,
                "share_pct": 100 * saved / (fp32 - whole_mib),
            }
        )
    return {
        "embeddings": "the tied embedding/output matrix"
        if whole["method"]["settings"].get("tied_output")
        else "the embeddings",
        "fp32_mib": fp32,
        "whole_mib": whole_mib,
        "whole_delta": delta(r, "scratch-int8-per_channel"),
        "selective": selective,
    }


def scan_against_selective(x: dict, y: dict) -> str:
    """How the selective run's blocks (chosen before the scan) stand against the scan's most sensitive."""
    top = [b for b, _ in y["top3"]]
    out = ""
    for sel in x["selective"]:
        blocks = [str(b) for b in sel["blocks"]]
        hit = [b for b in blocks if b in top]
        out += (f" The selective run's blocks {', '.join(blocks)} were fixed before the scan"
                + (f"; block{'' if len(hit) == 1 else 's'} {' and '.join(hit)} {'is' if len(hit) == 1 else 'are'} "
                   f"among its three largest rises ({', '.join(top)})." if hit else
                   f", and none is among its three largest rises ({', '.join(top)})."))
    return out


def scope_words(scope: str) -> str:
    """A record's peak scope in the report's words: its field names said in words."""
    return scope.replace("their own peak_bytes", "each its own peak, in the record")


def sensitivity_facts(sens: dict) -> dict:
    sv, p = sens["sensitivity"], sens["perplexity"]
    blocks = sorted(sv["block"], key=lambda b: -b["delta_pct"])
    comps = sorted(sv["component"], key=lambda c: -c["delta_pct"])
    return {
        "n_blocks": len(sv["block"]),
        "scheme": sens["method"]["settings"].get("scheme", ""),
        "base_ppl": sv["baseline_ppl"],
        "model": model_label(sens),
        "L": p["max_length"],
        "S": p["stride"],
        "tokens": p["n_tokens_scored"],
        "device": pr.device_of(sens),
        "top3": [(b["block"], b["delta_pct"]) for b in blocks[:3]],
        "top3_sum": sum(b["delta_pct"] for b in blocks[:3]),
        "total": sum(b["delta_pct"] for b in sv["block"]),
        "small": sum(abs(b["delta_pct"]) < 0.02 for b in sv["block"]),
        "negative": sum(b["delta_pct"] < 0 for b in sv["block"]),
        "lowest": blocks[-1]["delta_pct"],
        "most": (comps[0]["component"], comps[0]["delta_pct"], comps[0].get("n_modules", "?")),
        "least": (comps[-1]["component"], comps[-1]["delta_pct"]),
    }


def part1(doc: Doc, s: Study) -> None:
    doc.h1(heading("part1", "Part 1: INT8 from scratch"), key="part1")
    g = s.headline
    group_sizes = sorted({((r.get("method") or {}).get("settings") or {}).get("group_size") for r in s.records
                          if (r.get("method") or {}).get("name") == "scratch-int8-group64"} - {None})
    gs = str(group_sizes[0]) if group_sizes else "g"
    doc.p(
        "<b>The rules.</b> The schemes are LLM.int8()'s absmax scales " + cite("llm-int8") + " without its "
        "outlier split. No quantization library: <i>part1_quantize_scratch.py</i> uses PyTorch "
        "tensors only. Weights are stored as int8 tensors (and their scales), so memory really "
        "drops; activations stay in the model's own precision (float32, or float16 on the GPU); "
        "norms and biases are not quantized. The script quantizes the whole model, or only chosen "
        "decoder blocks (--blocks) and components (--components attn, ffn, or finer)."
    )
    doc.p(
        "<b>The schemes.</b> A linear layer's weight W is taken as (out, in); GPT-2's Conv1D stores "
        "(in, out) and is transposed first. For each output row i:"
    )
    doc.bullets([
        "<b>symmetric per channel</b>: s<sub>i</sub> = max<sub>j</sub>|W<sub>ij</sub>| / 127, "
        "q<sub>ij</sub> = clamp(round(W<sub>ij</sub> / s<sub>i</sub>), −127, 127), so W ≈ q·s;",
        "<b>symmetric per tensor</b>: one s = max|W| / 127 for the whole matrix: one large weight "
        "stretches every row's step;",
        "<b>asymmetric per channel</b>: the row's range [min(W<sub>i</sub>, 0), max(W<sub>i</sub>, 0)] "
        "mapped onto 256 levels: s<sub>i</sub> = (max − min) / 255, an int8 zero point "
        "z<sub>i</sub> = round(−min / s<sub>i</sub>) − 128, q = clamp(round(W / s<sub>i</sub>) + "
        "z<sub>i</sub>, −128, 127), W ≈ (q − z<sub>i</sub>)·s<sub>i</sub>;",
        f"<b>group-wise</b>: symmetric, one scale for each run of {gs} consecutive inputs of a row.",
    ])
    doc.p(
        "<b>Storage.</b> Each quantized layer keeps the int8 codes (out × in bytes), the scales in "
        "the model's dtype (out values, one, or out × in/" + gs + ") and the zero points (out "
        "bytes, asymmetric only). The token embedding is stored the same way (int8 rows, a scale "
        "per token); where the output layer is tied to it (GPT-2, SmolLM2) the output layer reads "
        "the same int8 table, so it is stored once."
    )
    doc.p(
        "<b>Forward.</b> y = (x · q<super>T</super>) · s + b: "
        "the int8 weight is cast to x's dtype inside the matmul and the per-channel scale is "
        "applied to the output, after the matmul; the asymmetric scheme subtracts "
        "sum(x)·z before scaling; the group-wise scheme, whose scale varies along the input, "
        "dequantizes first. The fast path computes the same thing in one kernel: a Triton GEMV on "
        "the GPU that reads int8 and dequantizes in registers, a C++ kernel on the CPU; every "
        "fast-path run checks its layers against dequantize-then-matmul."
    )
    if g is None:
        return
    r = s.runs(g)
    names = [method(x) for x in pr.by_family(s.groups[g]) if registry.of(x)["family"] in ("baseline", "scratch-int8")]
    scopes = {r[n]["memory"].get("peak_scope") for n in names}                  # one scope: a peak column
    bands = {n: band(r, n) for n in names if n != "baseline-fp32"}      # each a bootstrap: computed once
    banded = any(bands.values())                                         # a column only where a run has one
    rows = []
    for n in names:
        pre, dec = latency_spread(r[n])
        m = r[n]["memory"]
        rows.append([escape(short_name(r[n])), f_mib(m["weights_mib"]), f_mib(m.get("disk_mib")),
                     f_mib(m.get("peak_mib")) if len(scopes) == 1 else "–",
                     f_timing(pre, lines=True), f_timing(dec, lines=True),
                     f_ppl(r[n]["perplexity"]["ppl"]), f_pct(delta(r, n))]
                    + (["–" if n == "baseline-fp32" else f_band(bands[n])] if banded else []))
    scope = next(iter(scopes)) if len(scopes) == 1 else None
    doc.table(["method", "weights MiB", "disk MiB", "peak MiB", "prefill ms", "decode ms/tok", "perplexity",
               "vs fp32"] + (["95% band"] if banded else []), rows,
              "Part 1 before and after: the whole model under each INT8 scheme, and a selective model. "
              + settings_sentence(setting_facts(r["baseline-fp32"]))
              + " Under each timing median: its p10–p90."
              + (f" Peak: {escape(scope_words(scope))}." if scope else "") + (" " + BAND_NOTE if banded else ""),
              widths=[3.6, 1.6, 1.2, 1.2, 1.55, 1.55, 1.85, 1.4, 2.5] if banded else [5.0] + [1.7] * 7,
              markup=True)
    doc.label("part1-table", "Table")
    x = part1_facts(r)
    text = []
    if x["sel"]:
        a = x["sel"]
        text.append(
            f"<b>Latency.</b> The table's timings are single runs, one after another: whole-model INT8 (per "
            f"channel) decodes in {f_ms(a['whole'][1])} ms per token against fp32's {f_ms(a['fp32'][1])}. On this "
            "GPU a step of a model this small is bound by kernel launches and Python, not by reading weights, so "
            "fewer weight bytes do not make it faster, and these runs, one after another, do not compare; "
            + heading_number("speed") + " compares speed side by side."
        )
    if x["q4"]:
        q = x["q4"]
        text.append(
            f"Part 1's 4-bit models ({f_mib(q['q4_mib'])} MiB) are larger than its whole-model INT8 "
            f"({f_mib(q['int8_mib'])} MiB): they quantize the block linears only and keep the "
            f"{'tied ' if q['tied'] else ''}embedding in full precision ({f_mib(q['q4_full_mib'])} MiB), "
            "while INT8 stores it as int8 rows."
        )
    flips = ranking_flips(s, g)
    if flips:
        text.append(flip_sentence(flips))
    if text:
        doc.p(" ".join(text))
    selective(doc, s)


def ranking_flips(s: Study, g: tuple) -> list[dict]:
    """Pairs of whole-model INT8 schemes ranked one way on the headline group and the other way on
    another group of the same model (another device, another token count), with each group's
    band of their difference where the records keep their windows."""
    def int8(runs):
        return {n: v for n, v in runs.items() if registry.of(v)["family"] == "scratch-int8"
                and not registry.of(v)["selective"]}
    head = s.runs(g)
    mine = int8(head)
    flips = []
    for k in s.ppl_groups():
        other = s.runs(k)
        if k == g or k[0] != g[0] or "baseline-fp32" not in other:
            continue
        theirs = int8(other)
        names = sorted(set(mine) & set(theirs))
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                here = delta(head, a) < delta(head, b)
                there = delta(other, a) < delta(other, b)
                if here != there:
                    flips.append({"a": a, "b": b, "groups": (g, k),
                                  "deltas": ((delta(head, a), delta(head, b)), (delta(other, a), delta(other, b))),
                                  "ties": (tie(head, a, b), tie(other, a, b))})
    return flips


def flip_sentence(flips: list[dict]) -> str:
    """The flips, each with what the bands say of it."""
    parts = []
    for f in flips:
        (ha, hb), (oa, ob) = f["deltas"]
        said = {True: "a tie (the band of their difference holds zero)", False: "ranked beyond the noise",
                None: "no band measured"}
        parts.append(f"{escape(f['a'])} and {escape(f['b'])} rank one way on {escape(f['groups'][0][5])} "
                     f"({f_pct(ha)} against {f_pct(hb)}, {f['groups'][0][4]:,} tokens) and the other on "
                     f"{escape(f['groups'][1][5])} ({f_pct(oa)} against {f_pct(ob)}, {f['groups'][1][4]:,} "
                     "tokens)" + (": no band was measured for either order" if f["ties"] == (None, None) else
                                  (f": in both {said[f['ties'][0]]}" if f["ties"][0] == f["ties"][1] else
                                   f": on the first {said[f['ties'][0]]}, on the second {said[f['ties'][1]]}")))
    return ("<b>Rankings that flip.</b> " + "; ".join(parts) + ". A ranking inside the noise is no ranking: "
            "the text calls such a pair a tie.")


def part1_facts(r: dict[str, dict]) -> dict:
    lat = {n: latency_of(r[n]) for n in r}
    sel = next((n for n in r if registry.of(r[n])["selective"]), None)
    have = sel and all(None not in lat.get(n, (None,)) for n in ("baseline-fp32", "scratch-int8-per_channel", sel))
    q4 = next((n for n in ("scratch-int4-nf4", "scratch-int4-int4") if n in r), None)
    whole = r.get("scratch-int8-per_channel")
    return {
        "sel": {"fp32": lat["baseline-fp32"], "whole": lat["scratch-int8-per_channel"], "sel": lat[sel]}
        if have else None,
        "q4": {"q4_mib": r[q4]["memory"]["weights_mib"], "int8_mib": whole["memory"]["weights_mib"],
               "q4_full_mib": full_precision_mib(r[q4]),
               "tied": bool(whole["method"]["settings"].get("tied_output"))}
        if q4 and whole and full_precision_mib(r[q4]) and
        r[q4]["memory"]["weights_mib"] > whole["memory"]["weights_mib"] else None,
    }
