"""The report's opening: the title block, the key findings and the summary of every part.
"""
from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

import plot_results as pr
from report.common import (
    ROOT,
    Study,
    bandwidth,
    delta,
    full_precision_mib,
    group_label,
    heading_number,
    method,
    model_label,
    short_group,
)
from report.doc import Doc
from report.formats import f_band, f_mib, f_ms, f_pct, f_ppl, f_ratio, f_timing, pct_change
from report.sections.explore import finding as explore_finding
from report.settings import latency_spread, setting_facts, settings_sentence, short_name
from speed import readings
from study import noise, registry


def title_block(doc: Doc, s: Study, results: Path) -> None:
    """Where the report comes from (the records, their dates, the commit) and the stand-ins."""
    stamps = sorted(r["timestamp"] for r in s.records if r.get("timestamp"))
    commit = git_commit()
    doc.p(
        f"Built {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"<i>report/build_report.py</i> from {len(s.records)} results files in "
        f"<i>{escape(str(results))}</i>"
        + (
            ""
            if not stamps
            else f" (measured on {stamps[0][:10]})"
            if stamps[0][:10] == stamps[-1][:10]
            else f" (measured {stamps[0][:10]} to {stamps[-1][:10]})"
        )
        + (f", code at commit {commit}" if commit else "")
        + ". Every number below is read or "
        "computed from those files.",
        "small",
    )
    models = [r["model"] for r in s.records if r.get("model", {}).get("stand_in")]
    random_ids = sorted({m["id"] for m in models if m.get("random_weights")})
    notes = sorted({m["stand_in"] for m in models if not m.get("random_weights")}
                   | {r["stand_in"] for r in s.records if r.get("stand_in")})
    if notes or random_ids:
        doc.p(
            "<b>Stand-in models.</b> The machines that ran the study had no access to the Hugging Face "
            "Hub, so the numbers below come from stand-ins, named wherever their numbers appear: "
            + "; ".join(f"<i>{escape(n)}</i>" for n in notes)
            + (f"; and {', '.join(f'<i>{escape(i)}</i>' for i in random_ids)}: real architectures with "
               "random weights, whose memory and speed are the real models' and whose perplexity means "
               "nothing" if random_ids else "")
            + ". The README says how to rerun everything with <i>gpt2</i> where the Hub is reachable."
        )


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def findings_facts(s: Study) -> dict:
    """The numbers of the findings, read and computed from the records; nothing is rendered."""
    facts = {}
    g = s.find_group("scratch-int8-per_channel")
    if g:
        r = s.runs(g)
        base, q = r["baseline-fp32"], r["scratch-int8-per_channel"]
        int8 = [
            n
            for n in r
            if registry.of(r[n])["family"] == "scratch-int8" and not registry.of(r[n])["selective"]
        ]
        ranked = sorted(int8, key=lambda n: r[n]["perplexity"]["ppl"])
        best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
        facts["int8"] = {
            "other": other_int8_order(s, g, int8),
            "runner": runner,
            "runner_delta": delta(r, runner) if runner else None,
            "runner_band": noise.change_band(r[best], r[runner]) if runner else None,
            # where the headline group keeps no windows: the same pair on another group of the model that does
            "elsewhere": next(((k[5], k[4], b) for k, b in (
                (k, noise.change_band(s.runs(k)[best], s.runs(k)[runner])) for k in s.ppl_groups()
                if runner and k != g and k[0] == g[0] and {best, runner} <= set(s.runs(k))) if b), None),
            "group": group_label(g),
            "base_mib": base["memory"]["weights_mib"],
            "int8_mib": q["memory"]["weights_mib"],
            "shrink": base["memory"]["weights_mib"] / q["memory"]["weights_mib"],
            "delta": delta(r, "scratch-int8-per_channel"),
            "base_ppl": base["perplexity"]["ppl"],
            "int8_ppl": q["perplexity"]["ppl"],
            "best": best,
            "best_delta": delta(r, best),
            "per_tensor_delta": delta(r, "scratch-int8-per_tensor")
            if "scratch-int8-per_tensor" in r
            else None,
        }
    g = s.find_group("bnb-nf4", "bnb-fp4")
    if g:
        r = s.runs(g)
        ppl = {
            n: r[n]["perplexity"]["ppl"]
            for n in ("bnb-nf4", "bnb-fp4", "scratch-int4-int4", "baseline-fp32")
            if n in r
        }
        int4 = "scratch-int4-int4" in r
        facts["nf4"] = {
            "load_dtype": r["bnb-nf4"]["method"].get("settings", {}).get("load_dtype"),
            "group": group_label(g),
            "nf4_mib": r["bnb-nf4"]["memory"]["weights_mib"],
            "nf4_full_mib": full_precision_mib(r["bnb-nf4"]),
            "int4_mib": r["scratch-int4-int4"]["memory"]["weights_mib"] if int4 else None,
            "int4_full_mib": full_precision_mib(r["scratch-int4-int4"]) if int4 else None,
            "nf4": ppl["bnb-nf4"],
            "fp4": ppl["bnb-fp4"],
            "fp32": ppl["baseline-fp32"],
            "int4": ppl.get("scratch-int4-int4"),
            "lower_than_fp4": -pct_change(ppl["bnb-nf4"], ppl["bnb-fp4"]),
            "lower_than_int4": -pct_change(ppl["bnb-nf4"], ppl["scratch-int4-int4"])
            if "scratch-int4-int4" in ppl
            else None,
        }
    m = s.compare["compare"]["mean_rel_mse"] if s.compare else {}
    if "bnb-nf4" in m and "bnb-fp4" in m:
        facts["error"] = {
            "nf4": m["bnb-nf4"],
            "fp4": m["bnb-fp4"],
            "fp4_over_nf4": m["bnb-fp4"] / m["bnb-nf4"],
            "int4_over_nf4": m["scratch-int4"] / m["bnb-nf4"] if "scratch-int4" in m else None,
        }
    b = s.headline_bench("bnb-bench") or s.bench("bnb-bench", "cuda")
    if b:
        t, base = b["bench"]["table"], b["bench"].get("baseline", "fp16")
        ratios = [v["decode_ratio"] for n, v in t.items() if n not in ("fp32", "fp16")]
        if ratios and base in t:
            bw = bandwidth(s)
            base_ms = t[base]["decode_ms_per_token"]["median"]
            floor = readings.decode_floor_ms(t[base]["weights_mib"] * 2**20, bw)
            facts["speed"] = {
                "device": pr.device_of(b),
                "model": model_label(b),
                "base": base,
                "n": len(ratios),
                "slower": sum(x > 1 for x in ratios),
                "lo": min(ratios),
                "hi": max(ratios),
                "base_ms": base_ms,
                "x_floor": None if floor is None else base_ms / floor,
            }
    fast = s.headline_bench("gpu-decode-bench") or next((r for r in s.benches if "fast_path" in r["bench"]), None)
    if fast:
        facts["fast"] = fast_facts(fast, s.benches)
    g = s.find_group("gguf-q8_0")
    if g:
        r = s.runs(g)
        ggufs = [n for n in r if registry.of(r[n])["family"] == "gguf"]
        smallest = min(ggufs, key=lambda n: r[n]["memory"]["disk_mib"] or float("inf"))
        facts["gguf"] = {
            "group": group_label(g),
            "q8_mib": r["gguf-q8_0"]["memory"]["disk_mib"],
            "q8_delta": delta(r, "gguf-q8_0"),
            "smallest": smallest[5:].upper(),
            "smallest_mib": r[smallest]["memory"]["disk_mib"],
            "smallest_delta": delta(r, smallest),
        }
    return facts


