"""A larger quantized model against a smaller unquantized one: bits per byte against memory.

The assignment's last exploration direction. Two models' perplexities do not compare (their
tokenizers cut the text differently); bits per byte does (plots/models.py). The facts come from
plots.models' groups: each model's own fp32 and fp16, the frontier, and the larger model's best
run within the smaller unquantized model's memory.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
import results
from plots import models as pm
from report.common import Study
from report.doc import Doc
from report.formats import f_mib, f_pct
from report.sections.closing import cite
from report.sections.explore import rtn_twin
from study import noise, registry, standins


def models_facts(s: Study) -> dict | None:
    """The group with the most runs that holds two models: plain numbers, nothing formatted."""
    groups = pm.model_groups(s.records)
    if not groups:
        return None
    key, rs = max(groups.items(), key=lambda kv: len(kv[1]))
    point = lambda r: {"model": pr.short_model(r), "method": r["method"]["name"],               # noqa: E731
                       "mib": r["memory"]["weights_mib"], "bpb": r["perplexity"]["bits_per_byte"],
                       "bytes": r["perplexity"]["n_bytes"], "kld": (r.get("divergence") or {}).get("kld_mean"),
                       "origin": standins.origin(r), "record": r}
    # a run back to its stand-in's own origin format measures the origin: shown apart, off the frontier
    runs = [point(r) for r in rs if not standins.requantizes_origin(r)]
    back = [point(r) for r in rs if standins.requantizes_origin(r)]
    fp32 = {p["model"]: p for p in runs if p["method"] == "baseline-fp32"}
    small, large = sorted(fp32, key=lambda m: fp32[m]["mib"]) if len(fp32) == 2 else (None, None)
    unquantized = next((p for p in runs if p["model"] == small and p["method"] == "baseline-fp16"),
                       fp32.get(small))
    within = [p for p in runs if p["model"] == large and unquantized and p["mib"] <= unquantized["mib"]]
    front = pm.frontier_runs(rs)                     # the figure's and RESULTS.md's frontier, origin runs left off
    on_front = [p for p in sorted(runs, key=lambda p: p["mib"]) if (p["mib"], p["bpb"]) in front]
    turns = [b for a, b in zip(on_front, on_front[1:]) if a["model"] != b["model"]]   # where the model changes
    return {"key": key, "runs": runs, "fp32": fp32, "small": small, "large": large, "unquantized": unquantized,
            "best_within": min(within, key=lambda p: p["bpb"], default=None), "frontier": on_front,
            "turns": turns, "back_to_origin": back}


FOUR_BIT_PARTS = ("part1", "part2", "bonus", "explore")


def origin_facts(s: Study, x: dict) -> dict:
    """Each model's 4-bit penalties (perplexity change against its own fp32, in %) for the methods
    both models ran, and each run's embedding kept in fp32 (bytes) where the record says so."""
    rs = pm.model_groups(s.records)[x["key"]]
    by = {(pr.short_model(r), r["method"]["name"]): r for r in rs}
    base = {m: by[(m, "baseline-fp32")]["perplexity"]["ppl"] for m in (x["small"], x["large"])}
    four = sorted({name for (_, name), r in by.items() if registry.of(r)["bits"] == 4
                   and registry.of(r)["part"] in FOUR_BIT_PARTS})
    both = [n for n in four if (x["small"], n) in by and (x["large"], n) in by]
    penalty = {n: {m: 100 * (by[(m, n)]["perplexity"]["ppl"] / base[m] - 1) for m in base} for n in both}
    # a calibrated method's change over its round-to-nearest twin's (same bits, same groups), per model
    gain = {}
    for n in both:
        if registry.of(by[(x["small"], n)])["family"] in ("gptq", "awq"):
            twin = rtn_twin({name: r for (m, name), r in by.items() if m == x["small"]}, n)
            if twin in penalty and all(penalty[twin][m] > 0 for m in base):
                gain[n] = (twin, {m: penalty[n][m] / penalty[twin][m] for m in base})
    kept = {}
    for (m, n), r in by.items():
        q = r.get("quantization") or {}
        emb = (q.get("full_precision_detail") or {}).get("embeddings")
        if emb is not None and q.get("total"):
            kept[(m, n)] = (emb, q["total"])
    return {"penalty": penalty, "gain": gain, "kept": kept,
            "origin": {m: standins.origin(by[(m, "baseline-fp32")]) for m in base}}


