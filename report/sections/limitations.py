"""Limitations and open questions, each stated from the records that raise it.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
import results
from report.common import Study, delta, gemv_ratios, heading, heading_number, short_group
from report.doc import Doc
from report.formats import f_pct, f_ratio


def open_questions(doc: Doc, s: Study) -> None:
    doc.h2("Open questions")
    x = open_facts(s)
    items = []
    if x["scan"]:
        y = x["scan"]
        if y["stands_out"]:
            verdict = (
                f"block {y['top_block']} stands out ({f_pct(y['top_delta'])}, against a median "
                f"|change| of {y['median_abs']:.3f}%): it is the first to keep in full precision."
            )
        else:
            verdict = (
                "at this precision no block stands out: the largest single-block change "
                f"is {f_pct(y['top_delta'])} (block {y['top_block']}), the "
                f"median |change| {y['median_abs']:.3f}%."
            )
        items.append(
            f"<b>Which blocks to keep in full precision?</b> In the scan, {verdict} By "
            "component, the most sensitive types are "
            + " and ".join(f"{escape(c)} ({f_pct(d)})" for c, d in y["top_components"])
            + f" (all types together: {f_pct(y['components_sum'])}); at lower precision those are "
            "the first candidates to keep at more bits. A 4-bit sensitivity scan would answer the "
            "question where it matters most."
        )
    if x["asymmetric"]:
        asym, sym = x["asymmetric"]
        other = other_model_int8(s, x["group"])
        items.append(
            f"<b>Does the gap between asymmetric ({f_pct(asym)}) and symmetric per-channel INT8 "
            f"({f_pct(sym)}) hold on real weights?</b> Both give each output channel 256 levels. "
            "The stand-in's weights were themselves dequantized from 4-bit blocks, so its "
            "re-quantization errors are correlated and luck weighs more"
            + (f". On {escape(other['model'])}, the second real model ({escape(other['where'])}), it reverses: "
               f"asymmetric {f_pct(other['asym'])} against per-channel {f_pct(other['sym'])}, so the gap is the "
               "model's, not the scheme's; the real gpt2 weights would add a third answer." if other
               else "; the real gpt2 weights would tell.")
        )
    if len(s.size_l2_rows) >= 2:
        top = s.size_l2_rows[-1]
        items.append(
            f"<b>Speed at scale.</b> At {escape(top['model'])}'s size the weights' bytes are "
            f"{top['fp16_bytes_share']:.0%} of fp16's fused step, yet Part 1's INT8 takes "
            f"{f_ratio(top['scratch-int8-fast']['vs_fp16_fused'])} fp16's time. Without the bytes (every weight "
            f"read from L2, the model-size bench's diagnostic) INT8's step still takes "
            f"{f_ratio(top['scratch-int8-fast']['l2_vs_fp16_l2'])} fp16's: its kernels, not memory, hold it back. "
            + speed_at_scale_profile(s, top["model"])
            + "Reading int8 as 32-bit words with integer conversion measured slower. --device-map auto "
            "lets the same scripts run larger models over several GPUs."
        )
    elif s.benches:
        items.append(
            "<b>Speed at scale.</b> A model this small is bound by per-token overhead; "
            "the byte savings should turn into speed for models whose weights take "
            "longer to read than a step's overhead. --device-map auto lets the same "
            "scripts run such models over several GPUs."
        )
    doc.bullets(items or ["None recorded."])


def other_model_int8(s: Study, group: tuple | None) -> dict | None:
    """Asymmetric and per-channel INT8 on another real model than group's: its group with both."""
    pair = ("scratch-int8-asymmetric", "scratch-int8-per_channel")
    k = None if group is None else s.other_model_group(group[0], pair, at_least=len(pair))
    if k is None:
        return None
    r = s.runs(k)
    return {"model": k[0], "where": short_group(k), "asym": delta(r, pair[0]), "sym": delta(r, pair[1])}


