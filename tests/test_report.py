"""report/build_report.py: the fixture results make a PDF whose numbers are the JSON's."""
import json
import math

import pypdf
import pytest

from report import build_report as br


def pdf_text(path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(str(path)).pages)


def speed_text(path) -> str:
    """The text of the speed report that build_report writes beside the main one."""
    return pdf_text(br.speed_pdf(path)).replace("\n", " ")


@pytest.fixture()
def built(results_dir, tmp_path, capsys):
    out = tmp_path / "report" / "report.pdf"
    br.main(results=str(results_dir), out=str(out), figures=str(tmp_path / "report" / "figures"))
    return out, capsys.readouterr().err


def test_fixture_results_make_the_pdf_and_its_figures(built, tmp_path):
    out, err = built
    assert out.read_bytes()[:5] == b"%PDF-" and len(pypdf.PdfReader(str(out)).pages) >= 4
    assert not list(out.parent.glob("*.tmp"))                                   # written atomically
    figs = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    group = "m-small_wiki.test.raw_L64-S32-N999_cpu"
    assert {f"pareto_{group}.png", "sensitivity_m-small.png", "nf4_levels_tiny.png",
            "latency_bnb-bench_g_cuda.png"} <= set(figs)
    text = pdf_text(out)
    images = sum(len(page.images) for page in pypdf.PdfReader(str(out)).pages)
    n_captions = len(__import__("re").findall(r"Figure \d+\.", text))
    assert images == n_captions >= 4                                             # each figure is in the PDF
    assert "report/figures/" not in text                                        # captions name no file path
    assert "broken.json" in err                                                 # skipped, with a warning


def test_numbers_in_the_report_equal_the_json(built, results_dir):
    text = pdf_text(built[0]).replace("\n", " ")
    recs = {p.name: json.loads(p.read_text()) for p in results_dir.glob("*.json") if p.name != "broken.json"}
    base = recs["a.json"]["perplexity"]["ppl"]
    for name in ("a.json", "b.json", "c.json", "d.json", "e.json", "f.json"):
        r = recs[name]
        ppl = r["perplexity"]["ppl"]
        assert f"{ppl:.4f}" in text, name
        assert f"{100 * (ppl / base - 1):+.2f}%" in text, name
        assert f"{r['memory']['weights_mib']:.1f}" in text, name
    # comparisons in the prose, computed here independently from the same files
    nf4, fp4, i4 = (recs[f]["perplexity"]["ppl"] for f in ("c.json", "d.json", "e.json"))
    assert f"NF4's perplexity is {100 * (1 - nf4 / fp4):.1f}% lower than FP4's" in text       # 20.0%
    assert f"{100 * (1 - nf4 / i4):.1f}% lower than Part 1's linear int4's" in text                   # 9.1%
    m = recs["cmp.json"]["compare"]["mean_rel_mse"]
    assert f"{m['bnb-fp4'] / m['bnb-nf4']:.2f}× smaller than FP4's" in text
    w32, w8 = recs["a.json"]["memory"]["weights_mib"], recs["b.json"]["memory"]["weights_mib"]
    assert f"({w32 / w8:.2f}× smaller)" in text
    assert "28,311,552 are tensor data" in text                                  # the GGUF inspection
    assert "Stand-in models." in text and "m-small (stand-in)" in text        # the stand-in is named


def test_the_fast_path_findings_are_the_benchs_numbers(built, results_dir):
    main = pdf_text(built[0]).replace("\n", " ")
    text = main + " " + speed_text(built[0])
    t = json.loads((results_dir / "fast.json").read_text())["bench"]["table"]
    f = {n: v["fast_path"]["decode_ms_per_token"]["median"] for n, v in t.items()}
    assert ("Faster than it beyond ±3% (no rerun measures the noise): "
            f"scratch-int4-fast {f['scratch-int4-fast']:.2f} ms "
            f"({f['scratch-int4-fast'] / 0.8:.2f}×)") in text
    assert f"Slower: scratch-nf4-fast {f['scratch-nf4-fast']:.2f} ms (1.12×)" in text
    assert "Every fast path makes the same greedy tokens as its model's generate()." in main   # the abstract's
    assert "g2 (stand-in)" in text
    lin, step = t["fp16"]["linear_us_per_token"], 1e3 * f["fp16"]
    assert (f"the linear layers take about {lin:.0f} µs of a {step:.0f} µs decode step; "
            f"the other ~{step - lin:.0f} µs") in text
    assert f"could not decode faster than {(step - lin) / step:.2f}× fp16's time" in text
    assert "4.0e-04" in text and "5.0e-04" in text                           # the kernel check, per method


def test_a_section_without_its_measurements_says_so(tmp_path):
    from conftest import record
    d = tmp_path / "r"
    d.mkdir()
    (d / "a.json").write_text(json.dumps(record("baseline-fp32", 20.0, 100.0)))
    out = br.main(results=str(d), out=str(tmp_path / "r.pdf"), figures=str(tmp_path / "f"))
    text = pdf_text(out)
    assert "No comparable perplexity runs in these results." in text
    assert "No latency benchmark in these results." in text