def other_int8_order(s: Study, g: tuple, names: list[str]) -> dict | None:
    """The whole-model INT8 schemes' order on another real model (its group with the most of them):
    its best and runner-up, with the band of their difference where the runs keep windows."""
    k = s.other_model_group(g[0], names)
    if k is None:
        return None
    r = s.runs(k)
    ranked = sorted((n for n in names if n in r), key=lambda n: r[n]["perplexity"]["ppl"])
    return {"model": k[0], "group": short_group(k), "best": ranked[0], "best_delta": delta(r, ranked[0]),
            "runner": ranked[1], "runner_delta": delta(r, ranked[1]),
            "band": noise.change_band(r[ranked[0]], r[ranked[1]])}


def finding_items(s: Study) -> dict[str, str]:
    """The findings as sentences, keyed: int8, nf4, explore, speed, fast, gguf (where measured)."""
    f = findings_facts(s)
    items: dict[str, str] = {}
    if "int8" in f:
        x = f["int8"]
        items["int8"] = (
            "<b>8-bit from scratch.</b> Whole-model INT8 with one scale per output channel "
            f"shrinks the weights from {f_mib(x['base_mib'])} to {f_mib(x['int8_mib'])} MiB "
            f"({f_ratio(x['shrink'])} smaller) and moves perplexity by {f_pct(x['delta'])} "
            f"({f_ppl(x['base_ppl'])} → {f_ppl(x['int8_ppl'])}; {escape(x['group'])})."
        )
        if x["best"] != "scratch-int8-per_channel":
            items["int8"] += (
                f" The best whole-model Part 1 INT8 scheme is <i>{escape(x['best'])}</i> at "
                f"{f_pct(x['best_delta'])}"
                + ("" if x["runner_band"] is None else
                   f", tied with <i>{escape(x['runner'])}</i> at {f_pct(x['runner_delta'])} (the 95% band of their "
                   f"difference, {f_band(x['runner_band'])}%, holds zero)"
                   if x["runner_band"][0] <= 0 <= x["runner_band"][1]
                   else f", ahead of <i>{escape(x['runner'])}</i> at {f_pct(x['runner_delta'])} beyond the noise "
                   f"(band of their difference {f_band(x['runner_band'])}%)")
                + ("" if x["runner_band"] is not None or x["elsewhere"] is None else
                   f" (its runner-up {escape(x['runner'])} at {f_pct(x['runner_delta'])}; on "
                   f"{escape(x['elsewhere'][0])}'s {x['elsewhere'][1]:,} tokens the two "
                   + ("tie" if x["elsewhere"][2][0] <= 0 <= x["elsewhere"][2][1] else "rank apart") + ")")
                + (
                    "."
                    if x["per_tensor_delta"] is None
                    else f"; per-tensor scaling costs {f_pct(x['per_tensor_delta'])}."
                )
            )
        o = x["other"]
        if o and o["best"] != x["best"]:
            items["int8"] += (
                f" On {escape(o['model'])} ({escape(o['group'])}) {escape(o['best'])} leads instead "
                f"({f_pct(o['best_delta'])} against {escape(o['runner'])}'s {f_pct(o['runner_delta'])}"
                + ("" if o["band"] is None else
                   ", a tie" if o["band"][0] <= 0 <= o["band"][1] else ", beyond the noise") + ").")
    if "nf4" in f:
        x = f["nf4"]
        items["nf4"] = (
            "<b>4-bit: NF4 against linear.</b> At the same size as FP4 "
            f"({f_mib(x['nf4_mib'])} MiB"
            + (f" with its unquantized parts in {x['load_dtype']}" if x["load_dtype"] else "")
            + f"), NF4's perplexity is {x['lower_than_fp4']:.1f}% lower "
            f"than FP4's ({f_ppl(x['nf4'])} against {f_ppl(x['fp4'])})"
            + (
                ""
                if x["int4"] is None
                else f" and {x['lower_than_int4']:.1f}% lower than Part 1's linear int4's "
                f"({f_ppl(x['int4'])}, at {f_mib(x['int4_mib'])} MiB, of which "
                f"{f_mib(x['int4_full_mib'])} in full precision"
                + (
                    ", as in bitsandbytes)"
                    if f_mib(x["int4_full_mib"]) == f_mib(x["nf4_full_mib"])
                    else f" against bitsandbytes' {f_mib(x['nf4_full_mib'])})"
                )
            )
            + f"; fp32 is {f_ppl(x['fp32'])} ({escape(x['group'])})."
        )
    if "error" in f and "nf4" in f:
        x = f["error"]
        items["nf4"] += (
            f" Per weight, NF4's mean relative reconstruction error ({x['nf4']:.2e}) is "
            f"{f_ratio(x['fp4_over_nf4'])} smaller than FP4's ({x['fp4']:.2e})"
            + (
                ""
                if x["int4_over_nf4"] is None
                else f" and {f_ratio(x['int4_over_nf4'])} smaller than linear int4's"
                if x["int4_over_nf4"] >= 1
                else f" and {f_ratio(1 / x['int4_over_nf4'])} larger than linear int4's"
            )
            + "."
        )
    explored = explore_finding(s)
    if explored:
        items["explore"] = explored
    if "speed" in f:
        x = f["speed"]
        items["speed"] = (
            f"<b>Speed.</b> On the {escape(x['device'])}, with Hugging Face generate, "
            f"{x['slower']} of {x['n']} quantized models decode slower than {x['base']}: "
            f"{f_ratio(x['lo'])} to {f_ratio(x['hi'])} its time per token ({x['model']}). "
            f"In that side-by-side run {x['base']} takes {f_ms(x['base_ms'])} ms per token"
            + (
                "."
                if x["x_floor"] is None
                else f", {x['x_floor']:.0f}× the time needed to read its weights once from memory: "
                "at this size decoding is overhead, not bytes."
            )
        )
    if f.get("fast"):
        items["fast"] = fast_summary_text(f["fast"])
    if "gguf" in f:
        x = f["gguf"]
        items["gguf"] = (
            f"<b>GGUF.</b> llama.cpp's Q8_0 file is {f_mib(x['q8_mib'])} MiB at "
            f"{f_pct(x['q8_delta'])} perplexity; the smallest file, {escape(x['smallest'])}, is "
            f"{f_mib(x['smallest_mib'])} MiB at {f_pct(x['smallest_delta'])} "
            f"({escape(x['group'])})."
        )
    return items


