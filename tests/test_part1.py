"""Part 1: the from-scratch schemes, modules, swapper, save/load and CLI errors."""
import json

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

import evaluate as ev
import part1_quantize_scratch as p1
from study.config import RunOptions

torch.manual_seed(0)
W = torch.randn(48, 256) * torch.linspace(0.1, 3, 48)[:, None]              # rows of different ranges
W[3] = 0.0                                                                   # an all-zero row
W[5, 7] = 25.0                                                               # an outlier


# ---------------------------------------------------------------- primitives

def test_per_channel_error_is_at_most_half_a_step():
    q, s = p1.quantize_per_channel(W)
    assert q.dtype == torch.int8 and s.shape == (48,)
    err = (p1.dequantize_int8(q, s) - W).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()
    assert q.abs().max() == 127 and (p1.dequantize_int8(q, s)[3] == 0).all()


def test_per_tensor_error_is_at_most_half_a_step():
    q, s = p1.quantize_per_tensor(W)
    assert s.shape == (1,) and s.item() == pytest.approx(25.0 / 127)
    assert ((p1.dequantize_int8(q, s) - W).abs() <= s / 2 + 1e-6).all()


def test_asymmetric_error_is_at_most_half_a_step():
    w = W + 0.7                                                              # not centred on zero
    q, s, z = p1.quantize_asymmetric(w)
    assert z.dtype == torch.int8 and q.min() >= -128 and q.max() <= 127
    assert ((p1.dequantize_int8(q, s, z) - w).abs() <= s[:, None] / 2 + 1e-5).all()
    # 256 levels over [min, max] are finer than 255 over [-absmax, absmax] for a shifted row
    qs, ss = p1.quantize_per_channel(w)
    assert (s <= ss * 1.0001).all()


def test_group_error_is_at_most_half_its_groups_step():
    q, s = p1.quantize_group(W, 64)
    assert s.shape == (48, 4)
    step = s.repeat_interleave(64, dim=1)
    assert ((p1.dequantize_int8(q, s) - W).abs() <= step / 2 + 1e-6).all()
    # the outlier only coarsens its own group
    assert s[5, 0] > 10 * s[5, 1]


def test_bad_group_size_is_a_user_error():
    with pytest.raises(ev.UserError):
        p1.quantize_group(W, 100)


@pytest.mark.parametrize("kind", ["int4", "nf4"])
def test_4bit_error_bound_and_size(kind):
    packed, absmax = p1.quantize_4bit(W, kind, 64)
    assert packed.dtype == torch.uint8 and packed.numel() == W.numel() // 2 and absmax.numel() == W.numel() // 64
    back = p1.dequantize_4bit(packed, absmax, kind, W.shape)
    levels = torch.arange(-7, 8) / 7 if kind == "int4" else torch.tensor(p1.NF4_LEVELS)
    half_gap = (levels[1:] - levels[:-1]).max() / 2                           # of the normalised grid
    bound = absmax.repeat_interleave(64).reshape(W.shape) * half_gap
    assert ((back - W).abs() <= bound + 1e-6).all()


def test_packing_round_trips_exactly():
    codes = torch.randint(0, 16, (1000,), dtype=torch.uint8)
    packed = p1.pack_4bit(codes)
    assert packed.numel() == 500
    assert torch.equal(p1.unpack_4bit(packed), codes)
    assert p1.pack_4bit(torch.tensor([0xA, 0x3], dtype=torch.uint8)).item() == 0xA3


def test_4bit_codes_round_trip_through_packing():
    """quantize -> packed bytes -> dequantize gives each value's nearest level exactly."""
    x = torch.tensor(p1.NF4_LEVELS * 4).reshape(1, 64)                        # the levels themselves
    packed, absmax = p1.quantize_4bit(x, "nf4", 64)
    assert torch.equal(p1.dequantize_4bit(packed, absmax, "nf4", x.shape), x)


def test_nf4_levels_are_the_published_ones():
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
    assert list(p1.NF4_LEVELS) == published


# ---------------------------------------------------------------- modules

def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("scheme", p1.SCHEMES_8BIT)
@pytest.mark.parametrize("path", ["fast", "naive"])
def test_int8_linear_is_close_to_nn_linear(scheme, path):
    lin = nn.Linear(256, 96)
    x = torch.randn(3, 5, 256)
    q = p1.Int8Linear.from_float(lin, scheme, group_size=64)
    q.path = path
    with torch.no_grad():
        assert cosine(q(x), lin(x)) >= 0.999
        ref = torch.nn.functional.linear(x, q.dequantized_weight(), lin.bias)   # its own weights, exactly
        assert torch.allclose(q(x), ref, atol=1e-4, rtol=1e-4)


