"""speed/fused_step.py: the fused decode step makes generate()'s greedy tokens, every layer in
a fused kernel (Triton under its interpreter, C++ on a CPU), or the model's modules where it
cannot read a layer."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import prompt_of

import evaluate as ev
import part1_quantize_scratch as p1
from speed import decoder

FUSED_CHECK = r"""
import sys, tempfile, torch
import evaluate as ev, part1_quantize_scratch as p1, tiny_models as tm
from speed import decoder
arch, quant, dtype, width = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3]), int(sys.argv[4])
size = {"n_embd": width} if arch == "gpt2" else {"hidden_size": width, "intermediate_size": 2 * width}
d = tm.make_tiny_model(tempfile.mkdtemp(), arch, **size)
model, tok = ev.load_model(str(d), device="cpu")
model = model.to(dtype)
if quant == "int8":
    p1.quantize_model(model, "whole", 8, "per_channel")
elif quant == "asym":                       # a kind the fused GEMV does not read: the model's modules run
    p1.quantize_model(model, "whole", 8, "asymmetric")
elif quant in ("nf4", "int4"):
    p1.quantize_model(model, "whole", 4, quant)
p1.set_path(model, "fast")
prompt = ev.tokenize(tok, "the quick brown fox jumps over the lazy dog " * 4).reshape(-1)[:12][None]
fused = decoder.FastDecoder(model, 12, 16, fused=True)       # first: it re-lays out weights in place
ref = decoder.generate_tokens(model, tok, prompt, 16)
got = fused.generate(prompt).clone()
fused.generate(prompt, decode=fused.weights_from_l2())  # the diagnostic step, then the real one again
again = fused.generate(prompt).clone()                  # a second run starts clean
step = fused.fused
print("RESULT", torch.equal(got, ref), torch.equal(again, ref), len(step.fused_layers), len(step.module_layers),
      step.kernels_per_step(), model.config.num_hidden_layers,
      ",".join(str(len(v)) for v in step.tile_keys.values()), ",".join(step.roles))
"""


def fused_run(arch, quant, dtype, width=32):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", FUSED_CHECK, arch, quant, dtype, str(width)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    same, again, fused, modules, kernels_, blocks, tiles, roles = line.split(maxsplit=8)[1:]
    return (same == "True", again == "True", int(fused), int(modules), kernels_, int(blocks),
            [int(t) for t in tiles.split(",")], roles.split(","))


@pytest.mark.parametrize("arch,quant,dtype,width", [
    ("gpt2", "none", "float16", 32), ("gpt2", "int8", "float16", 32), ("gpt2", "nf4", "float16", 64),
    ("llama", "none", "float16", 32), ("llama", "int8", "float32", 32), ("llama", "int4", "float16", 64)])
def test_fused_step_makes_generates_tokens_with_every_layer_fused(arch, quant, dtype, width):
    """The fused decode step (Triton, under the interpreter) computes what the model computes:
    the same greedy tokens as generate(), every layer in a fused kernel, five kernels a block
    plus the embedding and the two of the head."""
    pytest.importorskip("triton")
    same, again, fused, modules, kernels_, blocks, tiles, roles = fused_run(arch, quant, dtype, width)
    assert same and again
    assert modules == 0 and fused == 4 * blocks + 1                      # four GEMVs a block, and the head
    assert int(kernels_) == 5 * blocks + 3
    assert tiles == [blocks] * 4 + [1]            # tune_tiles' keys: each block's GEMV shape once, then the head
    # one role per kernel, in launch order (the anatomy's profile is read by position)
    block = (["attn.c_attn", "attention", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] if arch == "gpt2" else
             ["self_attn.qkv", "attention", "self_attn.o_proj", "mlp.gate_up", "mlp.down_proj"])
    assert roles == ["embed", *[f"{i}.{r}" for i in range(blocks) for r in block], "lm_head", "pick token"]


def test_fused_step_runs_the_models_own_modules_where_it_cannot_read_a_layer():
    """An asymmetric int8 layer is no kind the fused GEMV reads: those layers run as modules,
    around the fused attention and embedding; the tokens are still generate()'s."""
    pytest.importorskip("triton")
    same, again, fused, modules, kernels_, blocks, tiles, _ = fused_run("gpt2", "asym", "float32")
    assert same and again
    # the tied output layer reads the int8 embedding table, one scale a row: that one is fused
    assert modules == 4 * blocks and fused == 1 and kernels_ == "None" and tiles == [1]