def test_missing_results_folder_is_one_clear_line(cli_error, tmp_path):
    assert "does not exist" in cli_error(br, ["--results", str(tmp_path / "none")])


def test_settings_and_bandwidth_are_read_from_the_results_not_typed(built):
    """The fixture's benches use 1x333 prefill, 77 new tokens after 11, and 1.23 TB/s: numbers
    the committed results do not have, so text that says them was read from the files."""
    main, text = pdf_text(built[0]).replace("\n", " "), speed_text(built[0])
    assert "Here prefill is one forward pass over 1×333 tokens, decode greedy generation of 77 new tokens " \
           "after a 11-token prompt" in text
    assert "Prefill 1×333 tokens; decode 77 new tokens after 11" in text
    assert "floor = weight bytes ÷ 1.23 TB/s" in text and "at 1.23 TB/s would take" in text
    assert "at 1.23 TB/s would take" in main.split("6. Speed: what a user gets")[1]   # the main report's why
    assert "512" not in text.split("Speed in detail: every bench")[1]         # no typed prefill length left


def test_the_headline_table_and_its_settings_are_the_fixtures(built, results_dir):
    """The appendix's headline table: every method of the one group, with its own numbers; the
    sentence under it says the fixture's text, tokens, windows, device and timing lengths."""
    text = pdf_text(built[0]).replace("\n", " ")
    summary = text.split("every method on the headline model")[-1].split("Appendix")[0]
    assert "Table " in summary
    # every timing with its p10–p90 (the fixture's: 0.9 and 1.1 times the median)
    # each timing's median, with its p10–p90 under it (0.1 ms)
    assert "baseline-fp32 100.0 – 12.34 11.1–13.6 5.67 5.1–6.2 20.0000 +0.00%" in summary
    assert "scratch-int8-per_channel 26.0 – 9.87 8.9–10.9 4.32 3.9–4.8 20.1000 +0.50%" in summary
    assert "bnb-nf4 14.0 – – – 25.0000 +25.00%" in summary
    part1 = text.split("2. Part 1: INT8 from scratch")[1].split("3. Part 2")[0]
    assert "Under each timing median: its p10–p90" in part1         # Table 2: the spread under each median
    assert all(f"{0.9 * x:.1f}–{1.1 * x:.1f}" in part1 for x in (12.34, 5.67, 9.87, 4.32))
    assert f"gguf-q8_0 27.0 {28.25:.1f} – – 20.2000 +1.00%" in summary
    assert ("m-small on WikiText-2 (raw), test split: all 999 scored tokens of the text, windows "
            "of 64 tokens at stride 32") in summary
    assert "on cpu: test." in summary
    assert "Prefill is one forward pass over 1×333 tokens" in summary
    assert "77 new tokens after a 11-token prompt" in summary


def test_sections_follow_the_assignment(built):
    text = pdf_text(built[0]).replace("\n", " ")
    heads = ["Abstract: five findings", "Where each question is answered", "1. How we measure",
             "2. Part 1: INT8 from scratch", "3. Part 2: bitsandbytes",
             "4. Exploration: GPTQ, AWQ, BF16 and a larger model", "5. Bonus: GGUF and llama.cpp",
             "6. Speed: what a user gets", "7. Which scheme to choose", "8. Limitations and open questions",
             "9. Conclusions", "References", "Appendix A: glossary", "Appendix B", "Appendix C"]
    at = [text.find(h) for h in heads]
    assert -1 not in at and at == sorted(at), dict(zip(heads, at))