def test_fast_kernel_and_chunked_path_equal_the_naive_path():
    lin = nn.Linear(768, 1100)                                               # not a multiple of 4 or 512
    q = p1.Int8Linear.from_float(lin)
    with torch.no_grad():
        for rows in (1, 3, 4, 5, 37):
            x = torch.randn(rows, 768)
            q.path = "naive"
            naive = q(x)
            q.path = "fast"
            assert torch.allclose(q(x), naive, atol=1e-4, rtol=1e-5), rows


def test_conv1d_is_transposed():
    conv = Conv1D(96, 256)                                                    # (nf=out, nx=in): weight (in, out)
    with torch.no_grad():
        conv.weight.normal_()
    q = p1.Int8Linear.from_float(conv)
    x = torch.randn(2, 256)
    with torch.no_grad():
        assert q.qweight.shape == (96, 256)
        assert cosine(q(x), conv(x)) >= 0.999


def test_gpt2_block_matches_a_reference_from_dequantized_weights(gpt2_dir):
    """Quantize a GPT-2 block; rebuild a float copy with each Conv1D's weight set to the
    dequantized int8 weight transposed back to (in, out). Outputs must agree."""
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    ref = __import__("copy").deepcopy(model)
    p1.quantize_model(model, mode="selective", blocks=[0])
    with torch.no_grad():
        for name, module in model.transformer.h[0].named_modules():
            if isinstance(module, p1.Int8Linear):
                conv = ref.transformer.h[0].get_submodule(name)
                assert isinstance(conv, Conv1D)
                conv.weight.copy_(module.dequantized_weight().t())
        x = torch.randn(1, 10, model.config.n_embd)
        assert torch.allclose(model.transformer.h[0](x)[0], ref.transformer.h[0](x)[0], atol=1e-5)


def test_int8_embedding():
    emb = nn.Embedding(50, 16)
    q = p1.Int8Embedding.from_float(emb)
    ids = torch.tensor([[0, 5, 49]])
    with torch.no_grad():
        assert ((q(ids) - emb(ids)).abs() <= q.scale[ids][..., None] / 2 + 1e-6).all()


# ---------------------------------------------------------------- swapper

def quantized_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, p1.QUANT_MODULES))


def test_selective_touches_exactly_the_named_modules(gpt2_dir, llama_dir):
    gpt2, _ = ev.load_model(str(gpt2_dir), device="cpu")
    p1.quantize_model(gpt2, mode="selective", blocks=[1], components=["qkv", "attn_out"])
    assert quantized_names(gpt2) == ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    gpt2, _ = ev.load_model(str(gpt2_dir), device="cpu")
    p1.quantize_model(gpt2, mode="selective", blocks=[0, 1], components=["ffn_down"])
    assert quantized_names(gpt2) == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    llama, _ = ev.load_model(str(llama_dir), device="cpu")
    p1.quantize_model(llama, mode="selective", blocks=[0], components=["qkv", "ffn_up"])
    assert quantized_names(llama) == [f"model.layers.0.{n}" for n in
                                      ("mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                       "self_attn.q_proj", "self_attn.v_proj")]


def test_whole_model_quantizes_every_linear_and_the_embeddings(gpt2_dir, llama_dir):
    gpt2, _ = ev.load_model(str(gpt2_dir), device="cpu")
    p1.quantize_model(gpt2)
    left = [n for n, m in gpt2.named_modules() if isinstance(m, (nn.Linear, Conv1D, nn.Embedding))]
    assert left == []
    assert gpt2.lm_head.qweight is gpt2.transformer.wte.qweight            # tied: one int8 table
    llama, _ = ev.load_model(str(llama_dir), device="cpu")
    p1.quantize_model(llama)
    assert [n for n, m in llama.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))] == []


def test_whole_model_weight_bytes_equal_a_hand_count(gpt2_dir):
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    c, V = model.config, model.config.vocab_size
    d, L, P = c.n_embd, c.n_layer, c.n_positions
    p1.quantize_model(model)
    int8 = V * d + P * d + L * (d * 3 * d + d * d + d * 4 * d + 4 * d * d)   # every weight, 1 byte
    scales = V + P + L * (3 * d + d + 4 * d + d)                             # one fp32 per output row
    fp32 = L * (4 * d + 3 * d + d + 4 * d + d) + 2 * d                      # norms and biases
    assert ev.tensor_bytes(model)["by_dtype_bytes"] == {"float32": 4 * (scales + fp32), "int8": int8}
    b = ev.memory_breakdown(model)
    assert (b["quantized_weights"], b["scales_and_zero_points"], b["full_precision"]) == (int8, 4 * scales, 4 * fp32)
    assert b["full_precision_detail"] == {"norms": 4 * (L * 4 * d + 2 * d), "biases": 4 * L * (3 * d + d + 4 * d + d),
                                          "embeddings": 0, "output_layer": 0, "other": 0}


def test_whole_model_output_stays_close(tiny_dir, tiny_text):
    model, tok = ev.load_model(str(tiny_dir), device="cpu")
    ids = ev.tokenize(tok, tiny_text, max_tokens=64)
    with torch.no_grad():
        ref = model(ids).logits
        p1.quantize_model(model)
        assert cosine(model(ids).logits, ref) > 0.999


