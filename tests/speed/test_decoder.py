"""speed/static_cache.py and speed/decoder.py on the CPU: the static-cache path makes the same
greedy tokens as generate(), its prefill the same logits; each linear layer is timed alone."""

import pytest
import torch
from conftest import prompt_of

import evaluate as ev
import part1_quantize_scratch as p1
from speed import decoder, gpu_bench, static_cache

ARCHS = {"gpt2": "gpt2_dir", "llama": "llama_dir", "gemma3": "gemma3_dir"}


@pytest.mark.parametrize("arch,quant", [("gpt2", None), ("gpt2", "int8"), ("gpt2", "nf4"),
                                        ("llama", None), ("llama", "int8"), ("gemma3", None), ("gemma3", "int8")])
def test_fast_path_tokens_equal_generate(request, arch, quant):
    model, tok = ev.load_model(str(request.getfixturevalue(ARCHS[arch])), device="cpu")
    if quant == "int8":
        p1.quantize_model(model, "whole", 8, "per_channel")
    elif quant == "nf4":
        p1.quantize_model(model, "whole", 4, "nf4")
    prompt = prompt_of(tok)
    ref = decoder.generate_tokens(model, tok, prompt, 20)
    fast = decoder.FastDecoder(model, prompt.shape[1], 20, graphs=True)      # no CUDA: runs eagerly
    fast.capture()
    assert not fast.graphs and fast.why_no_graph
    got = fast.generate(prompt)
    assert torch.equal(got, ref)
    assert torch.equal(fast.generate(prompt), ref)                      # a second run starts clean


@pytest.mark.parametrize("arch,quant", [("gpt2", None), ("gpt2", "int8"), ("llama", "int4"), ("gemma3", None)])
def test_batched_decode_makes_each_prompts_own_tokens(request, arch, quant):
    """Three prompts decoded in step: row b is what prompt b alone makes (greedy, its own generate()),
    so a batch bench times the same work as three batch-1 runs."""
    model, tok = ev.load_model(str(request.getfixturevalue(ARCHS[arch])), device="cpu")
    if quant:
        p1.quantize_model(model, "whole", 8 if quant == "int8" else 4, "per_channel" if quant == "int8" else "int4")
    ids = prompt_of(tok, 30)
    prompts = torch.cat([ids[:, :10], ids[:, 10:20], ids[:, 20:30]])                 # (3, 10)
    fast = decoder.FastDecoder(model, 10, 12, batch=3)
    got = fast.generate(prompts)                                                     # (12, 3)
    assert got.shape == (12, 3)
    for b in range(3):
        assert torch.equal(got[:, b], decoder.generate_tokens(model, tok, prompts[b:b + 1], 12))


def test_batched_decoder_refuses_the_fused_step_and_the_prefill(gpt2_dir):
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    for kw in ({"fused": True}, {"prefill_tokens": 8}):
        with pytest.raises(ValueError, match="batch 1 only"):
            decoder.FastDecoder(model, 4, 4, batch=2, **kw)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_fast_prefill_logits_equal_the_model(request, arch):
    """Gemma 3's tiny model slides a window of 16 over these 40 tokens: its mask is checked too."""
    model, tok = ev.load_model(str(request.getfixturevalue(ARCHS[arch])), device="cpu")
    ids = prompt_of(tok, 40)
    fast = decoder.FastDecoder(model, 4, 4, prefill_tokens=40)
    got = fast.prefill(ids)
    with torch.no_grad():
        ref = model(ids).logits
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_kernel_error_catches_a_layer_that_computes_the_wrong_thing(gpt2_dir):
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    assert gpu_bench.kernel_error(model) is None                               # no Part 1 layers
    p1.quantize_model(model, "whole", 8, "per_channel")
    assert gpu_bench.kernel_error(model) < 1e-5                                # fp32: the same numbers
    fc = model.transformer.h[0].mlp.c_fc
    meant = fc.dequantized_weight(torch.float32)
    fc.dequantized_weight = lambda dtype=None: meant.to(dtype)          # what the weights mean ...
    fc.scale.mul_(1.01)                                                 # ... and a layer 1% off it
    assert 0.009 < gpu_bench.kernel_error(model) < 0.011


def test_other_architectures_are_refused_in_one_line(llama_dir):
    model, _ = ev.load_model(str(llama_dir), device="cpu")
    model.config.model_type = "mistral"
    with pytest.raises(ev.UserError, match="GPT-2, Llama and Gemma 3 text models only .* is .mistral."):
        static_cache.static_model(model, 16)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_timed_layers_are_the_blocks_linears(gpt2_dir, llama_dir, arch):
    """Every linear layer of block 0 and lm_head, each with the width its input really has."""
    model, _ = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    p1.quantize_model(model, "whole", 8, "per_channel")
    layers = list(gpu_bench.timed_layers(model))
    block = {n for n, m in model.named_modules() if isinstance(m, p1.Int8Linear)
             and n.startswith(("transformer.h.0.", "model.layers.0."))}
    assert {gpu_bench.block_layers(model.config)[0] + "." + n for n, _, _ in layers[:-1]} == block
    for _, mod, width in layers:
        assert mod.in_features == width