def test_the_anatomy_section_is_the_records_numbers(results_dir, tmp_path):
    """Anatomy records (fast_decode.py --anatomy) make the section on what bounds the fused step:
    its prose carries the records' chain (the faster of separate kernels and one persistent
    kernel), bytes, bound, the most links for 0.90x, what one kernel costs against separate
    ones and the per-GEMV ratios of the largest model, each computed here independently; its
    figure is made."""
    import torch
    from conftest import BLOCK_US, anatomy_result

    import results
    small, large = anatomy_result(), anatomy_result()
    large["links"] = 243
    for name, floor in (("fp16", 0.65), ("scratch-int8-fast", 0.325)):
        large["steps"][name]["floor_ms"] = floor
    large["chains"]["grid-barrier"]["step_ms"]["median"] = 0.06        # here one kernel beats separate ones
    for model, a in (("g2", small), ("g2xl", large)):
        rec = results.new_record("anatomy", "step-anatomy", {},
                                 {"id": f"/x/{model}", "stand_in": f"{model} (stand-in)"},
                                 torch.device("cpu"), anatomy=a)
        rec["environment"].update(device="cuda:0", device_name="NVIDIA Test GPU")
        (results_dir / f"anatomy-{model}.json").write_text(json.dumps(rec))
    out = tmp_path / "r" / "report.pdf"
    br.main(results=str(results_dir), out=str(out), figures=str(tmp_path / "r" / "figures"))
    text = speed_text(out)
    assert "What bounds the fused step: its chain of kernels" in text
    assert "takes 0.080 ms on the NVIDIA Test GPU, against 0.050 ms to read every fp16 weight" in text
    assert "The chain outlasts the bytes" in text and "could reach is 1.00× that of an fp16 step built as well" in text
    n = int(0.9 * 0.05 * 1000 / (0.08 * 1000 / 63))                     # the longest chain whose bound is 0.9
    assert f"at most {n} links (at the chain's {80 / 63:.2f} µs a link), {(n - 3) / 12:.2f} a block once" in text
    q8_ratio = small['steps']['scratch-int8-fast']['vs_baseline']
    assert q8_ratio < 1                                  # below its bound of 1.00: the text says why
    assert (f"Measured, INT8 takes {q8_ratio:.2f}× fp16's time (below the bound because the measured fp16 step "
            "does not hide its weight reads") in text
    assert f"counted as empty links, {40 / 63:.2f} µs each, the chain still takes" in text
    assert ("the same 63 links take 0.100 ms, 1.25× the separate kernels' (0.75× to 1.25× over the 2 models "
            "measured): a link joined by this barrier costs more than one joined by a launch with PDL, so this "
            "one-kernel version lowers the bound nowhere") in text
    allowed, read = 0.9 * 0.05 * 1000 / 63, (0.08 - 0.04) * 1000 / 63  # us a link: all 0.90x allows; the read
    assert (f"a link may take {allowed:.2f} µs in all; reading the vector that other programs wrote adds "
            f"{read:.2f} µs to a link (the vector chain against the empty one), which would leave "
            f"{allowed - read:.2f} µs for any barrier") in text
    assert "(243 links) the chain takes 0.060 ms against 0.650 ms of fp16 bytes" in text     # the faster chain
    (q, _, o, u, d), (q8, _, o8, u8, d8) = BLOCK_US["fp16"], BLOCK_US["scratch-int8-fast"]
    assert (f"(48 layers), INT8's against fp16's: QKV GEMV {q8 / q:.2f}×, up GEMV {u8 / u:.2f}×, "
            f"out-projection GEMV {o8 / o:.2f}×, down GEMV {d8 / d:.2f}×") in text
    assert (tmp_path / "r" / "figures" / "fused_step_anatomy_cuda.png").exists()


def explore_record(key, group, ppl, bpw, kld, source=None, variant=None, proxy=None, seconds=2.5):
    """An explore_calibrated.py record as it writes one (only the fields the report reads)."""
    from conftest import record

    from study import registry
    rec = record("baseline-fp32", ppl, 14.5 if group else 13.5)
    rec["method"]["identity"] = registry.identity(key, group_size=group, variant=variant)
    rec["method"]["name"] = rec["method"]["identity"]["name"]
    cal = None if source is None else {
        "source": source, "description": f"the {source} text", "licence": "CC0", "n_samples": 7, "seq_len": 48,
        "seed": 3, "overlap_check": {"span_tokens": 32, "shared_spans": 0}}
    rec["method"]["settings"] = {"method": key.split("-")[0], "bits": int(key[-1]), "group_size": group,
                                 "damp": 0.02, "block_size": 16, "calibration": cal}
    rec["bits_per_weight"] = {"quantized_layers": {"bits_per_weight": bpw}, "model": {"bits_per_weight": bpw + 1}}
    rec["divergence"] = {"kld_mean": kld, "kld_p99": 4 * kld, "top1_agreement": 0.75}
    rec["quantize"] = {"seconds": seconds, "blocks": [{"layers": [
        {"proxy_error": p, "proxy_error_rtn": 1.0} for p in (proxy or [])]}]}
    return rec


def test_the_exploration_table_has_a_band_where_a_run_kept_its_windows(results_dir, tmp_path):
    """A run whose windows pair with fp32's gets its 95% band in the grid (every token 0.01 nats
    worse: the band is exactly exp(0.01) - 1); a run without windows gets a dash, which the
    caption explains."""
    counts = [10, 12, 9, 11]
    base = json.loads((results_dir / "a.json").read_text())
    base["perplexity"]["windows"] = {"nll_sum": [3.0 * c for c in counts], "n_scored": counts}
    (results_dir / "a.json").write_text(json.dumps(base))
    gptq = explore_record("gptq-w4", 0, 30.0, 4.059, 0.5, "wiki", proxy=[0.2])
    gptq["perplexity"]["windows"] = {"nll_sum": [3.01 * c for c in counts], "n_scored": counts}
    runs = {"rtn-pc.json": explore_record("rtn-w4", 0, 40.0, 4.059, 0.9), "gptq-pc.json": gptq,
            "rtn-g.json": explore_record("rtn-w4", 64, 28.0, 4.625, 0.4),
            "awq-g.json": explore_record("awq-w4", 64, 24.0, 4.630, 0.1, "wiki")}
    for name, rec in runs.items():
        (results_dir / name).write_text(json.dumps(rec))
    out = br.main(results=str(results_dir), out=str(tmp_path / "r.pdf"), figures=str(tmp_path / "f"))
    section = pdf_text(out).replace("\n", " ").split("4. Exploration: GPTQ, AWQ, BF16")[1].split("5. Bonus")[0]
    shift = f"{100 * (math.exp(0.01) - 1):+.2f}"
    assert f"gptq-w4-pc 4.059 13.5 30.0000 +50.00% [{shift}, {shift}] 0.500 75.0% 2.5" in section
    assert "rtn-w4-pc 4.059 13.5 40.0000 +100.00% – 0.900" in section
    assert "a dash: that run's record keeps no per-window NLL" in section