NOISE_FALLBACK = 0.03    # the split where no method was timed in two benches of the model: no rerun to measure


def bench_base(b: dict) -> str:
    """A bench's baseline method (fp16 in benches from before the bench took bf16)."""
    return b["bench"].get("baseline", "fp16")


def fast_ms(b: dict) -> dict[str, float]:
    """Each method's fast-path decode ms per token (median), in one bench."""
    return {n: v["fast_path"]["decode_ms_per_token"]["median"] for n, v in b["bench"]["table"].items()
            if v.get("fast_path")}


def fast_ratios(b: dict) -> dict[str, float]:
    """Each method's fast-path decode time over the baseline's, in one bench; {} without the baseline."""
    ms, base = fast_ms(b), bench_base(b)
    return {n: v / ms[base] for n, v in ms.items()} if base in ms else {}


def rerun_noise(b: dict, benches: list[dict]) -> dict | None:
    """How far one method's fast-path ratio moves from one bench to the next: over every bench of
    b's model on b's device with b's baseline, the widest max - min of a method's ratio among those
    timed in two benches or more. None where no method was."""
    base = bench_base(b)
    same = [o for o in benches if "fast_path" in o["bench"] and pr.short_model(o) == pr.short_model(b)
            and pr.device_of(o) == pr.device_of(b) and bench_base(o) == base]
    seen: dict[str, list[float]] = {}
    for o in same:
        for n, r in fast_ratios(o).items():
            seen.setdefault(n, []).append(r)
    spans = {n: max(v) - min(v) for n, v in seen.items() if len(v) >= 2 and n != base}
    if not spans:
        return None
    n = max(spans, key=spans.get)
    return {"noise": spans[n], "method": n, "benches": len(same)}


