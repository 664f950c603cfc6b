"""fast_decode.py on the CPU: the static-cache path makes the same greedy tokens as
generate(), its prefill the same logits; the fused Triton kernels (under Triton's
interpreter) equal dequantize-then-matmul; bad input is one line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate as ev
import fast_decode as fd
import part1_quantize_scratch as p1


def prompt_of(tokenizer, n=12):
    ids = ev.tokenize(tokenizer, "the quick brown fox jumps over the lazy dog " * 4)
    return ids.reshape(-1)[:n][None]


@pytest.mark.parametrize("arch,quant", [("gpt2", None), ("gpt2", "int8"), ("gpt2", "nf4"),
                                        ("llama", None), ("llama", "int8")])
def test_fast_path_tokens_equal_generate(gpt2_dir, llama_dir, arch, quant):
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    if quant == "int8":
        p1.quantize_model(model, "whole", 8, "per_channel")
    elif quant == "nf4":
        p1.quantize_model(model, "whole", 4, "nf4")
    prompt = prompt_of(tok)
    ref = fd.generate_tokens(model, tok, prompt, 20)
    fast = fd.FastDecoder(model, prompt.shape[1], 20, graphs=True)      # no CUDA: runs eagerly
    fast.capture()
    assert not fast.graphs and fast.why_no_graph
    got = fast.generate(prompt)
    assert torch.equal(got, ref)
    assert torch.equal(fast.generate(prompt), ref)                      # a second run starts clean


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fast_prefill_logits_equal_the_model(gpt2_dir, llama_dir, arch):
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    ids = prompt_of(tok, 24)
    fast = fd.FastDecoder(model, 4, 4, prefill_tokens=24)
    got = fast.prefill(ids)
    with torch.no_grad():
        ref = model(ids).logits
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_kernel_error_catches_a_layer_that_computes_the_wrong_thing(gpt2_dir):
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    assert fd.kernel_error(model) is None                               # no Part 1 layers
    p1.quantize_model(model, "whole", 8, "per_channel")
    assert fd.kernel_error(model) < 1e-5                                # fp32: the same numbers
    fc = model.transformer.h[0].mlp.c_fc
    meant = fc.dequantized_weight(torch.float32)
    fc.dequantized_weight = lambda dtype=None: meant.to(dtype)          # what the weights mean ...
    fc.scale.mul_(1.01)                                                 # ... and a layer 1% off it
    assert 0.009 < fd.kernel_error(model) < 0.011


def test_other_architectures_are_refused_in_one_line(llama_dir):
    model, _ = ev.load_model(str(llama_dir), device="cpu")
    model.config.model_type = "mistral"
    with pytest.raises(ev.UserError, match="GPT-2 and Llama models only .* is 'mistral'"):
        fd.static_model(model, 16)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_timed_layers_are_the_blocks_linears(gpt2_dir, llama_dir, arch):
    """Every linear layer of block 0 and lm_head, each with the width its input really has."""
    model, _ = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    p1.quantize_model(model, "whole", 8, "per_channel")
    layers = list(fd.timed_layers(model))
    block = {n for n, m in model.named_modules() if isinstance(m, p1.Int8Linear)
             and n.startswith(("transformer.h.0.", "model.layers.0."))}
    assert {fd.block_layers(model.config)[0] + "." + n for n, _, _ in layers[:-1]} == block
    for _, mod, width in layers:
        assert mod.in_features == width


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_bench_without_cuda_is_one_clear_line(cli_error):
    assert "needs CUDA" in cli_error(fd, ["--smoke"])


def test_unknown_method_is_rejected():
    with pytest.raises(ev.UserError, match="unknown method 'int3'"):
        fd.parse_methods("fp16,int3")


KERNEL_CHECK = r"""
import torch, torch.nn as nn, torch.nn.functional as F
import part1_quantize_scratch as p1
torch.manual_seed(0)
worst = 0.0
for M in (1, 3, 7, 33):                         # GEMV (<= 4 rows), then the tiled int8 kernel
    lin = nn.Linear(192, 80)                       # 80 outputs: not a multiple of the tile
    x = torch.randn(M, 192).half()
    mods = [p1.Int8Linear.from_float(lin).half()] + [p1.Linear4bit.from_float(lin, k).half() for k in ("int4", "nf4")]
    for m in mods:
        m.path = "fast"
        ref = F.linear(x.float(), m.dequantized_weight(torch.float16).float(), m.bias.float())
        if isinstance(m, p1.Int8Linear):           # the int8 scale is applied after the matmul
            ref = F.linear(x.float(), m.qweight.float()) * m.scale.float() + m.bias.float()
        y = m(x)
        assert y.dtype == torch.float16 and y.shape == (M, 80)
        worst = max(worst, ((y.float() - ref).abs().max() / ref.abs().max()).item())
print(worst)
"""


def test_triton_kernels_equal_dequantize_then_matmul():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 2e-3                  # fp16 output rounding


def test_the_decode_floor_uses_the_gpus_own_bandwidth():
    """An H200 is not an H100: the floor comes from the device's spec peak, or is absent."""
    import fast_decode
    assert fast_decode.hbm_bytes_per_s("NVIDIA H200") == 4.8e12
    assert fast_decode.hbm_bytes_per_s("NVIDIA H100 80GB HBM3") == 3.35e12
    assert fast_decode.hbm_bytes_per_s("NVIDIA H100 PCIe") == 2.0e12
    assert fast_decode.hbm_bytes_per_s("NVIDIA GeForce RTX 4090") is None
    assert fast_decode.decode_floor_ms(4_800_000_000, 4.8e12) == 1.0
    assert fast_decode.decode_floor_ms(1, None) is None
    old = {"environment": {"device_name": "NVIDIA H200"}, "bench": {"hbm_bytes_per_s": 3.35e12}}
    assert fast_decode.bench_bandwidth(old) == 4.8e12             # a bench made before the table assumed an H100