def test_the_exploration_section_is_the_records_numbers(results_dir, tmp_path):
    """Round-to-nearest, GPTQ and AWQ records make section 5: the grid table, the targets (each
    ratio of perplexity changes computed here), NF4's comparison at <= 4.6 bits, GPTQ's layer-wise
    error against round-to-nearest's, the calibration sources, and the settings of the records."""
    runs = {"rtn-pc.json": explore_record("rtn-w4", 0, 40.0, 4.059, 0.9),
            "gptq-pc.json": explore_record("gptq-w4", 0, 30.0, 4.059, 0.5, "wiki", proxy=[0.2, 0.4, 0.6]),
            "rtn-g.json": explore_record("rtn-w4", 64, 28.0, 4.625, 0.4),
            "awq-g.json": explore_record("awq-w4", 64, 24.0, 4.630, 0.1, "wiki", seconds=9.25),
            "gptq-g.json": explore_record("gptq-w4", 64, 27.0, 4.625, 0.3, "wiki", proxy=[0.5]),
            "gptq-g-novel.json": explore_record("gptq-w4", 64, 26.0, 4.625, 0.3, "novel", variant="cal-novel",
                                                proxy=[0.25])}
    for name, rec in runs.items():
        (results_dir / name).write_text(json.dumps(rec))
    out = br.main(results=str(results_dir), out=str(tmp_path / "r.pdf"), figures=str(tmp_path / "f"))
    text = pdf_text(out).replace("\n", " ")
    section = text.split("4. Exploration: GPTQ, AWQ, BF16 and a larger model")[1].split("5. Bonus")[0]
    assert "gptq-w4-pc 4.059 13.5 30.0000 +50.00% 0.500 75.0% 2.5" in section     # bits, grouping: in the name
    assert "awq-w4-g64 4.630 14.5 24.0000 +20.00% 0.100 75.0% 9.2" in section
    base = 20.0
    d = {n: 100 * (p / base - 1) for n, p in (("rtn-pc", 40), ("gptq-pc", 30), ("rtn-g", 28), ("awq-g", 24))}
    assert f"gptq-w4-pc against rtn-w4-pc ≤ 0.5 {d['gptq-pc'] / d['rtn-pc']:.2f}× met" in section      # 0.50
    assert f"awq-w4-g64 against rtn-w4-g64 ≤ 0.7 {d['awq-g'] / d['rtn-g']:.2f}× met" in section        # 0.50
    # at <= 4.6 bits only the per-channel runs fit; gptq-w4-pc's +50% does not beat NF4's +25%
    assert "beats NF4 < +25.00% gptq-w4-pc: +50.00% missed" in section
    assert ("its median over the layers is 0.25 to 0.50 × round-to-nearest's (3 GPTQ runs, every block "
            "linear)") in section
    assert "novel +30.00%, wiki +35.00%. The source moves the perplexity change by 5.00 points; GPTQ's change " \
           "(on the default source) is 5.00 points smaller than round-to-nearest's." in section
    assert "Q4_1" not in section                                   # said of the Q4_1 stand-in only
    assert "dampened by 0.02" in section and "blocks of 16 columns" in section
    assert "7 windows of 48 tokens (seed 3) of the wiki text (CC0)" in section
    assert "finds 0 spans of 32 tokens shared" in section
    summary = text.split("Abstract: five findings")[1].split("1. How we measure")[0]
    assert ("Calibrated 4-bit (section 4). awq-w4-g64 moves perplexity by +20.00% (KL divergence 0.100) at 4.630 "
            "bits per weight, against round-to-nearest's +40.00% on the same grid and bitsandbytes NF4's +25.00%"
            ) in summary
    assert "2 of the 2 targets against round-to-nearest are met" in summary


