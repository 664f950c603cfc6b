"""Part 2 on the CPU (bitsandbytes' CPU backend), on tiny random models."""
import json
import math

import pytest
import torch

import evaluate as ev
import part1_quantize_scratch as p1
import part2_bnb_nf4 as p2
from study.config import RunOptions

# A tiny GPT-2 with d=64, 2 blocks: bitsandbytes' CPU 4-bit kernel needs in_features to be a
# multiple of its block size (64). Per block: c_attn 64x192, attn c_proj 64x64, c_fc 64x256,
# mlp c_proj 256x64.
D, L = 64, 2
LAYERS = [3 * D * D, D * D, 4 * D * D, 4 * D * D] * L              # weights per quantized layer
OUT_ROWS = [3 * D, D, 4 * D, D] * L                               # output rows per layer
N = sum(LAYERS)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    import tiny_models
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2-d64", arch="gpt2",
                                       n_embd=D, n_head=2)


def small_run(**kw):
    return dict(device="cpu", max_length=64, stride=32, repeats=1, warmup=0, prefill_tokens=16,
                prompt_tokens=4, new_tokens=4, per_line=0, quiet=True, **kw)


@pytest.fixture(scope="module")
def fp32_ppl(gpt2_dir, text_file, tmp_path_factory):
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file),
                                 results_dir=str(tmp_path_factory.mktemp("r")), **small_run()))
    return rec["perplexity"]["ppl"], rec["memory"]["weights_bytes"]


@pytest.mark.parametrize("mode", p2.MODES)
def test_each_mode_loads_runs_and_is_evaluated(mode, gpt2_dir, text_file, tmp_path, fp32_ppl):
    recs = p2.main(mode=mode, save=str(tmp_path / "saved"),
                   run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path),
                                  **small_run()))
    rec = recs[0]
    saved = json.loads(next(tmp_path.glob(f"bnb-{mode}__*.json")).read_text())
    assert saved["method"]["name"] == f"bnb-{mode}" and saved["perplexity"] == rec["perplexity"]
    assert saved["method"]["settings"]["compute_dtype"] == "float32"          # CPU default
    # A random tiny model's perplexity barely moves under weight quantization.
    assert abs(math.log(rec["perplexity"]["ppl"] / fp32_ppl[0])) < (0.02 if mode == "int8" else 0.1)
    assert rec["latency"]["decode"]["ms_per_token"]["median"] > 0
    assert rec["memory"]["disk_bytes"] > 0


