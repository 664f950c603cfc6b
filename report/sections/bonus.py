"""The Bonus: GGUF with llama.cpp, the push to the Hub, and every scheme at nominally equal bits.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

from report.common import Study, delta, full_precision_mib, group_label, heading, noise_said, tie
from report.doc import Doc
from report.formats import f_mib, f_pct, f_ppl, f_timing, mib
from report.sections.closing import cite
from report.settings import setting_facts, settings_sentence
from study import registry


def gguf_section(doc: Doc, s: Study) -> None:
    doc.h1(heading("bonus", "Bonus: GGUF and llama.cpp"), key="bonus")
    doc.p(
        "<b>The formats.</b> GGUF is llama.cpp's " + cite("llama.cpp") + " single-file format: metadata "
        "(architecture, tokenizer, chat template), then typed tensors in an aligned data section. Q8_0 stores "
        "32 int8 weights with an fp16 scale (8.5 bits per weight), Q4_0 32 4-bit weights with one (4.5 bits); "
        "the k-quants (Q4_K, Q5_K, Q6_K) nest quantized sub-block scales in 256-weight super-blocks, and a "
        "<i>_M</i> mix gives sensitive tensors (attention values, FFN down) more bits. <b>How.</b> "
        "<i>bonus_gguf.py</i> converts the model with llama.cpp's own converter to F32 and F16, quantizes "
        "every other type from the F32 file with llama.cpp's quantizer (through llama-cpp-python), and "
        "scores each file through llama.cpp's logits in the same windows as every other method. "
        "<b>Deployment.</b> One memory-mapped file holds everything, and llama.cpp's integer kernels read "
        "its packed blocks directly on CPUs, Apple silicon and GPUs, without Python."
    )
    g = s.find_group("gguf-q8_0")
    if g:
        r = s.runs(g)
        names = [n for n in r if registry.of(r[n])["family"] in ("gguf", "baseline")]
        rows = []
        for n in names:
            v = r[n]
            lat = v.get("latency", {})
            rows.append(
                [
                    n,
                    f_mib(v["memory"].get("disk_mib")),
                    f_mib(v["memory"]["weights_mib"]),
                    f_ppl(v["perplexity"]["ppl"]),
                    f_pct(delta(r, n)),
                    f_timing(lat.get("prefill")),
                    f_timing((lat.get("decode") or {}).get("ms_per_token")),
                ]
            )
        doc.table(
            [
                "method",
                "file MiB",
                "tensor MiB",
                "perplexity",
                "vs fp32",
                "prefill ms (p10–p90)",
                "decode ms/tok (p10–p90)",
            ],
            rows,
            "GGUF files run by llama.cpp, scored on the same tokens and windows as "
            f"the Hugging Face fp32 baseline ({escape(group_label(g))}). Latencies of "
            "GGUF files were taken one file after another, not round robin.",
            widths=[2.4, 1.2, 1.35, 1.95, 1.75, None, None],
        )
        doc.label("gguf-table", "Table")
        x = gguf_facts(r)
        if x["f16_check"]:
            gguf_ppl, hf_ppl, change = x["f16_check"]
            doc.p(
                f"Conversion check: the F16 GGUF scores {f_ppl(gguf_ppl)} against {f_ppl(hf_ppl)} "
                f"for the Hugging Face model in float16 on the same tokens ({f_pct(change)})."
            )
        if x["k_quant_mix"]:
            doc.p(
                ("Q5_K_M scores no better than Q4_K_M here" if tie(r, "gguf-q4_k_m", "gguf-q5_k_m")
                 else "Q5_K_M scores worse than Q4_K_M here")
                + noise_said(r, "gguf-q5_k_m", "gguf-q4_k_m", "Q5_K_M's perplexity against Q4_K_M's")
                + ". What the files hold: k-quants need rows "
                "that are a multiple of 256, and llama.cpp falls back to another type per "
                "tensor when they are not. "
                + " ".join(
                    f"{name} holds " + ", ".join(f"{f_mib(v)} MiB of {t}" for t, v in mix) + "."
                    for name, mix in x["k_quant_mix"]
                )
                + " So " + " and ".join(
                    f"{name} keeps {100 * registry.nominal_type_share(dict((t, v) for t, v in mix), name):.0f}% of "
                    f"its bytes in {registry.GGUF_NOMINAL_TYPE.get(name, name)}" for name, mix in x["k_quant_mix"])
                + ": the name says which mix llama.cpp aimed at, not what the file holds. The types alone do not "
                "explain the ranking: it stays open."
            )


def gguf_inside(doc: Doc, s: Study) -> None:
    """An appendix: one real file's header, metadata and first tensors, as gguf-inspect read them."""
    if s.inspection:
        doc.appendix("inside a GGUF file", key="appendix-gguf")
        gi = s.inspection["gguf_inspection"]
        md = gi["metadata"]
        keys = [
            k
            for k in md
            if not k.startswith("tokenizer.ggml.") or isinstance(md[k], (int, float, str))
        ]
        stand_in = (
            (s.inspection.get("model") or {}).get("stand_in") or s.inspection.get("stand_in") or ""
        )
        doc.p(
            f"{escape(gi['file'])}, made from {escape(stand_in.split(' (')[0] if stand_in else 'the model')}"
            f": magic {escape(gi['header']['magic'])}, "
            f"version {gi['header']['version']}, {gi['header']['tensor_count']} tensors, "
            f"{gi['header']['kv_count']} metadata keys, {gi['file_bytes']:,} bytes, of which "
            f"{gi['tensor_bytes']:,} are tensor data ("
            + ", ".join(
                f"{t} {f_mib(mib(v))} MiB"
                for t, v in sorted(gi["bytes_by_type"].items(), key=lambda x: -x[1])
            )
            + ")."
        )
        show = [k for k in keys if not isinstance(md[k], dict) and k != "tokenizer.chat_template"][
            :16
        ]
        doc.table(
            ["metadata key", "value"],
            [[k, (f"{md[k]:.6g}" if isinstance(md[k], float) else str(md[k]))[:60]] for k in show],
            f"The first {len(show)} of the file's metadata keys (tokenizer arrays and chat template not shown).",
            widths=[7, None],
        )
        tensors = gi["tensors"]
        rows = [
            [
                t["name"],
                str(t.get("type")),
                " × ".join(map(str, t.get("shape", []))),
                f"{t['bytes']:,}",
            ]
            for t in tensors[:14]
        ]
        doc.table(
            ["tensor", "type", "shape", "bytes"],
            rows,
            f"The first {len(rows)} of the file's {len(tensors)} tensors, in file order, "
            "with their GGML types: the per-tensor type mix is how a _M file gives some "
            "tensors more bits.",
            widths=[6, None, None, None],
        )