def test_parse_blocks_and_components():
    assert p1.parse_blocks("0-2,5", 6) == [0, 1, 2, 5]
    assert p1.parse_blocks(None, 3) == [0, 1, 2]
    assert p1.parse_components("attn,ffn_down") == ["qkv", "attn_out", "ffn_down"]
    for bad in ("12", "a", "3-1", "0,,1", "-1"):
        with pytest.raises(ev.UserError):
            p1.parse_blocks(bad, 12)
    with pytest.raises(ev.UserError):
        p1.parse_components("attn,mlp")


# ---------------------------------------------------------------- save and load

@pytest.mark.parametrize("kwargs", [dict(), dict(scheme="asymmetric"), dict(scheme="group", group_size=16),
                                    dict(bits=4, scheme="nf4"),
                                    dict(mode="selective", blocks=[1], components=["ffn_up", "ffn_down"])])
def test_save_load_gives_identical_logits(gpt2_dir, tmp_path, tiny_text, kwargs):
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    spec = p1.quantize_model(model, **kwargs)
    p1.save_quantized(model, tmp_path / "q", spec)
    loaded, spec2 = p1.load_quantized(tmp_path / "q")
    assert spec2 == json.loads(json.dumps(spec))
    ids = ev.tokenize(tok, tiny_text, max_tokens=50)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_saved_file_holds_int8_once(gpt2_dir, tmp_path):
    from safetensors import safe_open
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    p1.save_quantized(model, tmp_path / "q", p1.quantize_model(model))
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.get_tensor("transformer.wte.qweight").dtype == torch.int8
    assert not any(k.startswith("lm_head") for k in keys)                   # the tied table is stored once


# ---------------------------------------------------------------- CLI

def test_cli_whole_model_run_writes_results(gpt2_dir, text_file, tmp_path):
    rec = p1.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), device="cpu", max_length=64, stride=64,
                                 repeats=2, warmup=1, prefill_tokens=16, prompt_tokens=4, new_tokens=4, per_line=0,
                                 results_dir=str(tmp_path), quiet=True))
    saved = json.loads(next(tmp_path.glob("scratch-int8-per_channel__*.json")).read_text())
    assert saved["method"]["name"] == "scratch-int8-per_channel" == rec["method"]["name"]
    assert saved["memory"]["by_dtype_bytes"]["int8"] > 0
    assert saved["memory"]["disk_bytes"] < 1.2 * saved["memory"]["weights_bytes"] + 4096
    # the model's own parameter count, not what torch sees after the swap; bits per weight from bytes
    from transformers import AutoModelForCausalLM
    own = sum(q.numel() for q in AutoModelForCausalLM.from_pretrained(gpt2_dir).parameters())
    assert saved["model"]["n_params"] == own > saved["model"]["n_params_torch"]
    q = saved["quantization"]
    layers = saved["bits_per_weight"]["quantized_layers"]
    assert layers["stored_bytes"] == q["quantized_weights"] + q["scales_and_zero_points"]
    assert layers["weights"] == q["quantized_weights"]                        # one int8 byte per weight
    assert saved["bits_per_weight"]["model"]["bits_per_weight"] == 8 * saved["memory"]["weights_bytes"] / own
    assert 0 < saved["divergence"]["kld_mean"] < 0.1 and saved["divergence"]["top1_agreement"] > 0.5


def test_cli_sensitivity_records_each_block_and_component(gpt2_dir, text_file, tmp_path):
    rec = p1.main(sensitivity=True,
                  run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), device="cpu", max_length=64, stride=64,
                                 max_tokens=300, results_dir=str(tmp_path), quiet=True))
    s = rec["sensitivity"]
    assert [r["block"] for r in s["block"]] == ["0", "1"]
    assert [r["component"] for r in s["component"]] == list(p1.COMPONENTS)
    assert s["baseline_ppl"] == rec["perplexity"]["ppl"]
    assert all(r["n_modules"] == 4 for r in s["block"]) and all(r["n_modules"] == 2 for r in s["component"])




def test_bad_blocks_and_components_are_rejected(cli_error, capsys, gpt2_dir, text_file):
    base = ["--model", str(gpt2_dir), "--text-file", str(text_file), "--device", "cpu", "--mode", "selective",
            "--skip-latency"]
    assert "2 blocks" in cli_error(p1, base + ["--blocks", "99"])
    assert "malformed" in cli_error(p1, base + ["--blocks", "0;1"])
    assert "unknown component 'mlp'" in cli_error(p1, base + ["--components", "mlp"])
    assert "scheme" in cli_error(p1, base + ["--scheme", "per_row"])
    assert "--mode selective" in cli_error(p1, ["--model", str(gpt2_dir), "--blocks", "0"])
