#!/usr/bin/env python3
"""Markdown tables of the committed results, for the README: one table of evaluation runs
per (model, text, window, stride, token budget, device), with the perplexity change against
that group's fp32 baseline, and one table per side-by-side bench file. Reads results/*.json
only; a file that does not parse is skipped with a warning on stderr.

    python scripts/results_table.py [RESULTS_DIR] > RESULTS.md
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import plot_results as pr  # noqa: E402  (the same grouping and text names as the figures)
import results  # noqa: E402
from results import load_results  # noqa: E402
from speed import readings  # noqa: E402  (what the speed records say: bandwidth, floors, rows)
from study import registry  # noqa: E402
from study.cli import run_cli  # noqa: E402


def eval_tables(records: list[dict]) -> str:
    groups = pr.eval_groups(records)
    lines = []
    for (model, text, L, S, n, dev, _), rs in sorted(groups.items()):
        base = next((r for r in rs if r["method"]["name"] == "baseline-fp32"), None)
        stand_in = rs[0]["model"].get("stand_in")
        lines += [f"**{model}** on {pr.text_name(rs[0])} ({text.removeprefix('file:')}), L={L} S={S}, "
                  f"{n:,} tokens scored, {dev}"
                  + (f" — stand-in: {stand_in}" if stand_in else ""), "",
                  "| method | ppl | vs fp32 | weights MiB | disk MiB | prefill ms | decode ms/token |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(rs, key=lambda r: (r["method"]["name"] != "baseline-fp32", r["method"]["name"])):
            ppl, m = r["perplexity"]["ppl"], r["memory"]
            delta = f"{100 * (ppl / base['perplexity']['ppl'] - 1):+.2f}%" if base else "n/a"
            lat = r.get("latency")
            pre = f"{lat['prefill']['median']:.1f}" if lat else "–"
            dec = f"{lat['decode']['ms_per_token']['median']:.2f}" if lat else "–"
            disk = f"{m['disk_mib']:.1f}" if m.get("disk_mib") is not None else "–"
            lines.append(f"| {r['method']['name']} | {ppl:.4f} | {delta} | {m['weights_mib']:.1f} | {disk} "
                         f"| {pre} | {dec} |")
        lines.append("")
    return "\n".join(lines)


def bits_tables(records: list[dict]) -> str:
    """Per evaluation group, every run that measured bits per weight and the KL divergence (every
    part's, since they record both), ordered by bits per weight: what each bit buys."""
    lines = []
    for (model, text, L, S, n, dev, _), rs in sorted(pr.eval_groups(records).items()):
        base = next((r for r in rs if r["method"]["name"] == "baseline-fp32"), None)
        rows = [r for r in rs if r.get("bits_per_weight") and r.get("divergence")]
        if not rows or base is None:
            continue
        lines += [f"**Bits per weight and divergence**: {model}, {text.removeprefix('file:')}, L={L} S={S}, "
                  f"{n:,} tokens, {dev}. Bits per weight from the bytes stored (codes, scales, zero points) over the "
                  "weights they stand for; KLD: KL(fp32 || method) per scored token, in nats; top-1: the two "
                  "argmax tokens agree", "",
                  "| method | part | bits | grouping | bits/weight (quantized layers) | bits/weight (model) "
                  "| weights MiB | ppl | vs fp32 | KLD mean | KLD p99 | top-1 | calibration | quantize s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["bits_per_weight"]["quantized_layers"]["bits_per_weight"],
                                             r["perplexity"]["ppl"], r["method"]["name"])):
            ident, b, d = registry.of(r), r["bits_per_weight"], r["divergence"]
            cal = r["method"]["settings"].get("calibration")
            cal = f"{cal['source']} ({cal['n_samples']}x{cal['seq_len']})" if cal else "–"
            secs = (r.get("quantize") or {}).get("seconds")
            ppl = r["perplexity"]["ppl"]
            lines.append(f"| {r['method']['name']} | {ident['part']} | {ident['bits'] or '–'} | {ident['grouping']} "
                         f"| {b['quantized_layers']['bits_per_weight']:.3f} | {b['model']['bits_per_weight']:.3f} "
                         f"| {r['memory']['weights_mib']:.1f} | {ppl:.4f} "
                         f"| {100 * (ppl / base['perplexity']['ppl'] - 1):+.2f}% | {d['kld_mean']:.4f} "
                         f"| {d['kld_p99']:.3f} | {100 * d['top1_agreement']:.1f}% "
                         f"| {cal} | {'–' if secs is None else f'{secs:.1f}'} |")
        lines.append("")
    return "\n".join(lines)