@pytest.mark.parametrize("arch,quant", [("gpt2", None), ("gpt2", "int8"), ("llama", None), ("llama", "int8"),
                                        ("gpt2", "nf4")])
def test_cpu_fused_step_makes_generates_tokens(gpt2_dir, llama_dir, arch, quant):
    """On a CPU the fused step's operations are the C++ kernels: the same greedy tokens as
    generate(); float32 and int8 layers all fused (five calls a block, three more), 4-bit
    layers as the model's modules around the fused attention, embedding and head."""
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    if quant:
        p1.quantize_model(model, "whole", 8 if quant == "int8" else 4, "per_channel" if quant == "int8" else quant)
        p1.set_path(model, "fast")
    prompt = prompt_of(tok)
    fused = decoder.FastDecoder(model, prompt.shape[1], 20, fused=True)      # first: it re-lays out weights
    ref = decoder.generate_tokens(model, tok, prompt, 20)
    assert torch.equal(fused.generate(prompt), ref)
    assert torch.equal(fused.generate(prompt), ref)                     # a second run starts clean
    step, blocks = fused.fused, model.config.num_hidden_layers
    if quant == "nf4":
        assert len(step.module_layers) == 4 * blocks and step.kernels_per_step() is None
    else:
        assert not step.module_layers and len(step.fused_layers) == 4 * blocks + 1
        assert step.kernels_per_step() == 5 * blocks + 3


@pytest.mark.parametrize("arch,quant", [("gpt2", "int8"), ("llama", None)])
def test_fused_step_logits_are_its_own_models_on_the_same_tokens(gpt2_dir, llama_dir, arch, quant):
    """Each decode step's logits read from the fused step (C++ kernels on a CPU) equal the
    model's own forward over the prompt and the tokens made (teacher forcing), step for step;
    the tokens are generate()'s."""
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    if quant:
        p1.quantize_model(model, "whole", 8, "per_channel")
        p1.set_path(model, "fast")
    prompt = prompt_of(tok)
    fused = decoder.FastDecoder(model, prompt.shape[1], 12, fused=True)
    ref = decoder.generate_tokens(model, tok, prompt, 12)
    tokens, logits = decoder.fused_step_logits(fused, prompt)
    assert torch.equal(tokens, ref) and logits.shape == (11, model.config.vocab_size)
    seq = torch.cat([prompt.reshape(-1), ref])[None]
    with torch.no_grad():
        own = model(seq).logits[0].float()              # position P + k - 1 predicts tokens[k]
    p = prompt.shape[1]
    for k in range(1, 12):
        torch.testing.assert_close(logits[k - 1], own[p + k - 1], atol=2e-4, rtol=1e-4)
        assert int(logits[k - 1].argmax()) == int(ref[k])
    got = decoder.logit_agreement(logits, decoder.teacher_logits(model, prompt, tokens))
    assert got["steps"] == 11 and got["top1_agree"] == 11 and got["max_abs_logit_diff"] < 2e-4


def test_logit_agreement_is_a_direct_computation():
    """KL(ref || got) per step, the largest |difference| and top-1 agreement, against numbers
    written out by hand: zero for equal logits."""
    ref = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    got = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    a = decoder.logit_agreement(got, ref)
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    q = [1 / (1 + math.e), math.e / (1 + math.e)]
    kld = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert a["per_step_kld"][0] == 0 and a["per_step_kld"][1] == pytest.approx(kld, rel=1e-3)
    assert a["max_abs_logit_diff"] == 2.0 and a["per_step_max_abs_diff"] == [0.0, 2.0]
    assert a["top1_agree"] == 1 and a["kld_mean"] == pytest.approx(kld / 2, rel=1e-3)
    same = decoder.logit_agreement(ref, ref)
    assert same["kld_max"] == 0 and same["top1_agree"] == 2
