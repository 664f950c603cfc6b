"""The report's first two pages: the cover with the abstract's five findings, and the map from
each question of the assignment to the one-sentence answer and the page and figure that give it.

Pages and figure numbers come from the pass before (Doc.known): build_report lays the report
out until they stop changing.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from xml.sax.saxutils import escape

import plot_results as pr
from report.common import Study, delta, heading_number, tie
from report.doc import Doc
from report.formats import f_mib, f_pct, f_ratio
from report.sections import explore as ex
from report.sections import models as mo
from report.sections import part1 as p1
from report.sections import part2 as p2
from report.sections import summary as sm


def cover(doc: Doc, s: Study, results: Path) -> None:
    """Title, what was studied (models, text, devices, dates), the stand-in note, five findings."""
    doc.p("What weight quantization does to a small language model", "title")
    models = sorted({pr.short_model(r) for r in s.records if r.get("perplexity") and pr.perplexity_means_something(r)})
    devices = sorted({pr.device_of(r) for r in s.records if r.get("environment")})
    texts = sorted({pr.text_name(r, short=True) for r in s.records if r.get("dataset")})
    doc.p(f"Memory, speed and perplexity of INT8 from scratch, bitsandbytes, GPTQ, AWQ and llama.cpp's GGUF "
          f"types, measured by one evaluator on {escape(', '.join(models) or 'no model')} "
          f"({escape(', '.join(texts))}).", "subtitle")
    doc.p(f"<b>Devices.</b> {escape('; '.join(devices))}. Report date {dt.datetime.now(dt.timezone.utc):%Y-%m-%d}.",
          "small")
    sm.title_block(doc, s, results)
    doc.h2("Abstract: five findings")
    doc.bullets(five_findings(s))
    doc.page_break()


def five_findings(s: Study) -> list[str]:
    """INT8, 4-bit NF4 against linear, calibrated 4-bit, the larger model, speed; the GGUF line
    stands in for any of them that the records cannot give."""
    items = sm.finding_items(s)
    order = ("int8", "nf4", "explore", "models", "fast", "speed", "gguf")
    m = models_finding(s)
    if m:
        items["models"] = m
    picked = [items[k] for k in order if k in items]
    if "fast" in items and "speed" in items:
        picked.remove(items["speed"])             # one speed finding: the side-by-side fast path's
    return picked[:5] or ["No comparable perplexity runs in these results."]


def models_finding(s: Study) -> str | None:
    """The answer in a few words: where the whole text has the pair at the turn, its verdict first
    (the prefix's windows are too few to rank such close models); then the prefix's pairs."""
    x = mo.models_facts(s)
    if x is None or x["small"] is None or x["unquantized"] is None:
        return None
    u, b = x["unquantized"], x["best_within"]
    small, large = escape(x["small"]), escape(x["large"])
    ufp = escape(u["method"].removeprefix("baseline-"))
    text = f"<b>A larger quantized model ({heading_number('explore')}).</b> In bits per byte (lower is better), "
    t = x["turns"][0] if len(x["turns"]) == 1 else None
    if t is not None and not (t["bpb"] < u["bpb"] and t["mib"] > u["mib"]):
        t = None
    whole = mo.whole_text_pair(s, x, u, t) if t is not None and x["key"][5] else None
    if whole is not None:
        a, c = (r["perplexity"]["bits_per_byte"] for r in whole)
        v = mo.verdict(*whole)
        text += (f"{large} in {escape(t['method'])} ({f_mib(t['mib'])} MiB) "
                 + ("beats" if v == "it wins" else "ties with" if v == "a tie" else "loses to" if v == "it loses"
                    else "scores against") + f" {small} in {ufp} ({f_mib(u['mib'])} MiB) on the whole test split "
                 f"({c:.4f} against {a:.4f}{', outside the noise' if v in ('it wins', 'it loses') else ''}). "
                 f"On the CPU's {x['key'][5]:,}-token prefix")
    else:
        text += f"{small} in {ufp} scores {u['bpb']:.4f} at {f_mib(u['mib'])} MiB. Against it"
    if b is None:
        return text + f", {large} has no run within that memory yet."
    pairs = [b] + ([t] if t is not None and t is not b else [])
    verdicts = [mo.verdict(u["record"], p["record"]) for p in pairs]
    if len(set(verdicts)) == 1 and verdicts[0] != "no noise band":
        named = " and ".join(f"{escape(p['method'])} ({f_mib(p['mib'])} MiB)" for p in pairs)
        text += (f", {named} " + ("both " if len(pairs) > 1 else "")
                 + {"a tie": "tie with it", "it wins": "beat it", "it loses": "lose to it"}[verdicts[0]])
    else:
        text += ", " + "; ".join(f"{escape(p['method'])} ({f_mib(p['mib'])} MiB): {v}" for p, v in zip(pairs, verdicts))
    text += "".join(f" ({escape(p['method'])}, its origin format, left out)"
                    for p in x["back_to_origin"] if p["model"] == x["large"] and p["mib"] <= u["mib"])
    return text + "."


# -----------------------------------------------------------------------------
# The question map: (question, where: (section key, label key), answer(s) -> sentence or None)

def a_int8(s: Study) -> str | None:
    x = sm.findings_facts(s).get("int8")
    return None if x is None else (f"Per-channel INT8 stores the weights in {f_mib(x['int8_mib'])} instead of "
                                   f"{f_mib(x['base_mib'])} MiB ({f_ratio(x['shrink'])} smaller) at "
                                   f"{f_pct(x['delta'])} perplexity.")


def a_selective(s: Study) -> str | None:
    g = s.find_group("scratch-int8-per_channel")
    if not g or not s.sensitivity:
        return None
    y = p1.sensitivity_facts(s.sensitivity)
    x = p1.selective_facts(s, g)
    sel = x["selective"][0] if x["selective"] else None
    return ((f"Selected blocks save {sel['share_pct']:.0f}% of what the whole model saves; " if sel else "")
            + f"{y['small']} of {y['n_blocks']} blocks alone move perplexity by under 0.02%; the most sensitive "
            f"component type is {escape(y['most'][0])} ({f_pct(y['most'][1])}).")


def a_bnb(s: Study) -> str | None:
    g = s.find_group("bnb-nf4", "bnb-fp4")
    if not g:
        return None
    r = s.runs(g)
    y = p2.nf4_facts(r)
    text = ", ".join(f"{n[4:].upper()} {f_pct(delta(r, n))}" for n in ("bnb-int8", "bnb-fp4", "bnb-nf4",
                                                                         "bnb-nf4-dq") if n in r)
    dq = y["dq_scales_mib"]
    return (f"Against fp32: {text}" + (f"; double quantization shrinks the scales from {f_mib(dq[0])} to "
                                       f"{f_mib(dq[1])} MiB" if dq else "") + ".")


def a_nf4(s: Study) -> str | None:
    f = sm.findings_facts(s)
    x, e = f.get("nf4"), f.get("error")
    if x is None:
        return None
    return (f"NF4's 16 levels follow the normal shape of the weights: its perplexity is "
            f"{x['lower_than_fp4']:.1f}% lower than FP4's at the same size"
            + (f" and {x['lower_than_int4']:.1f}% lower than linear int4's" if x.get("lower_than_int4") else "")
            + (f"; its error per weight is {f_ratio(e['fp4_over_nf4'])} smaller than FP4's"
               + (f", {f_ratio(e['int4_over_nf4'])} than int4's" if e.get("int4_over_nf4") else "") if e else "")
            + ".")


def a_calibrated(s: Study) -> str | None:
    x = ex.explore_facts(s)
    if x is None or x["best"] is None:
        return None
    r, best = x["runs"], x["best"]
    twin = ex.rtn_twin(r, best)
    gptq = best.replace("awq-", "gptq-") if best.startswith("awq-") else None      # GPTQ on the same grid
    said = {True: "a tie", False: "outside the noise", None: "no band"}
    return (f"{escape(best)}: {f_pct(delta(r, best))}" + (f" against round-to-nearest's {f_pct(delta(r, twin))}"
                                                          f" ({said[tie(r, twin, best)]})" if twin else "")
            + (f"; {escape(gptq)} {f_pct(delta(r, gptq))} ({said[tie(r, twin, gptq)].replace('a tie', 'ties with it')})"
               if twin and gptq in r else "")
            + f"; {sum(t['met'] for t in x['targets'])} of {len(x['targets'])} ratio targets met.")


def a_bf16(s: Study) -> str | None:
    g = s.find_group("baseline-bf16")
    if not g:
        return None
    r = s.runs(g)
    return (f"bfloat16 halves the weights ({f_mib(r['baseline-bf16']['memory']['weights_mib'])} MiB) at "
            f"{f_pct(delta(r, 'baseline-bf16'))} perplexity" + (f", fp16 {f_pct(delta(r, 'baseline-fp16'))}"
                                                                  if 'baseline-fp16' in r else "") + ".")


def a_models(s: Study) -> str | None:
    m = models_finding(s)
    return None if m is None else m.split("</b> ", 1)[1]


def a_gguf(s: Study) -> str | None:
    x = sm.findings_facts(s).get("gguf")
    if x is None:
        return None
    pushed = any("huggingface.co" in str(r["push"].get("endpoint", "")) for r in s.pushes)
    return (f"Q8_0 {f_mib(x['q8_mib'])} MiB at {f_pct(x['q8_delta'])}, {escape(x['smallest'])} "
            f"{f_mib(x['smallest_mib'])} MiB at {f_pct(x['smallest_delta'])}; "
            + ("pushed to the Hub." if pushed else "no Hub push from machines without the Hub (the path is checked "
                                                   "against a local imitation)."))


def a_speed(s: Study) -> str | None:
    f = sm.findings_facts(s)
    x, fast = f.get("speed"), f.get("fast")
    if x is None and not fast:
        return None
    text = ""
    if x:
        text += f"With generate(), {x['slower']} of {x['n']} quantized models decode slower than {x['base']}"
    if fast:
        gain = [n for n, *_ in fast["faster"]]
        text += ((", and " if text else "") + "on a static-cache path "
                 + (f"{', '.join(escape(n) for n in gain)} beat {fast['base']}" if gain
                    else f"none beats {fast['base']}") + f" ({escape(fast['device'])})")
    return text + "."


def a_choose(s: Study) -> str | None:
    from report.sections.closing import decision_rows, short_device
    rows = [x for x in decision_rows(s) if x["share"] == 0.3 and x["pick"]]
    return None if not rows else ("At 30% of fp32's memory: " + "; ".join(
        f"{escape(x['pick'])} ({f_pct(delta(x['runs'], x['pick']))}, {escape(short_device(x['group'][5]))})"
        for x in rows) + "; the table gives one pick per budget and device.")


def a_samples(s: Study) -> str | None:
    from report.sections.samples import samples_record
    rec = samples_record(s)
    if rec is None:
        return None
    eq, n = rec["samples"]["leading_tokens_equal"], rec["method"]["settings"]["new_tokens"]
    schemes = [m for m in eq if m != "baseline-fp32"]
    if not schemes:
        return None
    same = [m for m in schemes if all(e >= n for e in eq[m])]
    mild, worst = schemes[0], min(schemes, key=lambda m: sum(eq[m]))
    return ((f"{', '.join(escape(m) for m in same)} write{'s' if len(same) == 1 else ''} fp32's text word for "
             "word. " if same else "No scheme writes fp32's text word for word: ")
            + f"{escape(mild)} parts from it after {min(eq[mild])} to {max(eq[mild])} of {n} tokens, "
            f"{escape(worst)} after {min(eq[worst])} to {max(eq[worst])}.")


def a_not_run(s: Study) -> str | None:
    return "Not run: 1.5-bit (ternary) weights need quantization-aware training, which the study leaves open."


QUESTIONS = (
    ("Part 1 · INT8 from scratch, the whole model: memory and perplexity?", "part1", "part1-table", a_int8),
    ("Part 1 · The whole model against chosen blocks and components: where does INT8 hurt?", "part1",
     ("part1-table", "sensitivity"), a_selective),
    ("Part 2 · bitsandbytes 8-bit, FP4, NF4, NF4 with double quantization?", "part2", "part2-table", a_bnb),
    ("Part 2 · Why does NF4 beat linear 4-bit?", "part2", ("nf4-levels", "nf4-error-table", "part2-table"), a_nf4),
    ("Exploration · GPTQ and AWQ against round-to-nearest?", "explore", ("explore-figure", "explore-targets"),
     a_calibrated),
    ("Exploration · BF16?", "explore", "bf16", a_bf16),
    ("Exploration · A larger quantized model against a smaller unquantized one?", "explore", "models-figure",
     a_models),
    ("What does a perplexity change look like in text?", "explore", "samples-table", a_samples),
    ("Exploration · 1.5-bit and QAT?", "limits", None, a_not_run),
    ("Bonus · GGUF through llama.cpp, on the same evaluator; pushed to the Hub?", "bonus", "gguf-table", a_gguf),
    ("Does quantization make decoding faster?", "speed", "speed-figure", a_speed),
    ("Which scheme for a memory budget and a device?", "choose", "decision-table", a_choose),
)


def question_map(doc: Doc, s: Study) -> None:
    doc.h1("Where each question is answered", key="map")
    doc.p("Each question of the assignment, the one-sentence answer the records give, and where the report "
          "shows it. Percentages are perplexity changes against the same model's fp32 on the same tokens.")
    rows = []
    for question, section, label, answer in QUESTIONS:
        try:
            said = answer(s)
        except (KeyError, TypeError, ZeroDivisionError):      # a record without the field: say so, never guess
            said = None
        where = [f"§{heading_number(section).split()[-1]}"]
        for key in (label if isinstance(label, tuple) else (label or section,)):
            where.append(" ".join(x for x in (doc.label_of(key), doc.page_of(key)) if x))
        where = [w for w in where if w]
        rows.append([question, said or "Not measured in these results.", ", ".join(where)])
    doc.table(["question", "answer", "where"], rows, "The assignment's questions, answered from the records.",
              widths=[4.8, 8.4, 3.5], markup=True)