def speed_at_scale_profile(s: Study, model: str) -> str:
    """What the anatomy of that model says of INT8's GEMV links against fp16's (a sentence and a
    question), or the question the profile would answer where it has not run."""
    r = next((r for r in s.anatomies if pr.short_model(r) == model and "scratch-int8-fast" in r["anatomy"]["steps"]),
             None)
    if r is None:
        return "Is that the int8 conversion or the tiles? A profile per kernel would tell. "
    gain, lose = ([f"{lbl} ({f_ratio(x)})" for lbl, x in part]
                  for part in gemv_ratios(r["anatomy"], "scratch-int8-fast"))
    said = [f"INT8's {' and '.join(gain)} beat fp16's"] if gain else []
    said += [f"its {' and '.join(lose)} lose"] if lose else []
    return ("The per-link profile (the anatomy, a separate run) says where: " + ", ".join(said) + ". "
            + ("What do the losing GEMVs need: more programs (split-K), or other tiles? " if lose else ""))


def open_facts(s: Study) -> dict:
    """The sensitivity scan's verdict and the asymmetric-vs-symmetric gap, in numbers."""
    facts = {"scan": None, "asymmetric": None, "group": None}
    if s.sensitivity:
        sv = s.sensitivity["sensitivity"]
        blocks = sorted(sv["block"], key=lambda b: -b["delta_pct"])
        comps = sorted(sv["component"], key=lambda c: -c["delta_pct"])
        median_abs = sorted(abs(b["delta_pct"]) for b in blocks)[len(blocks) // 2]
        facts["scan"] = {
            "top_block": blocks[0]["block"],
            "top_delta": blocks[0]["delta_pct"],
            "median_abs": median_abs,
            "stands_out": len(blocks) > 1
            and blocks[0]["delta_pct"] > 3 * max(median_abs, blocks[1]["delta_pct"]),
            "top_components": [(c["component"], c["delta_pct"]) for c in comps[:2]],
            "top_components_sum": sum(c["delta_pct"] for c in comps[:2]),
            "components_sum": sum(c["delta_pct"] for c in comps),
        }
    g = s.find_group("scratch-int8-per_channel")
    if g and "scratch-int8-asymmetric" in s.runs(g):
        r = s.runs(g)
        facts["group"] = g
        facts["asymmetric"] = (
            delta(r, "scratch-int8-asymmetric"),
            delta(r, "scratch-int8-per_channel"),
        )
    return facts


def limitations(doc: Doc, s: Study) -> None:
    doc.h1(heading("limits", "Limitations and open questions"), key="limits")
    x = limitation_facts(s)
    items = []
    if x["stand_ins"]:
        items.append(f"<b>No real gpt2 numbers.</b> Every number comes from the cover's {len(x['stand_ins'])} "
                     "stand-ins (no Hub access); the scripts load gpt2 by default. CPU runs score a prefix of the "
                     f"text ({heading_number('measure')}).")
    items.append("<b>Not run: 1.5-bit weights and quantization-aware training.</b> Both need training (ternary "
                 "weights work only in a model trained with them); the study quantizes trained models.")
    if x["sens_devices"]:
        items.append("<b>One sensitivity scan</b>, at INT8 on " + ", ".join(
                         escape("the CPU" if d.startswith("cpu") else d) for d in x["sens_devices"])
                     + f" ({x['sens_tokens']:,} tokens): most single-block changes are within rounding noise; "
                     "no 4-bit scan.")
    doc.bullets(items)


def limitation_facts(s: Study) -> dict:
    stand = sorted({pr.short_model(r) for r in s.records
                    if isinstance(r.get("model"), dict) and r["model"].get("stand_in")
                    and results.kind_of(r) in ("eval", "bench", "sensitivity")})
    prefix = sorted({(pr.short_model(r), pr.device_of(r), r["dataset"]["max_tokens"]) for r in s.records
                     if isinstance(r.get("dataset"), dict) and r["dataset"].get("truncated")})
    sens = [s.sensitivity] if s.sensitivity else []
    return {"stand_ins": stand, "prefixes": prefix,
            "sens_devices": sorted({pr.device_of(r) for r in sens}),
            "sens_tokens": sens[0]["perplexity"]["n_tokens_scored"] if sens else 0}