def gguf_facts(r: dict[str, dict]) -> dict:
    """The conversion check (F16 GGUF against HF float16) and, where Q5_K_M scores worse than
    Q4_K_M, the GGML types each file really holds (MiB by type, largest first)."""
    f16 = None
    if "gguf-f16" in r and "baseline-fp16" in r:
        f16 = (
            r["gguf-f16"]["perplexity"]["ppl"],
            r["baseline-fp16"]["perplexity"]["ppl"],
            delta(r, "gguf-f16", "baseline-fp16"),
        )
    mix = None
    if (
        "gguf-q5_k_m" in r
        and "gguf-q4_k_m" in r
        and r["gguf-q5_k_m"]["perplexity"]["ppl"] > r["gguf-q4_k_m"]["perplexity"]["ppl"]
    ):
        mix = [
            (
                n[5:].upper(),
                [
                    (t, mib(v))
                    for t, v in sorted(
                        r[n]["method"]["settings"].get("bytes_by_ggml_type", {}).items(),
                        key=lambda x: -x[1],
                    )
                ],
            )
            for n in ("gguf-q5_k_m", "gguf-q4_k_m")
        ]
    return {"f16_check": f16, "k_quant_mix": mix}


def push_paragraph(doc: Doc, s: Study) -> None:
    """What was pushed where: read from the gguf-push records that a real push writes."""
    real = [r for r in s.pushes if "huggingface.co" in str(r["push"].get("endpoint", ""))]
    if real:
        for r in real:
            p = r["push"]
            doc.p(
                f"<b>On the Hub.</b> {len(p['files']) - 1} GGUF files and a model card were "
                f"pushed to {escape(p['url'])} (commit {escape(str(p['commit'])[:12])}, "
                f"{escape(r['timestamp'][:10])}): "
                + ", ".join(escape(f["name"]) for f in p["files"])
                + "."
            )
        return
    doc.p(
        "<b>On the Hub.</b> No push is recorded: the study's machines cannot reach the Hugging Face Hub. "
        "<font face='DejaVuMono'>bonus_gguf.py --push-to-hub USER/REPO</font> (with HF_TOKEN set) pushes "
        "every GGUF file and a model card in one commit through the real huggingface_hub client, a path "
        "checked against a local imitation of the Hub's upload endpoints (files read back byte for byte)."
    )