def test_the_larger_model_question_is_answered_from_bits_per_byte(tmp_path):
    """Two models on one text: the paragraph's numbers, the best run of the larger model within the
    smaller one's fp16 memory, and where the frontier turns, each computed here from the records."""
    from conftest import record
    d = tmp_path / "r"
    d.mkdir()
    runs = [("small", "baseline-fp32", 400.0, 1.07), ("small", "baseline-fp16", 200.0, 1.0701),
            ("small", "bnb-nf4", 70.0, 1.15), ("large", "baseline-fp32", 1000.0, 1.05),
            ("large", "bnb-nf4", 190.0, 1.06), ("large", "scratch-int4-int4", 150.0, 1.12)]
    ppl = {("small", "bnb-nf4"): 25.0, ("large", "bnb-nf4"): 22.0}
    for i, (model, method, mib, bpb) in enumerate(runs):
        r = record(method, ppl.get((model, method), 20.0), mib, model=model)
        if method == "bnb-nf4":
            r["quantization"] = {"full_precision_detail": {"embeddings": 100 * 2**20}, "total": int(mib * 2**20)}
        r["dataset"]["sha256"] = "b" * 64
        r["perplexity"].update(bits_per_byte=bpb, n_bytes=64757 if model == "small" else 66890, word_perplexity=40.0)
        if (model, method) in (("small", "baseline-fp16"), ("large", "bnb-nf4")):   # windows cut apart: 8 x 500
            n, size = (8, 500) if model == "small" else (16, 250)                   # bytes against 16 x 250
            r["perplexity"]["windows"] = {"nll_sum": [bpb * math.log(2) * size] * n, "n_scored": [100] * n,
                                          "n_bytes": [size] * n}
        (d / f"{i}.json").write_text(json.dumps(r))
    out = br.main(results=str(d), out=str(tmp_path / "r.pdf"), figures=str(tmp_path / "f"))
    text = pdf_text(out).replace("\n", " ")
    section = text.split("A larger quantized model against a smaller unquantized one")[-1].split("5. Bonus")[0]
    assert "In fp32, large scores 1.0500 at 1000.0 MiB, small 1.0700 at 400.0 MiB." in section
    # within small fp16's 200 MiB, large's best is bnb-nf4 (190 MiB, 1.06 < 1.0701): it beats it
    # the two runs' windows, paired by bytes: 1.0600 - 1.0701 everywhere, so a band of one point, not a tie
    assert ("Within small baseline-fp16's 200.0 MiB (1.0701), large's best run is bnb-nf4 (large, 190.0 MiB, "
            "1.0600): it beats the smaller model unquantized (on the 4,000 bytes both scored, 1.0600 against 1.0701, "
            "95% band of the difference -0.0101 to -0.0101).") in section
    # frontier by memory: small nf4 (70, 1.15), large int4 (150, 1.12), large nf4 (190, 1.06), large fp32 (1.05)
    assert ("The answer turns once, at 150.0 MiB: below it every frontier point is small's, from it on every one "
            "is large's, starting with scratch-int4-int4 (large, 150.0 MiB, 1.1200).") in section
    # both ran bnb-nf4: +25% (25/20) on small against +10% (22/20) on large; int4 only on large
    assert "bnb-nf4 +25.00% against +10.00%." in section and "scratch-int4-int4 +" not in section
    assert ("The penalty is smaller on large for 1 of these 1 methods: consistent with small's origin inflating "
            "its 4-bit penalties.") in section
    # large's bnb-nf4 keeps a 100 MiB fp32 embedding of its 190 MiB
    assert ("large's embedding, tied to its output layer, is 100.0 MiB in fp32: 53% of the 190.0 MiB that a run "
            "quantizing only the decoder blocks stores (bnb-nf4).") in section


def test_the_rounding_origin_paragraph_sets_a_calibrated_gain_beside_each_model():
    """GPTQ's perplexity change over round-to-nearest's on the same grid, per model: the evidence that
    the smaller model's origin (not GPTQ) limits its gain, computed here from the records' ppl."""
    from conftest import record

    from report.common import Study
    from report.sections import models as sm
    from study import registry
    recs = []
    for model, ppls in (("small", {"baseline-fp32": 20.0, "rtn-w4-g64": 26.0, "gptq-w4-g64": 25.0}),
                        ("large", {"baseline-fp32": 18.0, "rtn-w4-g64": 30.0, "gptq-w4-g64": 21.0})):
        for method, ppl in ppls.items():
            r = record("baseline-fp32", ppl, {"small": 500.0, "large": 1000.0}[model], model=model)
            if method != "baseline-fp32":
                r["method"] = {"name": method, "settings": {"bits": 4, "group_size": 64},
                               "identity": registry.identity(method[:-4], group_size=64)}
            r["dataset"]["sha256"] = "c" * 64
            r["perplexity"].update(bits_per_byte=ppl / 20, n_bytes=1000, word_perplexity=40.0)
            recs.append(r)
    s = Study(recs)
    x = sm.models_facts(s)
    o = sm.origin_facts(s, x)
    twin, g = o["gain"]["gptq-w4-g64"]
    assert twin == "rtn-w4-g64"
    assert g["small"] == pytest.approx((25 / 20 - 1) / (26 / 20 - 1))                   # 0.25 / 0.30
    assert g["large"] == pytest.approx((21 / 18 - 1) / (30 / 18 - 1))                   # 0.1667 / 0.6667