def models_tables(records: list[dict]) -> str:
    """Per text, window and device with two models or more (plots/models.py's groups): every run of
    a real model by weight MiB, with bits per byte, the measure that compares across tokenizers,
    and whether it is on the frontier (nothing of less or equal memory scores lower)."""
    from plots.models import frontier_runs, model_groups
    from study.noise import bpb_band
    from study.standins import requantizes_origin
    lines = []
    for (_, L, S, dev, _, budget), rs in sorted(model_groups(records).items(), key=lambda kv: str(kv[0])):
        front = frontier_runs(rs)
        fp32 = {pr.short_model(r): r for r in rs if r["method"]["name"] == "baseline-fp32"}
        base = {m: r["perplexity"]["bits_per_byte"] for m, r in fp32.items()}
        spans = {pr.short_model(r): r["perplexity"]["n_bytes"] for r in rs}
        small = min(fp32, key=lambda m: fp32[m]["memory"]["weights_mib"]) if fp32 else None
        ref = next((r for r in rs if pr.short_model(r) == small and r["method"]["name"] == "baseline-fp16"),
                   fp32.get(small))                 # the smaller model unquantized: what the question compares with

        def against(r, ref=ref):
            g = None if ref is None or r is ref else bpb_band(ref, r)
            return "–" if g is None else (f"{g['diff']:+.4f} [{g['band'][0]:+.4f}, {g['band'][1]:+.4f}]"
                                          + (" tie" if g["tie"] else ""))
        lines += [f"**Two models, one text** ({pr.text_name(rs[0])}, L={L} S={S}, "
                  f"{f'the first {budget:,} tokens' if budget else 'every token'}, {dev}): bits per byte = the "
                  "total negative log-likelihood in bits over the UTF-8 bytes of the scored text ("
                  + ", ".join(f"{m}: {b:,} bytes" for m, b in sorted(spans.items())) + "); frontier: no run of "
                  "less or equal memory scores lower; origin: the run rounds the stand-in back to the format its "
                  "weights were dequantized from, so it measures that origin, not the scheme (off the frontier)"
                  + (f"; against {small} {ref['method']['name']}: the bits-per-byte difference on the bytes both "
                     "scored and its 95% band (study/noise.bpb_band: the windows paired by where their text lies, "
                     "a paired bootstrap; '–': a run kept no windows)" if ref is not None else ""), "",
                  "| model | method | weights MiB | bits/weight (model) | bits per byte | vs its fp32 "
                  f"| against {small} {ref['method']['name'].removeprefix('baseline-') if ref else ''} "
                  "| word ppl | ppl | frontier |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rs, key=lambda r: (r["memory"]["weights_mib"], pr.short_model(r))):
            p, model = r["perplexity"], pr.short_model(r)
            bpw = (r.get("bits_per_weight") or {}).get("model")
            vs = f"{100 * (p['bits_per_byte'] / base[model] - 1):+.2f}%" if model in base else "n/a"
            on = (r["memory"]["weights_mib"], p["bits_per_byte"]) in front
            lines.append(f"| {model} | {r['method']['name']} | {r['memory']['weights_mib']:.1f} "
                         f"| {'–' if not bpw else format(bpw['bits_per_weight'], '.2f')} | {p['bits_per_byte']:.4f} "
                         f"| {vs} | {against(r)} | {p['word_perplexity']:.2f} | {p['ppl']:.3f} "
                         f"| {'origin' if requantizes_origin(r) else 'yes' if on else ''} |")
        lines.append("")
    return "\n".join(lines)


def timing_heading(r: dict, words: str) -> str:
    """A timing record's heading line: its name, file, device and repeats, `words`, and its stand-in."""
    return (f"**{r['method']['name']}** ({r['_file']}), {r['environment']['device_name']}, "
            f"{r[r['kind']]['repeats']} round-robin repeats, {words}"
            + (f" — stand-in: {r['model']['stand_in']}" if r["model"].get("stand_in") else ""))


def bench_tables(records: list[dict]) -> str:
    lines = []
    for r in records:
        if results.kind_of(r) != "bench":
            continue
        b = r["bench"]
        lines += [timing_heading(r, f"ratios against {b.get('baseline', 'fp32')}"), "",
                  f"| method | prefill 1x{b['prefill_tokens']} ms | ratio | decode ms/token | ratio | weights MiB |",
                  "|---|---|---|---|---|---|"]
        for name, row in b["table"].items():
            lines.append(f"| {name} | {row['prefill_ms']['median']:.2f} | {row['prefill_ratio']:.2f} "
                         f"| {row['decode_ms_per_token']['median']:.3f} | {row['decode_ratio']:.2f} "
                         f"| {row['weights_mib']:.1f} |")
        lines.append("")
        if all("fast_path" in row for row in b["table"].values()):
            lines += [f"Fast path ({b['fast_path']}), same run; linear µs/token: every linear layer of one "
                      "decode step, timed at one token inside a CUDA graph", "",
                      "| method | prefill ms | ratio | decode ms/token | ratio | x floor (weights / peak bandwidth) "
                      "| linear µs/token | tokens |",
                      "|---|---|---|---|---|---|---|---|"]
            bw = readings.bench_bandwidth(r)
            for name, row in b["table"].items():
                f = row["fast_path"]
                lin = row.get("linear_us_per_token")
                if bw is not None and bw == b.get("hbm_bytes_per_s") and f.get("x_floor") is not None:
                    x_floor = f"{f['x_floor']:.1f}"                    # as the bench computed it
                elif bw is not None:                                   # a bench that assumed another GPU's
                    floor = readings.decode_floor_ms(row["weights_mib"] * 2**20, bw)
                    x_floor = f"{f['decode_ms_per_token']['median'] / floor:.1f}"
                else:
                    x_floor = "–"
                lines.append(f"| {name} | {f['prefill_ms']['median']:.2f} | {f['prefill_ratio']:.2f} "
                             f"| {f['decode_ms_per_token']['median']:.3f} | {f['decode_ratio']:.2f} "
                             f"| {x_floor} | {'' if lin is None else f'{lin:.0f}'} "
                             f"| {row['leading_tokens_equal']}/{b['new_tokens']} |")
            lines.append("")
        if "fused_path" in b:
            lines += [f"Fused decode step ({b['fused_path']}) and the peers, same run", "",
                      "| method | path | decode ms/token | vs fp16 fused | x floor | tokens |",
                      "|---|---|---|---|---|---|"]
            n = b["new_tokens"]
            for r in readings.fused_rows(b):
                if r["why_not"]:
                    lines.append(f"| {r['method']} | {r['path']} | {r['why_not']} | | | |")
                    continue
                ratio, floor = readings.or_dash(r["vs_fp16_fused"], ".2f"), readings.or_dash(r["x_floor"], ".1f")
                path, tokens = r["path"], "–" if r["tokens"] is None else f"{r['tokens']}/{n}"
                if path == "l2":
                    path, tokens = "fused, weights in L2", f"– (weights' bytes: {r['weight_bytes_share']:.0%})"
                lines.append(f"| {r['method']} | {path} | {r['ms']:.4f} | {ratio} | {floor} | {tokens} |")
            if "fused_l2_definition" in b:
                lines += ["", f"Fused, weights in L2: a diagnostic. {b['fused_l2_definition']}."]
            lines.append("")
        if b.get("int8_targets"):
            lines += [readings.cpu_targets_text(b), ""]
    return "\n".join(lines)


def batch_tables(records: list[dict]) -> str:
    lines = []
    for r in records:
        if results.kind_of(r) != "batch":
            continue
        b = r["batch"]
        lines += [timing_heading(r, f"{b['new_tokens'] - 1} decode steps after a {b['prompt_tokens']}-token prompt"),
                  "", readings.batch_table_text(b), ""]
    return "\n".join(lines)


def size_table(records: list[dict]) -> str:
    """The fused step against model size: one row per CUDA bench with fp16 fused (each row
    from its own run; ratios within that run)."""
    rows = readings.size_rows(records)
    if not rows:
        return ""
    pct = lambda v: "–" if v is None else f"{v:.0%}"                      # noqa: E731
    lines = ["**The fused step against model size** (GPU; each row one run, its ratios side by side within it; "
             "l2: the step with its weights in L2, against fp16's with its weights in L2; INT8 if unpacking were "
             "free: inferred, fp16's step in L2 plus INT8's own reads, against fp16's fused step)", "",
             "| model | params (M) | kernels/step | fp16 fused ms | fp16 x floor | fp16 weights' bytes "
             "| INT8 vs fp16 fused | INT8 l2 vs fp16 l2 | INT8 if unpacking were free | int4 vs fp16 fused "
             "| int4 l2 vs fp16 l2 | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q8, q4 = r["scratch-int8-fast"] or {}, r["scratch-int4-fast"] or {}
        lines.append(f"| {r['model']}{' (stand-in)' if r['stand_in'] else ''} | {r['params'] / 1e6:.0f} "
                     f"| {r['kernels']} | {r['fp16_ms']:.3f} | {r['fp16_x_floor']:.1f} | {pct(r['fp16_bytes_share'])} "
                     f"| {readings.or_dash(q8.get('vs_fp16_fused'), '.2f')} "
                     f"| {readings.or_dash(q8.get('l2_vs_fp16_l2'), '.2f')} "
                     f"| {readings.or_dash(q8.get('free_unpack_vs_fp16_fused'), '.2f')} "
                     f"| {readings.or_dash(q4.get('vs_fp16_fused'), '.2f')} "
                     f"| {readings.or_dash(q4.get('l2_vs_fp16_l2'), '.2f')} | {r['file']} |")
    return "\n".join(lines + [""])


def anatomy_tables(records: list[dict]) -> str:
    """Each fused-step anatomy (speed/fast_decode.py --anatomy): the steps beside the chains of as many
    links, then the time each kind of link adds to a step."""
    lines = []
    for r in records:
        if results.kind_of(r) != "anatomy":
            continue
        a = r["anatomy"]
        dash = readings.or_dash
        lines += [f"**The fused step's anatomy** ({r['_file']}), {r['environment']['device_name']}, {a['links']} links "
                  f"(kernels) a step, {a['repeats']} round-robin repeats"
                  + (f" — stand-in: {r['model']['stand_in']}" if r["model"].get("stand_in") else ""), "",
                  f"| step | ms/step | vs fp16 | weights in L2 ms | bytes at peak ms | lowest ratio "
                  f"| most links for {readings.TARGET_RATIO} | tokens |", "|---|---|---|---|---|---|---|---|"]
        for row in readings.anatomy_rows(a):
            lines.append(f"| {row['name']} | {row['ms']:.4f} | {row['vs_fp16']:.2f} | "
                         + (f"{row['l2_ms']:.4f} | {dash(row['floor_ms'], '.4f')} | {dash(row['lowest_ratio'], '.2f')} "
                            f"| {dash(row['most_links'], 'd')} | {row['tokens']}/{a['new_tokens']} |"
                            if "l2_ms" in row else "| | | | |"))
        lines += ["", "Chains (one program per SM, a float32 vector of the model's width): "
                  + "; ".join(f"{c}: {readings.CHAIN_DEFINITIONS.get(c, v['definition'])}"
                              for c, v in a["chains"].items())
                  + f". Lowest ratio: {a['lowest_ratio_definition']}. Most links: the longest chain of such links "
                  f"whose lowest ratio still reaches {readings.TARGET_RATIO}. Tokens: leading greedy tokens of "
                  "the fused step equal to the same method's generate() (on random weights near-tied logits flip "
                  "tokens; the README says where).", ""]
        groups = {n: readings.link_groups(s["links"]) for n, s in a["steps"].items() if "links" in s}
        if groups:
            lines += ["| us a step, by link | links | " + " | ".join(groups) + " |",
                      "|---|---|" + "---|" * len(groups)]
            for kind, g in next(iter(groups.values())).items():
                lines.append(f"| {kind} | {g['links']} | "
                             + " | ".join(dash(p.get(kind, {}).get("adds_us"), '.1f') for p in groups.values()) + " |")
            lines += ["", a["profile_definition"] + "; the table shows adds_us, summed over a kind's links.", ""]
    return "\n".join(lines)


def compare_tables(records: list[dict]) -> str:
    lines = []
    for r in records:
        if results.kind_of(r) != "compare":
            continue
        c = r["compare"]
        h = c["histogram"]
        lines += [f"**4-bit reconstruction error** ({r['_file']}), mean over {len(c['layers'])} block linears, "
                  f"block {c['block_size']}; code entropy on {h['layer']}", "",
                  "| quantizer | mean MSE / mean(w²) | vs bnb NF4 |", "|---|---|---|"]
        for k, v in c["mean_rel_mse"].items():
            lines.append(f"| {k} | {v:.3e} | {v / c['mean_rel_mse']['bnb-nf4']:.2f}x |")
        lines += ["", "| levels | bits of entropy per 4-bit code |", "|---|---|"]
        for k, v in h["code_entropy_bits"].items():
            lines.append(f"| {k} | {v:.2f} |")
        lines += ["", f"Cross-check scratch NF4 vs bitsandbytes NF4: max relative difference "
                      f"{c['cross_check']['max_rel_diff']:.1e}.", ""]
    return "\n".join(lines)


def guarded(make, records: list[dict]) -> str:
    """One table kind per record; a record that lacks what its table reads is skipped with a
    warning on stderr instead of ending the whole printout in a traceback."""
    parts = []
    for r in records:
        try:
            parts.append(make([r]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            print(f"warning: skipping {r.get('_file')} in the tables: {type(e).__name__} {e}", file=sys.stderr)
    return "\n".join(p for p in parts if p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="results_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="results", help="folder of results JSON (default: results)")
    return p


def main(folder: str = "results") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        records = load_results(folder)
        evals = eval_tables(records)              # a failure here is a bug: it ends the run, never a gap
        bits = bits_tables(records)
        models = models_tables(records)
        benches, compares = guarded(bench_tables, records), guarded(compare_tables, records)
        batches = guarded(batch_tables, records)
        anatomies = guarded(anatomy_tables, records)
        sizes = size_table(records)
    head = (f"# Results\n\nPrinted by `python scripts/results_table.py > RESULTS.md` from {folder}/*.json "
            "(do not edit by hand). Perplexity changes are against the fp32 baseline of the same model, text, "
            "windows and token count; speed ratios come from side-by-side runs only.\n")
    text = "\n".join(t for t in (head, evals, bits, models, benches, batches, sizes, anatomies, compares) if t)
    print(text)
    return text


if __name__ == "__main__":
    run_cli(main, build_parser())
