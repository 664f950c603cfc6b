"""report/build_report.py: the fixture results make a PDF whose numbers are the JSON's."""
import json

import pypdf
import pytest

from report import build_report as br


def pdf_text(path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(str(path)).pages)


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
    text = pdf_text(built[0]).replace("\n", " ")
    t = json.loads((results_dir / "fast.json").read_text())["bench"]["table"]
    f = {n: v["fast_path"]["decode_ms_per_token"]["median"] for n, v in t.items()}
    assert (f"Faster than it by more than 3%: scratch-int4-fast {f['scratch-int4-fast']:.2f} ms "
            f"({f['scratch-int4-fast'] / 0.8:.2f}×)") in text
    assert f"Slower: scratch-nf4-fast {f['scratch-nf4-fast']:.2f} ms (1.12×)" in text
    assert "Every fast path makes the same greedy tokens as its model's generate()." in text
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
    text = pdf_text(built[0]).replace("\n", " ")
    assert "Here prefill is one forward pass over 1×333 tokens, decode greedy generation of 77 new tokens " \
           "after a 11-token prompt" in text
    assert "Prefill 1×333 tokens; decode 77 new tokens after 11" in text
    assert "floor = weight bytes ÷ 1.23 TB/s" in text and "at 1.23 TB/s would take" in text
    assert "512" not in text.split("6. Speed")[1].split("7. ")[0]             # no typed prefill length left


def test_the_headline_table_and_its_settings_are_the_fixtures(built, results_dir):
    """Summary, Table 1: every method of the one group, with its own numbers; the sentence
    under it says the fixture's text, tokens, windows, device and timing lengths."""
    text = pdf_text(built[0]).replace("\n", " ")
    summary = text.split("1. Summary")[1].split("Findings")[0]
    assert "Table 1." in summary
    assert "baseline-fp32 100.0 – 12.34 5.67 20.0000 +0.00%" in summary
    assert "scratch-int8-per_channel 26.0 – 9.87 4.32 20.1000 +0.50%" in summary
    assert "bnb-nf4 14.0 – – – 25.0000 +25.00%" in summary
    assert f"gguf-q8_0 27.0 {28.25:.1f} – – 20.2000 +1.00%" in summary
    assert ("m-small on WikiText-2 (raw), test split: all 999 scored tokens of the text, windows "
            "of 64 tokens at stride 32") in summary
    assert "on cpu: test." in summary
    assert "Prefill is one forward pass over 1×333 tokens" in summary
    assert "77 new tokens after a 11-token prompt" in summary


def test_sections_follow_the_assignment(built):
    text = pdf_text(built[0]).replace("\n", " ")
    heads = ["1. Summary", "2. How we measure", "3. Part 1: INT8 from scratch", "4. Part 2: bitsandbytes",
             "5. Bonus: GGUF and llama.cpp", "6. Speed", "7. Limitations and open questions",
             "Appendix A", "Appendix B"]
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
    text = pdf_text(out).replace("\n", " ")
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