def fast_facts(b: dict, benches: list[dict] = ()) -> dict | None:
    """The fast decode path's finding: each method's time against the baseline's, split at the
    rerun noise (rerun_noise over these benches; NOISE_FALLBACK where nothing was rerun): closer is
    a tie. With how many greedy tokens equal generate()'s."""
    t, base = b["bench"]["table"], bench_base(b)
    ratio, ms = fast_ratios(b), fast_ms(b)
    if not ratio:
        return None
    others = [n for n in ms if n not in (base, "fp32")]
    row = {n: (n, ms[n], ratio[n], t[n].get("leading_tokens_equal"), b["bench"]["new_tokens"]) for n in others}
    noise = rerun_noise(b, list(benches))
    cut = max(noise["noise"], 0.005) if noise else NOISE_FALLBACK
    return {
        "model": model_label(b),
        "device": pr.device_of(b),
        "base": base,
        "base_ms": ms[base],
        "noise": noise,
        "cut": cut,
        "dtype": b["bench"].get("compute_dtype", "float16"),
        "faster": [row[n] for n in others if ratio[n] < 1 - cut],
        "same": [row[n] for n in others if 1 - cut <= ratio[n] <= 1 + cut],
        "slower": [row[n] for n in others if ratio[n] > 1 + cut],
        "diverging": [row[n] for n in others if not t[n].get("tokens_equal_generate")],
        "no_graph": {n for n in others if t[n].get("cuda_graph") is False},     # its fast path runs ungraphed
    }