def gap_words(a: dict, b: dict) -> str:
    """b's bits per byte against a's on the bytes both scored, two models' runs on one text, and
    whether the difference is outside the noise (study.noise.bpb_band): ' (on the 64,757 bytes both
    scored, 1.0728 against 1.0697, 95% band of the difference -0.0467 to +0.0600: a tie)', or the
    reason there is no band."""
    g = noise.bpb_band(a, b)
    if g is None:
        return " (no noise band: a run kept no per-window NLL)"
    lo, hi = g["band"]
    return (f" (on the {g['bytes']:,} bytes both scored, {g['b']:.4f} against {g['a']:.4f}, 95% band of the "
            f"difference {lo:+.4f} to {hi:+.4f}" + (": a tie)" if g["tie"] else ")"))


def is_tie(a: dict, b: dict) -> bool | None:
    g = noise.bpb_band(a, b)
    return None if g is None else g["tie"]


def verdict(a: dict, b: dict) -> str:
    """b against a in a few words: 'a tie', 'it wins', 'it loses' (each outside the noise), or
    'no noise band' where a run kept no per-window NLL."""
    g = noise.bpb_band(a, b)
    if g is None:
        return "no noise band"
    return "a tie" if g["tie"] else "it wins" if g["diff"] < 0 else "it loses"


def whole_text_pair(s: Study, x: dict, small_point: dict, large_point: dict) -> tuple[dict, dict] | None:
    """The same two methods' records on the whole text (whole_text_facts), or None."""
    w = whole_text_facts(s, x)
    if w is None:
        return None
    pair = (w["by"].get((small_point["model"], small_point["method"])),
            w["by"].get((large_point["model"], large_point["method"])))
    return None if None in pair else pair


def whole_text_facts(s: Study, x: dict) -> dict | None:
    """Both models' runs on the whole text (no token budget; same text and windows as x's group), each
    model on the device where it has the most such runs: {(model, method): record}, each model's device,
    and the 4-bit penalties of the methods both ran there. None where either model has none."""
    sha, L, S = x["key"][:3]
    if not x["key"][5]:                                   # the group is the whole text already
        return None
    by_model = {}
    for r in s.records:
        p = r.get("perplexity") or {}
        if (results.kind_of(r) == "eval" and not results.random_weights(r) and p.get("bits_per_byte") is not None
                and r["dataset"].get("sha256") == sha and (p.get("max_length"), p.get("stride")) == (L, S)
                and not r["dataset"].get("max_tokens") and pr.short_model(r) in (x["small"], x["large"])):
            by_model.setdefault(pr.short_model(r), {}).setdefault(pr.device_of(r), []).append(r)
    if len(by_model) < 2:
        return None
    device = {m: max(sorted(d), key=lambda k: len(d[k])) for m, d in by_model.items()}
    by = {(m, r["method"]["name"]): r for m, d in by_model.items() for r in d[device[m]]}
    if any((m, "baseline-fp32") not in by for m in device):
        return None
    base = {m: by[(m, "baseline-fp32")]["perplexity"]["ppl"] for m in device}
    both = sorted(n for (m, n), r in by.items() if m == x["small"] and (x["large"], n) in by
                  and registry.of(r)["bits"] == 4 and registry.of(r)["part"] in FOUR_BIT_PARTS)
    penalty = {n: {m: 100 * (by[(m, n)]["perplexity"]["ppl"] / base[m] - 1) for m in base} for n in both}
    return {"by": by, "device": device, "penalty": penalty}


def whole_text_words(w: dict, small: str, large: str) -> str:
    """'the whole test split (GPUs: H200 for smollm2-135m, H100 for gemma3-270m)'."""
    short = lambda d: d.replace("NVIDIA ", "").split()[0] if d.startswith("NVIDIA") else escape(d)  # noqa: E731
    a, b = (short(w["device"][m]) for m in (small, large))
    return (f"the whole test split ({a})" if a == b
            else f"the whole test split (GPUs: {a} for {escape(small)}, {b} for {escape(large)})")


def origin_reading(penalty: dict, small: str, large: str) -> str:
    """What the side-by-side penalties say of the origins, counted from them."""
    worse = sum(v[large] > v[small] for v in penalty.values())
    if worse * 2 > len(penalty):
        return (f" The penalty is larger on {escape(large)} for {worse} of these {len(penalty)} methods. Model and "
                "origin change together, so these runs cannot separate them, but they show no sign of "
                f"{escape(small)}'s origin inflating its penalties.")
    if worse * 2 < len(penalty):
        return (f" The penalty is smaller on {escape(large)} for {len(penalty) - worse} of these {len(penalty)} "
                f"methods: consistent with {escape(small)}'s origin inflating its 4-bit penalties.")
    return f" The penalty is larger on {escape(large)} for half of these methods: the origins do not rank them."


