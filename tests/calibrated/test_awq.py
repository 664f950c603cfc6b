"""AWQ's scales: searched on calibration, they lower the block's output error there and on held-out text."""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from calibrated import awq
from calibrated.capture import capture, run_block
from calibrated.methods import Options, quantize
from calibrated.quantizer import Grid, fake_quantize, fit, grouped
from part1_quantize_scratch import decoder_blocks


def outlier_model(folder):
    """The tiny model with a few output channels of each norm made large, as trained LLMs have."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for m in list(model.modules()):
        if awq.is_norm(m):
            s = torch.ones(m.weight.shape[0])
            s[:3] = 1 / 25
            awq.divide_norm_output(m, s)                  # channels 0-2 come out 25 times larger
    return model


@pytest.mark.parametrize("arch_dir", ["gpt2_dir", "llama_dir", "gemma3_dir"])
def test_a_scale_folded_into_the_norm_leaves_the_block_unchanged(arch_dir, request):
    """W diag(s) after norm(x) / s is the same function: for LayerNorm (weight and bias), Llama's
    RMSNorm (x w) and Gemma's (x (1 + w)), whose weight must become (1 + w) / s - 1, not w / s."""
    model = outlier_model(request.getfixturevalue(arch_dir))
    _, blocks = decoder_blocks(model)
    inputs = capture(model, blocks, windows(model, 0, n=2))
    block = blocks[0]
    reference = [awq.run_block(block, h, a, k) for h, a, k in inputs]
    folded = [g for g in awq.find_groups(block, inputs) if g.prev_kind == "norm"]
    assert folded
    for g in folded:
        s = torch.rand(awq.weight_of(block.get_submodule(g.names[0])).shape[1],
                       generator=torch.Generator().manual_seed(1)) + 0.5
        for name in g.names:
            m = block.get_submodule(name)
            awq.set_weight(m, awq.weight_of(m) * s[None, :])
        awq.divide_norm_output(block.get_submodule(g.prev_name), s)
    for (h, a, k), ref in zip(inputs, reference):
        got = awq.run_block(block, h, a, k)
        assert (got - ref).abs().max() < 1e-4 * ref.abs().max()


def windows(model, seed, n=8, length=48):
    return torch.randint(0, model.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(seed))


def error_with_scale(block, inputs, reference, group, s, grid):
    b = copy.deepcopy(block)
    for name in group.names:
        m = b.get_submodule(name)
        w = awq.weight_of(m) * s[None, :]
        sc, zr = fit(grouped(w, grid), grid.maxq)
        awq.set_weight(m, fake_quantize(grouped(w, grid), sc, zr, grid.maxq).reshape(w.shape) / s[None, :])
    return awq.block_error(b, inputs, reference)


@pytest.mark.parametrize("arch_dir", ["gpt2_dir", "llama_dir"])
def test_the_chosen_scale_lowers_the_block_error_on_calibration_and_held_out(arch_dir, request):
    model = outlier_model(request.getfixturevalue(arch_dir))
    _, blocks = decoder_blocks(model)
    grid = Grid(3, 0)
    calib = capture(model, blocks, windows(model, 0))
    held = capture(model, blocks, windows(model, 1))
    block = blocks[0]
    ref_c = [run_block(block, h, a, k) for h, a, k in calib]
    ref_h = [run_block(block, h, a, k) for h, a, k in held]
    group = awq.find_groups(block, calib)[0]                   # the attention input, after the first norm
    assert group.prev_kind == "norm"
    x_mean = awq.layer_inputs(block, calib, group.names[:1])[group.names[0]][0]
    s, alpha, losses = awq.search_scale(block, calib, ref_c, group, x_mean, grid)
    ones = torch.ones_like(s)
    assert alpha > 0
    for inputs, ref in ((calib, ref_c), (held, ref_h)):
        chosen = error_with_scale(block, inputs, ref, group, s, grid)
        assert chosen < error_with_scale(block, inputs, ref, group, ones, grid)


def test_llama_groups_fold_into_norms_and_up_proj(llama_dir):
    model = outlier_model(llama_dir)
    _, blocks = decoder_blocks(model)
    groups = awq.find_groups(blocks[0], capture(model, blocks, windows(model, 0)))
    folds = {tuple(g.names): (g.prev_kind, g.prev_name) for g in groups}
    assert folds[("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")] == ("norm", "input_layernorm")
    assert folds[("mlp.gate_proj", "mlp.up_proj")] == ("norm", "post_attention_layernorm")
    assert folds[("mlp.down_proj",)] == ("linear", "mlp.up_proj")
    # 4 heads, 2 key-value heads: v_proj's outputs do not line up with o_proj's inputs
    assert folds[("self_attn.o_proj",)] == ("explicit", None)


@pytest.mark.parametrize("arch_dir", ["gpt2_dir", "llama_dir"])
def test_whole_model_awq_beats_round_to_nearest_on_held_out_text(arch_dir, request):
    model = outlier_model(request.getfixturevalue(arch_dir))
    held = windows(model, 2, n=4)
    with torch.no_grad():
        ref = torch.log_softmax(model(held).logits.float(), -1)
    def kld(m):
        with torch.no_grad():
            lp = torch.log_softmax(m(held).logits.float(), -1)
        return float((ref.exp() * (ref - lp)).sum(-1).mean())
    grid = Grid(3, 0)
    results = {}
    for method in ("rtn", "awq"):
        m = copy.deepcopy(model)
        quantize(m, method, grid, windows(model, 0), Options(), progress=False)
        results[method] = kld(m)
    assert results["awq"] < results["rtn"], results