def bonus(doc: Doc, s: Study) -> None:
    gguf_section(doc, s)
    push_paragraph(doc, s)


def equal_bits(doc: Doc, s: Study) -> None:
    g = s.find_group("gguf-q8_0", "bnb-nf4")
    if not g:
        return
    r = s.runs(g)
    classes = [("8-bit", ("scratch-int8-per_channel", "scratch-int8-asymmetric", "bnb-int8", "gguf-q8_0")),
               ("4-bit", ("scratch-int4-int4", "scratch-int4-nf4", "bnb-fp4", "bnb-nf4", "bnb-nf4-dq",
                          "gguf-q4_0", "gguf-q4_k_m"))]
    x = equal_bits_facts(r, classes)
    rows = [[bits, n, f"{x['bpw'][n]:.2f}", f_mib(r[n]["memory"]["weights_mib"]), f_mib(r[n]["memory"].get("disk_mib")),
             f_ppl(r[n]["perplexity"]["ppl"]), f_pct(delta(r, n))]
            for bits, names in classes for n in names if n in r]
    doc.h2("GGUF against Part 1 and Part 2, at nominally equal bits")
    doc.table(["class", "method", "bits/weight, whole model", "weights MiB", "disk MiB", "perplexity", "vs fp32"], rows,
              "The same tokens for every row: "
              + settings_sentence(setting_facts(r["baseline-fp32"])).split(" Prefill")[0]
              + " Bits/weight: every byte of the model's weights in memory (GGUF: the file's tensor data), "
              "× 8, over the parameter count (fp32 bytes ÷ 4); it counts scales and what stays in full precision.",
              widths=[1.3, 4.1, None, None, None, None, None])
    text = []
    if x["q8"]:
        lo, hi = x["q8"]
        text.append(f"At 8 bits the perplexity cost runs from {f_pct(lo[1])} ({escape(lo[0])}) to "
                    f"{f_pct(hi[1])} ({escape(hi[0])}).")
    if "gguf-q4_k_m" in r and "bnb-nf4" in r:
        mix = r["gguf-q4_k_m"]["method"]["settings"].get("bytes_by_ggml_type") or {}
        text.append(
            f"The 4-bit names hide different sizes: Q4_K_M costs {f_pct(delta(r, 'gguf-q4_k_m'))} at "
            f"{x['bpw']['gguf-q4_k_m']:.2f} bits per weight, because a _M mix gives many tensors 5, 6 or 8 "
            "bits"
            + (" (" + ", ".join(f"{f_mib(mib(v))} MiB of {t}" for t, v in sorted(mix.items(), key=lambda kv: -kv[1]))
               + ")" if mix else "")
            + f"; bitsandbytes NF4 costs {f_pct(delta(r, 'bnb-nf4'))} at {x['bpw']['bnb-nf4']:.2f} bits per "
            f"weight, most of them in the {f_mib(full_precision_mib(r['bnb-nf4']))} MiB it keeps in full "
            "precision (the embedding), while its linear layers hold 4-bit codes and one absmax per 64.")
    if text:
        doc.p(" ".join(text))


def equal_bits_facts(r: dict, classes) -> dict:
    params = r["baseline-fp32"]["memory"]["weights_mib"] / 4           # MiB of fp32 weights / 4 bytes
    bpw = {n: r[n]["memory"]["weights_mib"] * 8 / params for _, names in classes for n in names if n in r}
    q8 = sorted(((n, delta(r, n)) for n in classes[0][1] if n in r), key=lambda x: x[1])
    return {"bpw": bpw, "q8": (q8[0], q8[-1]) if q8 else None}