def test_the_part1_scan_shown_is_the_headline_models():
    """With a scan of each of two models, the Part 1 section shows the one of the model the summary
    is about (the headline group's), not whichever file sorts first."""
    from conftest import record

    from report.common import Study
    recs = [record("baseline-fp32", 20.0, 500.0, model="b-main"), record("bnb-nf4", 25.0, 150.0, model="b-main"),
            record("scratch-int8-per_channel-sensitivity", 30.0, 1000.0, model="a-other", sensitivity={}),
            record("scratch-int8-per_channel-sensitivity", 22.0, 500.0, model="b-main", sensitivity={})]
    s = Study(recs)
    assert s.headline[0] == "b-main" and s.sensitivity["model"]["id"].endswith("b-main")


def map_citations(pdf) -> list[tuple[str, int, int]]:
    """(kind, number, page) of every figure or table the question map cites, read from page 2."""
    import re
    page2 = pypdf.PdfReader(str(pdf)).pages[1].extract_text().replace("\n", " ")
    return [(k, int(n), int(p)) for k, n, p in re.findall(r"(Figure|Table) (\d+),? p\. (\d+)", page2)]


def check_map(pdf) -> int:
    """Each figure and table the question map cites begins on the page it names; -> how many."""
    pages = [p.extract_text().replace("\n", " ") for p in pypdf.PdfReader(str(pdf)).pages]
    cited = map_citations(pdf)
    for kind, n, page in cited:
        assert f"{kind} {n}." in pages[page - 1], (kind, n, page)
    return len(cited)


def test_the_question_map_cites_the_pages_where_its_figures_and_tables_are(built):
    """The map on page 2 names pages that only a later layout knows: each is the page where that
    figure's or table's caption is; the PDF's subject says where the main body ends."""
    out = built[0]
    assert check_map(out) >= 3
    text = pypdf.PdfReader(str(out)).pages[1].extract_text()
    assert "Where each question is answered" in text and "Not measured in these results." in text
    last = br.main_body_pages(out)
    body = [p.extract_text() for p in pypdf.PdfReader(str(out)).pages]
    assert "Language Models are Unsupervised" in body[last - 1]                # the last reference
    assert "Appendix A: glossary" in body[last]


def test_the_committed_reports_main_body_fits_fourteen_pages(tmp_path):
    """The reader's budget, on the records the repository carries: the main body (cover to
    references) is at most 14 pages, and its question map points at the right pages."""
    from pathlib import Path
    root = Path(br.__file__).resolve().parents[1]
    out = br.build_report(root / "results", tmp_path / "report.pdf", tmp_path / "figures")
    assert br.main_body_pages(out) <= 14
    assert br.smallest_figure_text(out) >= 7.0                 # every figure's text, at print size
    assert check_map(out) >= 8
    assert br.speed_pdf(out).exists() and br.smallest_figure_text(br.speed_pdf(out)) >= 7.0


def test_part2_calls_a_difference_a_tie_only_when_its_band_holds_zero():
    """The text's comparisons (NF4-DQ against NF4, Part 1's NF4 against bitsandbytes') say what the
    paired bootstrap says: every token 0.01 nats worse is beyond the noise, the same windows a tie,
    and a record without windows says nothing."""
    from report.common import noise_said
    counts = [10, 12, 9, 11]

    def rec(per_token):
        return {"perplexity": {"windows": {"nll_sum": [per_token * c for c in counts], "n_scored": counts}}}
    r = {"a": rec(3.0), "b": rec(3.01), "same": rec(3.0), "old": {"perplexity": {"ppl": 20.0}}}
    shift = f"{100 * (math.exp(0.01) - 1):+.2f}"
    said = noise_said(r, "b", "a", "b against a")
    assert said == f", beyond the noise: the 95% band of b against a is [{shift}, {shift}]%"
    assert noise_said(r, "same", "a") == ", a tie: the 95% band of the difference, [+0.00, +0.00]%, holds zero"
    assert noise_said(r, "old", "a") == ""


