"""How we measure: models and stand-ins, the text, the windows, memory, latency and the devices.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
import results
from report.common import Study, describe, heading, method, model_label
from report.doc import Doc
from report.formats import f_ppl
from report.sections.closing import cite
from report.sections.models import origin_summary
from report.settings import short_name
from speed import readings
from study import registry, standins


def methodology(doc: Doc, s: Study) -> None:
    doc.p(
        "<b>Perplexity</b> " + cite("transformers") + " is corpus-level and token-weighted: the WikiText-2 "
        + cite("wikitext") + " test text is joined and "
        "tokenized once, scored in windows of L tokens that advance by a stride S, each window "
        "scoring only the tokens the previous one did not, and perplexity = exp(sum of token "
        "NLL / tokens scored). Every method, the baseline and llama.cpp included, goes through "
        "the same <i>evaluate.perplexity()</i> with the same tokens and windows. <b>Memory</b> "
        "is the bytes the weights really occupy in memory (int8 and packed 4-bit codes, their "
        "scales and zero points, and what stays in full precision), plus the peak device memory "
        "of the run (CUDA max allocated, or the rise in peak RSS on a CPU) and the size on disk "
        "(save_pretrained, or the GGUF file). <b>Latency</b> is synchronized, warmed up and "
        "repeated; a table gives medians with p10–p90. Speed is compared only as ratios taken "
        "side by side in one run, with the methods timed in turn (round robin). What each peak holds "
        "(the logits and activations of one window; in some GPU runs an fp32 copy of the model for the KL divergence; "
        "LLM.int8()'s buffers) is taken apart in the appendix of comparable runs"
        + (f" ({doc.page_of('appendix-groups')})." if doc.page_of("appendix-groups") else ".")
    )
    reductions(doc, s)


def runs_methods_devices(doc: Doc, s: Study) -> None:
    """An appendix: every group of comparable runs, every method's description, the devices."""
    doc.appendix("runs, methods and devices", key="appendix-runs")
    rows = []
    for k in s.memory_groups():
        rs = s.groups[k]
        d = rs[0]["dataset"]
        trunc = "yes: first " + f"{d['max_tokens']:,}" if d.get("truncated") else "no (whole text)"
        rows.append(
            [
                model_label(rs[0]),
                pr.text_name(rs[0], short=True),
                d.get("sha256", "?")[:8],
                f"{k[2]} / {k[3]}",
                f"{k[4]:,}",
                str(rs[0]["perplexity"].get("n_windows", "?")),
                trunc,
                k[5],
                str(len(rs)),
            ]
        )
    if rows:
        doc.table(
            [
                "model",
                "text",
                "sha256",
                "L / S",
                "tokens scored",
                "windows",
                "token budget",
                "device",
                "runs",
            ],
            rows,
            "Every group of comparable runs: same model, text, windows, tokens and device.",
            widths=[2.4, 2.0, 1.6, 1.3, 1.5, 1.6, 2.0, 3.1, 1.0],
        )
    one_each = {method(r): r for rs in s.groups.values() for r in rs}
    names = sorted(one_each, key=lambda n: (not registry.is_baseline(one_each[n]), n))
    benched = sorted({n for b in s.benches for n in (b.get("bench") or {}).get("table", {})
                      if n in readings.BENCH_METHOD_WORDS})
    doc.table(
        ["method", "what it is"],
        [[short_name(one_each[n]), describe(one_each[n])] for n in names]
        + [[n, readings.BENCH_METHOD_WORDS[n] + " (speed benches)"] for n in benched],
        "The methods, as named in every table and figure.",
        widths=[4.6, 11.8],
    )
    for k in s.memory_groups():
        r0 = s.groups[k][0]
        if not pr.perplexity_means_something(r0):
            doc.p(
                f"<i>{escape(model_label(r0))}</i> has random weights: its runs give memory "
                "(and, in benches, latency) with GPT-2's exact shapes; its perplexity means "
                "nothing and is not shown."
            )
            break
    envs = {}
    for r in s.records:
        e = r.get("environment", {})
        if e:
            v = e.get("versions", {})
            envs.setdefault(
                e.get("device_name", "?"),
                (
                    e.get("cpu_count"),
                    v.get("torch"),
                    v.get("transformers"),
                    v.get("bitsandbytes"),
                    v.get("llama_cpp_python"),
                ),
            )
    if envs:
        doc.table(
            ["device", "CPU cores", "torch", "transformers", "bitsandbytes", "llama-cpp-python"],
            [
                [d, *(str(x) if x is not None else "–" for x in vals)]
                for d, vals in sorted(envs.items())
            ],
            "Devices and library versions, as recorded in the results files.",
            widths=[4.8, None, None, None, None, None],
        )