def gain_words(n: str, twin: str, g: dict, small: str, large: str) -> str:
    """A calibrated method's penalty over its round-to-nearest twin's, on each model, and what differs."""
    text = (f" Where the origin does show: {escape(n)}'s penalty is {g[small]:.2f}× {escape(twin)}'s on "
            f"{escape(small)} and {g[large]:.2f}× on {escape(large)}")
    if g[large] < 0.75 * g[small]:
        return text + (f": calibration removes far more of round-to-nearest's penalty on {escape(large)}, as "
                       f"expected where round-to-nearest lands near the lattice {escape(small)}'s weights were "
                       "dequantized from (section 4, GPTQ).")
    return text + "."


def origin_summary(s: Study) -> dict | None:
    """For the stand-in caveat in section 1: how many 4-bit penalties are larger on the larger model
    (of how many both ran), and the calibrated gains; None without two models' side-by-side runs."""
    x = models_facts(s)
    if x is None or x["small"] is None:
        return None
    o = origin_facts(s, x)
    if not o["penalty"]:
        return None
    worse = sum(v[x["large"]] > v[x["small"]] for v in o["penalty"].values())
    return {"small": x["small"], "large": x["large"], "worse": worse, "n": len(o["penalty"]), "gain": o["gain"]}


def whole_text_origin(w: dict, small: str, large: str) -> str:
    """The whole text's count of 4-bit penalties larger on the larger model, with its widest gap."""
    pen = w["penalty"]
    worse = sum(v[large] > v[small] for v in pen.values())
    n, v = max(pen.items(), key=lambda kv: abs(kv[1][large] - kv[1][small]))
    return (f" On the whole test split, it is larger on {escape(large)} for {worse} of the "
            f"{len(pen)} 4-bit methods both ran there ({escape(n)} {f_pct(v[small])} against {f_pct(v[large])}).")