def test_weight_bytes_are_exact_and_ordered(gpt2_dir, fp32_ppl):
    V, P = 320, 128                                                    # tiny vocab and positions
    norms, biases = 4 * (L * 4 * D + 2 * D), 4 * L * (3 * D + D + 4 * D + D)
    fp_kept = 4 * (V + P) * D + norms + biases                        # wte (tied lm_head), wpe, norms, biases
    got = {}
    for mode in p2.MODES:                 # as loaded (on a CPU, the first 4-bit forward repacks, see part2)
        model, _ = p2.load_bnb(str(gpt2_dir), mode, "cpu", "float32")
        got[mode] = b = ev.memory_breakdown(model)
        assert b["full_precision"] == fp_kept
        assert b["full_precision_detail"]["embeddings"] == 4 * (V + P) * D
        if mode == "int8":
            assert b["quantized_weights"] == N                         # 1 byte per weight
            assert b["scales_and_zero_points"] == 4 * sum(OUT_ROWS)    # one fp32 scale (SCB) per row
            with torch.no_grad():
                model(torch.arange(8)[None])                           # moves SCB to module.state
            assert ev.memory_breakdown(model) == b
        else:
            assert b["quantized_weights"] == N // 2                    # two codes per byte
            code = 4 * 16 * len(LAYERS)                                # the 16-level table, per layer
            if mode == "nf4-dq":                                       # absmax as uint8 + 2nd level
                second = sum(4 * math.ceil(n / 64 / 256) + 4 + 4 * 256 for n in LAYERS)  # absmax, offset, code
                assert b["scales_and_zero_points"] == N // 64 + second + code
            else:
                assert b["scales_and_zero_points"] == 4 * (N // 64) + code
        assert ev.tensor_bytes(model)["bytes"] == b["total"]
    assert got["nf4"]["total"] < got["int8"]["total"] < fp32_ppl[1]
    assert got["fp4"]["total"] == got["nf4"]["total"]


def test_scratch_nf4_equals_bitsandbytes_nf4():
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.02
    w[3, 5] = 0.5                                                      # an outlier block
    bnb = p2.bnb_roundtrip(w, "nf4")
    ours = p2.scratch_roundtrip(w, "nf4")
    assert (bnb - ours).abs().max() <= 1e-6 * w.abs().max()
    assert not torch.equal(p2.bnb_roundtrip(w, "fp4"), bnb)          # and FP4 really is another code


def test_nf4_ties_go_where_bitsandbytes_puts_them():
    levels = torch.tensor(p1.NF4_LEVELS)
    mids = (levels[1:] + levels[:-1]) / 2                              # exact ties, in float32
    w = torch.zeros(2, 64)
    w[:, 0] = 1.0                                                      # absmax 1: w / absmax == w
    w[0, 1:16], w[1, 1:16] = mids, -mids.flip(0)
    assert torch.equal(p2.scratch_roundtrip(w, "nf4"), p2.bnb_roundtrip(w, "nf4"))


def test_compare_shows_nf4_beats_linear_4bit_on_gaussian_weights(gpt2_dir, tmp_path):
    rec = p2.main(compare=True,
                  run=RunOptions(model=str(gpt2_dir), device="cpu", results_dir=str(tmp_path), quiet=True))
    c = rec["compare"]
    assert c["cross_check"]["ok"]
    assert len(c["layers"]) == len(LAYERS)
    m = c["mean_rel_mse"]
    assert m["bnb-nf4"] < m["scratch-int4"] and m["bnb-nf4"] < m["bnb-fp4"]
    assert m["scratch-nf4"] == pytest.approx(m["bnb-nf4"], rel=1e-4)
    h = c["histogram"]
    assert sum(h["counts"]) == math.prod(h["shape"])
    assert h["code_entropy_bits"]["nf4"] > h["code_entropy_bits"]["uniform16"]
    assert sum(h["code_use"]["nf4"]) == math.prod(h["shape"])
    assert json.loads(next(tmp_path.glob("nf4-vs-linear-4bit__*.json")).read_text())["compare"]["block_size"] == 64


def test_saved_model_reloads_with_identical_logits(gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    ids = torch.arange(20)[None]
    for mode in p2.MODES:
        model, _ = p2.load_bnb(str(gpt2_dir), mode, "cpu", "float32")
        model.save_pretrained(tmp_path / mode)              # before the first forward, as main() does
        again = AutoModelForCausalLM.from_pretrained(tmp_path / mode, device_map={"": "cpu"}, dtype=torch.float32)
        with torch.no_grad():
            assert torch.equal(again(ids).logits, model(ids).logits), mode


def test_bench_times_every_method_side_by_side(gpt2_dir, text_file, tmp_path):
    rec = p2.main(bench=True, mode="int8,nf4",
                  run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path),
                                 **{**small_run(), "repeats": 2}))
    table = rec["bench"]["table"]
    assert list(table) == ["fp32", "bnb-int8", "bnb-nf4", "scratch-int8", "scratch-int4", "scratch-nf4"]
    assert table["fp32"]["decode_ratio"] == 1.0
    assert table["bnb-nf4"]["weights_mib"] < table["bnb-int8"]["weights_mib"] < table["fp32"]["weights_mib"]
    assert table["scratch-int8"]["weights_mib"] < table["fp32"]["weights_mib"] / 2
    assert table["scratch-int8"]["weight_dtype_bytes"]["int8"] > 0           # stored as int8




def test_bad_input_is_one_clear_line(cli_error, capsys, gpt2_dir, text_file, tmp_path):
    base = ["--model", str(gpt2_dir), "--text-file", str(text_file), "--device", "cpu"]
    assert "unknown mode 'nf3'" in cli_error(p2, base + ["--mode", "nf3"])
    assert "compute dtype" in cli_error(p2, base + ["--mode", "nf4", "--compute-dtype", "float8"])
    assert "does not exist" in cli_error(p2, ["--model", str(tmp_path / "nope"), "--mode", "nf4"])
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in cli_error(p2, base + ["--device", "cuda"])


def test_auto_compute_dtype_keeps_gemma_out_of_float16():
    """Gemma 3's activations overflow float16 (NaN logits): on a GPU, auto picks bfloat16 for it,
    float16 for the others; a CPU computes in float32; an asked dtype is taken as it is."""
    import torch

    import part2_bnb_nf4 as p2
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert p2.compute_dtype_for(gpu, "auto", "gemma3_text") == "bfloat16"
    assert p2.compute_dtype_for(gpu, "auto", "llama") == "float16"
    assert p2.compute_dtype_for(cpu, "auto", "gemma3_text") == "float32"
    assert p2.compute_dtype_for(gpu, "float16", "gemma3_text") == "float16"