def test_the_whole_text_confirms_the_prefix_groups_answer_and_origin(tmp_path):
    """A prefix group (CPU) answers the question; each model's whole-text runs (each on its own GPU) are
    set beside it: the same pair's bits per byte and the count of larger 4-bit penalties, computed here."""
    from conftest import record
    d = tmp_path / "r"
    d.mkdir()
    runs = [("small", "baseline-fp32", 400.0, 1.07, 20.0), ("small", "baseline-fp16", 200.0, 1.0701, 20.0),
            ("small", "bnb-nf4", 70.0, 1.15, 25.0), ("large", "baseline-fp32", 1000.0, 1.05, 18.0),
            ("large", "scratch-int8-per_channel", 250.0, 1.06, 18.1), ("large", "bnb-nf4", 190.0, 1.16, 27.0)]
    whole = {("small", "baseline-fp32"): (1.03, 21.0), ("small", "baseline-fp16"): (1.0301, 21.0),
             ("small", "bnb-nf4"): (1.11, 26.25), ("large", "baseline-fp32"): (1.00, 20.0),
             ("large", "scratch-int8-per_channel"): (1.004, 20.1), ("large", "bnb-nf4"): (1.10, 30.0)}
    gpu = {"small": "NVIDIA H200", "large": "NVIDIA H100 80GB HBM3"}
    i = 0
    for model, method, mib, bpb, ppl in runs:
        for part in ("prefix", "whole"):
            b, p = (bpb, ppl) if part == "prefix" else whole[(model, method)]
            r = record(method, p, mib, model=model, device="cpu: test" if part == "prefix" else gpu[model])
            r["dataset"].update(sha256="b" * 64, max_tokens=16384 if part == "prefix" else None)
            r["perplexity"].update(bits_per_byte=b, n_bytes=1000, word_perplexity=40.0)
            (d / f"{i}.json").write_text(json.dumps(r))
            i += 1
    out = br.main(results=str(d), out=str(tmp_path / "r.pdf"), figures=str(tmp_path / "f"))
    text = " ".join(pdf_text(out).replace("\n", " ").split())
    section = text.split("A larger quantized model against a smaller unquantized one")[-1].split("5. Bonus")[0]
    # the prefix's turn is large's INT8 (250 MiB, 1.06) against small's fp16 (1.0701); on the whole text 1.0040
    # against 1.0301, the same order
    assert ("On the whole test split (GPUs: H200 for small, H100 for large), the same pair scores 1.0040 "
            "(250.0 MiB) against 1.0301 (200.0 MiB) (no noise band: a run kept no per-window NLL): the same "
            "answer.") in section
    # the prefix's penalties are labelled; on the whole text nf4 costs 26.25/21 (+25%) against 30/20 (+50%)
    assert "own fp32 (first 16,384 tokens, CPU)" in section
    assert ("On the whole test split, it is larger on large for 1 of the 1 4-bit methods both ran there "
            "(bnb-nf4 +25.00% against +50.00%).") in section


def test_a_fast_path_row_without_a_cuda_graph_is_named_with_its_reason():
    """The speed figure's caption names each row its bench could not capture in a graph, and says why."""
    from report.sections.speed import no_graph_words
    b = {"bench": {"table": {"fp16": {"cuda_graph": True, "why_no_graph": None},
                             "bnb-int8": {"cuda_graph": False, "why_no_graph": "shapes depend on the data"},
                             "x": {"cuda_graph": False}}}}
    assert no_graph_words(b) == " bnb-int8 runs without a graph (shapes depend on the data). x runs without a graph."
    assert no_graph_words({"bench": {"table": {"fp16": {"cuda_graph": True}}}}) == ""


def test_the_abstracts_fast_path_finding_marks_an_ungraphed_row_and_says_why_tokens_differ():
    from report.sections.summary import fast_summary_text
    x = {"model": "m", "device": "GPU", "base": "fp16", "base_ms": 3.0, "cut": 0.03,
         "faster": [("a", 2.7, 0.9, 128, 128)], "same": [], "slower": [("bnb-int8", 93.0, 31.0, 128, 128)],
         "diverging": [("a", 2.7, 0.9, 24, 128)], "no_graph": {"bnb-int8"}}
    text = fast_summary_text(x)
    assert "Faster than it beyond ±3% (no rerun measures the noise): a 2.70 ms (0.90×). " in text   # graphed
    assert "Slower: bnb-int8 93.00 ms (31.00×, no CUDA graph). " in text
    assert ("the same greedy tokens as its model's generate(), except a, whose first 24 of 128 tokens match (its "
            "kernels round float16 in another order and flip a near tie).") in text


def test_the_scan_is_set_against_the_selective_runs_blocks():
    from report.sections.part1 import scan_against_selective
    y = {"top3": [("4", 0.06), ("19", 0.05), ("1", 0.05)]}
    assert scan_against_selective({"selective": [{"blocks": [0, 1]}]}, y) == (
        " The selective run's blocks 0, 1 were fixed before the scan; block 1 is among its three largest rises "
        "(4, 19, 1).")
    assert scan_against_selective({"selective": [{"blocks": [2, 3]}]}, y) == (
        " The selective run's blocks 2, 3 were fixed before the scan, and none is among its three largest rises "
        "(4, 19, 1).")


def test_two_calibration_paragraphs_that_disagree_say_which_holds_more_tokens():
    from report.sections.explore import disagree_note

    class S:
        def runs(self, k):
            return {"gptq-w4-g64": {"perplexity": {"n_tokens_scored": {"cpu": 16383, "gpu": 301947}[k]}}}
    assert disagree_note(S(), {"gpu": True, "cpu": False}) == (
        " The two disagree on GPTQ against round-to-nearest: 16,383 tokens are 5% of the 301,947 that call it "
        "a tie.")
    assert disagree_note(S(), {"gpu": True, "cpu": True}) == ""                  # they agree: nothing to say
    assert disagree_note(S(), {"cpu": False, "gpu": True}) != ""                 # said after the last one
    assert disagree_note(S(), {"gpu": True, "cpu": None}) == ""                  # one cannot be said