def larger_against_smaller(doc: Doc, s: Study) -> None:
    x = models_facts(s)
    doc.h2("A larger quantized model against a smaller unquantized one")
    if x is None or x["small"] is None:
        doc.p("<i>Not measured yet: it needs two real models' runs, with their fp32 baselines, on one text, "
              "window and device (bits per byte in their records).</i>")
        return
    small, large, u, f = x["small"], x["large"], x["unquantized"], x["fp32"]
    say = lambda p: f"{escape(p['method'])} ({escape(p['model'])}, {f_mib(p['mib'])} MiB, {p['bpb']:.4f})"  # noqa
    text = (f"Bits per byte {cite('lm-eval')} compares {escape(large)} with {escape(small)} across their "
            "tokenizers: the same "
            "total negative log-likelihood, in bits, over the UTF-8 bytes of the text the scored tokens spell "
            f"({f[small]['bytes']:,} bytes for {escape(small)}, "
            f"{f[large]['bytes']:,} for {escape(large)}: the same text's start, cut by each tokenizer's "
            "token budget).")
    doc.p(text)                 # its own paragraph: the heading keeps with it, the answer may split a page
    text = (f"In fp32, {escape(large)} scores {f[large]['bpb']:.4f} at {f_mib(f[large]['mib'])} "
            f"MiB, {escape(small)} {f[small]['bpb']:.4f} at {f_mib(f[small]['mib'])} MiB. ")
    b = x["best_within"]
    if b is None:
        text += (f"No run of {escape(large)} fits within {escape(small)} {escape(u['method'])}'s "
                 f"{f_mib(u['mib'])} MiB yet, so the question is open on these records. ")
    else:
        tie = is_tie(u["record"], b["record"])
        word = ("ties with" if tie else "beats" if b["bpb"] < u["bpb"] else "does not beat")
        text += (f"Within {escape(small)} {escape(u['method'])}'s {f_mib(u['mib'])} MiB ({u['bpb']:.4f}), "
                 f"{escape(large)}'s best run is {say(b)}: it {word} the smaller model unquantized"
                 + gap_words(u["record"], b["record"]) + ". ")
    turns = x["turns"]
    if len(turns) == 1:
        before = x["frontier"][0]["model"]
        text += (f" The answer turns once, at {f_mib(turns[0]['mib'])} MiB: below it every frontier point is "
                 f"{escape(before)}'s, from it on every one is {escape(turns[0]['model'])}'s, starting with "
                 f"{say(turns[0])}"
                 + (f", {100 * (turns[0]['mib'] / u['mib'] - 1):.1f}% more memory"
                    + gap_words(u["record"], turns[0]["record"])
                    if turns[0]["bpb"] < u["bpb"] and turns[0]["mib"] > u["mib"] else "") + ".")
    elif turns:
        text += (" The frontier changes model " + f"{len(turns)} times, at "
                 + ", ".join(f"{f_mib(t['mib'])} MiB (to {escape(t['model'])})" for t in turns)
                 + ": neither model is the better buy at every size.")
    w = whole_text_facts(s, x)
    if w is not None and len(turns) == 1:
        t, bw = turns[0], w["by"]
        pair = [bw.get((t["model"], t["method"])), bw.get((small, u["method"]))]
        if None not in pair:
            (a, b), (ma, mb) = ([r["perplexity"]["bits_per_byte"] for r in pair],
                                [r["memory"]["weights_mib"] for r in pair])
            tie, before = is_tie(pair[1], pair[0]), is_tie(u["record"], t["record"])
            text += (f" On {whole_text_words(w, small, large)}, the same pair scores {a:.4f} ({f_mib(ma)} MiB) "
                     f"against {b:.4f} ({f_mib(mb)} MiB)" + gap_words(pair[1], pair[0]) + ": "
                     + ("a tie." if tie else f"outside the noise there, {escape(t['model'])} "
                        + ("wins." if a < b else "loses.") if before else "the same answer."
                        if (a < b) == (t["bpb"] < u["bpb"]) else "the other answer."))
    for p in x["back_to_origin"]:
        kld = f", KLD {p['kld']:.4f}" if p["kld"] is not None else ""
        text += (f" Left out: {say(p)}{kld}. It rounds {escape(p['model'])} back to {escape(p['origin'])}, the "
                 "format its weights were dequantized from, and llama.cpp picks the same type for each tensor, so "
                 "it nearly restores them: it measures the stand-in's origin, not that scheme.")
    doc.p(text)
    o = origin_facts(s, x)
    if o["penalty"]:
        origin = {m: f" (its fp32 dequantized from {escape(t)})" if t else "" for m, t in o["origin"].items()}
        scope = (f"first {x['key'][5]:,} tokens, " if x["key"][5] else "the whole text, ") + x["key"][4].upper()
        doc.p("<b>The rounding origin.</b> Each stand-in's float weights were themselves rounded once, so a 4-bit "
              "method rounds them a second time. Side by side, the perplexity change of each 4-bit method both "
              f"models ran, against each one's own fp32 ({scope}): "
              f"{escape(small)}{origin[small]} against "
              f"{escape(large)}{origin[large]}: "
              + "; ".join(f"{escape(n)} {f_pct(v[small])} against {f_pct(v[large])}"
                          for n, v in sorted(o["penalty"].items())) + "."
              + origin_reading(o["penalty"], small, large)
              + "".join(gain_words(n, t, g, small, large) for n, (t, g) in sorted(o["gain"].items()))
              + (whole_text_origin(w, small, large) if w is not None and w["penalty"] else ""))
    kept = {k: v for k, v in o["kept"].items() if k[0] == large and v[0] > 0}
    if kept:
        first = sorted(kept)[0]
        emb, total = kept[first]
        doc.p(f"<b>The embedding's share.</b> {escape(large)}'s embedding, tied to its output layer, is "
              f"{f_mib(emb / 2**20)} MiB in fp32: {100 * emb / total:.0f}% of the "
              f"{f_mib(total / 2**20)} MiB that a run quantizing only the decoder blocks stores "
              f"({escape(first[1])}). Methods that quantize it too (Part 1's whole-model INT8, llama.cpp's "
              "types) move along the memory axis far more than those that keep it (bitsandbytes, Part 1's 4-bit, "
              "GPTQ and AWQ here).")
    doc.figure(pm.models_figure(x["key"], "mib"),
               f"Bits per byte against weight memory, every run of both models ({escape(x['key'][3])}); the dashed "
               "line is the frontier"
               + (f", which passes from {escape(x['frontier'][0]['model'])} to {escape(turns[0]['model'])} at "
                  f"{f_mib(turns[0]['mib'])} MiB" if len(turns) == 1 else "")
               + "; a hollow point rounds its stand-in back to its origin format and is off it. "
               "RESULTS.md's two-model table lists every point.", max_height_cm=12)
    doc.label("models-figure")