def reductions(doc: Doc, s: Study) -> None:
    """Which runs score only the start of the text: compared only with runs on the same tokens."""
    budgets = sorted({(pr.short_model(r), pr.device_of(r), r["dataset"]["max_tokens"]) for r in s.records
                      if isinstance(r.get("dataset"), dict) and r["dataset"].get("truncated")})
    if budgets:
        doc.p(
            "<b>Reductions.</b> Some runs score only the start of the test text, as each file "
            "records: the first "
            + "; ".join(f"{n:,} tokens on {escape(d if d.startswith('NVIDIA') else 'the CPU')} ("
                        + ", ".join(escape(m) for m in ms) + ")" for (d, n), ms in reduced(budgets).items())
            + ". They are compared only with runs on the same tokens. The tables count the tokens scored, one "
            "fewer: the first token has no context to be predicted from."
        )


def reduced(budgets: list[tuple]) -> dict:
    """(model, device, tokens) -> {(device, tokens): [models]}: one clause per budget and device."""
    out: dict = {}
    for m, d, n in budgets:
        out.setdefault((d, n), []).append(m)
    return out


def how_we_measure(doc: Doc, s: Study) -> None:
    doc.h1(heading("measure", "How we measure"), key="measure")
    methodology(doc, s)
    g = s.headline
    rec = next((r for r in s.groups[g] if r.get("per_line_perplexity")), None) if g else None
    if rec:
        pl, p = rec["per_line_perplexity"], rec["perplexity"]
        doc.p(
            f"<b>Corpus perplexity, not a mean over samples.</b> The assignment asks for at least "
            f"3000 evaluation points; the corpus figure scores {p['n_tokens_scored']:,} tokens, each "
            f"one a point. For comparison, the same run ({escape(method(rec))}) also scored each of "
            f"the first {pl['n_lines_asked']:,} non-empty lines alone ({pl['n_lines']:,} of them have "
            f"two tokens or more to score): the plain mean of those per-line perplexities is "
            f"{pl['mean_of_line_ppl']:,.2f}, their median {pl['median_of_line_ppl']:.2f}, against a "
            f"corpus perplexity of {f_ppl(p['ppl'])}: a short line scored without context can reach the "
            "thousands and weighs as much as a paragraph, while the corpus figure weighs every token once, "
            f"with up to {p['max_length']} tokens of context. Every table uses the corpus figure."
        )
    notes = stand_in_facts(s)
    if notes:
        doc.p(
            "<b>What the stand-ins do to each number.</b> "
            + (f"<i>smollm2-135m</i> {cite('smollm2')} is a real language model, but its weights were dequantized from "
               "a 4-bit file (Q4_1: a scale and a minimum per 32 weights): every 4-bit method here rounds "
               "them a second time, onto another grid (one absmax per 64 weights, other levels), so its "
               "4-bit penalties are those of re-quantization; " + origin_caveat(s)
               + " The 8-bit penalties are small either way. " if notes["smol"] else "")
            + (f"<i>gemma3-270m</i> {cite('gemma3')} is a second real model, dequantized from Q4_K_M, a milder "
               "origin (most tensors 5 to 8 bits). " if notes.get("gemma") else "")
            + (f"<i>gpt2-random</i> has GPT-2 small's {cite('gpt2')} exact shapes and random weights: its memory "
               "and speed are GPT-2's, its perplexity means nothing, and its activations have none "
               "of the outliers that LLM.int8() separates, so LLM.int8()'s accuracy and its speed on "
               "real models are not what it shows here." if notes["random"] else "")
        )


def origin_caveat(s: Study) -> str:
    """What section 4's side-by-side penalties say of smollm2-135m's origin, counted there."""
    o = origin_summary(s)
    if o is None:
        return "whether that makes them larger than on the original weights is not measured here."
    large = escape(o["large"])
    if o["worse"] * 2 > o["n"]:
        return (f"section 4 compares them with {large}'s, whose origin is milder: larger there for {o['worse']} of "
                f"{o['n']} methods (model and origin change together, so this cannot separate them); the origin "
                "may show instead in how little GPTQ gains over round-to-nearest.")
    return (f"section 4 compares them with {large}'s, whose origin is milder: smaller there for "
            f"{o['n'] - o['worse']} of {o['n']} methods, consistent with this origin inflating them.")


def stand_in_facts(s: Study) -> dict:
    labels = {pr.short_model(r) for r in s.records if isinstance(r.get("model"), dict) and r["model"].get("stand_in")}
    return {} if not labels else {"smol": any(standins.origin(r) == "Q4_1" for r in s.records),
                                  "gemma": any(standins.origin(r) == "Q4_K_M" for r in s.records),
                                  "random": any(results.random_weights(r) for r in s.records
                                                if isinstance(r.get("model"), dict))}