def test_the_abstracts_larger_model_answer_names_a_run_left_out_for_its_origin(monkeypatch):
    """A run that rounds the larger stand-in back to its own origin format is off the frontier; where it
    fits the budget, the abstract's answer says it was left out. Each comparison says whether it is
    outside the noise (the runs' windows, paired by bytes), or that a run has no band."""
    import math

    from report.sections import front

    def rec(bpbs):                   # one window of 100 bytes per value, at that many bits per byte
        return {"dataset": {"sha256": "t"}, "perplexity": {"windows": {
            "nll_sum": [v * math.log(2) * 100 for v in bpbs], "n_scored": [10] * len(bpbs),
            "n_bytes": [100] * len(bpbs)}}}
    p = lambda model, method, mib, bpb, r=None: {"model": model, "method": method, "mib": mib, "bpb": bpb,  # noqa
                                                  "record": r or {}}
    u = rec([1.0697] * 16)
    tie = rec([1.0767 + (0.05 if i // 4 % 2 else -0.05) for i in range(16)])   # by turns, 4 windows at a time
    x = {"key": ("sha", 1024, 512, "text", "cpu", 16384), "small": "s", "large": "l",
         "unquantized": p("s", "baseline-fp16", 256.6, 1.0697, u),
         "best_within": p("l", "gguf-q5_k_m", 241.8, 1.0767, tie),
         "turns": [p("l", "scratch-int8-per_channel", 257.3, 1.0591, rec([1.0591] * 16))],
         "back_to_origin": [p("l", "gguf-q4_k_m", 235.2, 1.0591), p("l", "gguf-q8_0", 300.0, 1.05)]}
    monkeypatch.setattr(front.mo, "models_facts", lambda s: x)
    monkeypatch.setattr(front.mo, "whole_text_pair", lambda *a: None)
    text = front.models_finding(None)
    assert ("s in fp16 scores 1.0697 at 256.6 MiB. Against it, gguf-q5_k_m (241.8 MiB): a tie; "
            "scratch-int8-per_channel (257.3 MiB): it wins (gguf-q4_k_m, its origin format, left out).") in text
    assert "gguf-q8_0" not in text                                           # 300 MiB: outside the budget
    # the whole text holds the pair at the turn: its verdict leads, and the prefix's pairs follow
    whole = (rec([1.0268] * 16), rec([1.0042] * 16))
    for w, v in zip(whole, (1.0268, 1.0042)):
        w["perplexity"]["bits_per_byte"] = v
    monkeypatch.setattr(front.mo, "whole_text_pair", lambda *a: whole)
    text = front.models_finding(None)
    assert ("l in scratch-int8-per_channel (257.3 MiB) beats s in fp16 (256.6 MiB) on the whole test split (1.0042 "
            "against 1.0268, outside the noise). On the CPU's 16,384-token prefix, gguf-q5_k_m (241.8 MiB): a tie; "
            "scratch-int8-per_channel (257.3 MiB): it wins") in text
    x["best_within"]["record"] = {}
    assert "gguf-q5_k_m (241.8 MiB): no noise band;" in front.models_finding(None)


def test_the_fast_path_split_is_the_rerun_noise_of_the_models_benches():
    """A method timed in two benches of one model on one GPU: the widest move of its ratio is the
    split between faster, a tie and slower; a bench on another GPU or model does not count."""
    from report.sections.summary import fast_facts, noise_words, rerun_noise

    def bench(ms, device="NVIDIA H200", model="m"):
        return {"model": {"id": model}, "environment": {"device_name": device},
                "bench": {"baseline": "fp16", "new_tokens": 8, "fast_path": "x",
                          "table": {n: {"fast_path": {"decode_ms_per_token": {"median": v}},
                                        "leading_tokens_equal": 8, "tokens_equal_generate": True}
                                    for n, v in ms.items()}}}
    a = bench({"fp16": 1.0, "int8": 0.95, "nf4": 0.99, "int4": 1.03})
    b = bench({"fp16": 2.0, "int8": 1.92, "nf4": 2.02})                 # int8 0.96, nf4 1.01: nf4 moves 0.02
    other = bench({"fp16": 1.0, "nf4": 1.5}, device="NVIDIA H100 80GB HBM3")
    n = rerun_noise(a, [a, b, other])
    assert n["method"] == "nf4" and abs(n["noise"] - 0.02) < 1e-9 and n["benches"] == 2
    x = fast_facts(a, [a, b, other])
    assert [r[0] for r in x["faster"]] == ["int8"] and [r[0] for r in x["same"]] == ["nf4"]
    assert [r[0] for r in x["slower"]] == ["int4"]
    assert noise_words(x, short=True) == "±2.0%"
    assert "nf4's, across the model's 2 benches on this GPU" in noise_words(x)
    assert fast_facts(a)["cut"] == 0.03 and rerun_noise(a, [a]) is None         # nothing rerun: the fallback