def noise_words(x: dict, short: bool = False) -> str:
    """The split fast_facts used, with where it comes from."""
    n = x.get("noise")
    if n is None:
        return f"±{x['cut']:.0%} (no rerun measures the noise)"
    cut = f"±{100 * x['cut']:.1f}%"
    return cut if short else (f"the noise ({cut}: the widest move of one method's ratio, {escape(n['method'])}'s, "
                              f"across the model's {n['benches']} benches on this GPU)")


def beyond_words(x: dict) -> str:
    """What 'faster beyond ...' says: the rerun noise and its size, or the fixed split where nothing was rerun."""
    short = noise_words(x, short=True)
    return f"the rerun noise ({short})" if x.get("noise") is not None else short


def fast_summary_text(x: dict) -> str:
    beyond = beyond_words(x)
    def listed(rows):
        ungraphed = x.get("no_graph", ())
        return ", ".join(f"{escape(n)} {f_ms(v)} ms ({f_ratio(ratio)}"
                         + (", no CUDA graph" if n in ungraphed else "") + ")" for n, v, ratio, _, _ in rows)

    return (
        f"<b>With the overhead gone</b> (static KV cache and CUDA graphs; {x['model']}, "
        f"{escape(x['device'])}), {x['base']} decodes in {f_ms(x['base_ms'])} ms per token. "
        + (f"Faster than it beyond {beyond}: {listed(x['faster'])}. " if x["faster"]
           else f"No quantized model beats it beyond {beyond}. ")
        + (f"Within it, a tie: {listed(x['same'])}. " if x["same"] else "")
        + (f"Slower: {listed(x['slower'])}. " if x["slower"] else "")
        + ("Every fast path makes the same greedy tokens as its model's generate()."
           if not x["diverging"] else
           "Every fast path makes the same greedy tokens as its model's generate(), except "
           + ", ".join(f"{escape(n)}, whose first {k} of {m} tokens match" for n, _, _, k, m in x["diverging"])
           + f" (its kernels round {x.get('dtype', 'float16')} in another order and flip a near tie).")
    )


def headline_table(doc: Doc, s: Study) -> None:
    """An appendix: every method of the headline group, with memory, generate() latency and perplexity."""
    doc.appendix("every method on the headline model", key="appendix-headline")
    g = s.headline
    if g is None:
        doc.p("No comparable perplexity runs in these results.")
        return
    r = s.runs(g)
    x = setting_facts(r["baseline-fp32"])
    rows = []
    for rec in pr.by_family(s.groups[g]):
        n = method(rec)
        pre, dec = latency_spread(rec)
        rows.append([escape(short_name(rec)), f_mib(rec["memory"]["weights_mib"]),
                     f_mib(rec["memory"].get("disk_mib")), f_timing(pre, lines=True), f_timing(dec, lines=True),
                     f_ppl(rec["perplexity"]["ppl"]), f_pct(delta(r, n))])
    doc.table(["method", "weights MiB", "disk MiB", "prefill ms", "decode ms/token", "perplexity", "vs fp32"],
              rows, "Every method on one model, one text and one device. " + settings_sentence(x)
              + " Each run timed itself with Hugging Face generate(), one run after another: compare "
              f"latencies across rows only roughly; the side-by-side ratios are in {heading_number('speed')}. "
              "Under each timing median: its p10–p90.",
              widths=[4.9, 1.6, 1.4, 1.9, 1.9, 2.0, 1.9], markup=True)
    doc.refs["headline"] = doc.n_tab
    doc.label("headline-table", "Table")
