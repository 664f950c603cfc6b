"""speed/gpu_bench.py's parts that run on a CPU: the peers, GPT-2's Conv1D made nn.Linear, and
the bytes a tensor subclass holds."""

import pytest
import torch
from conftest import prompt_of

import evaluate as ev
from speed import gpu_bench


@pytest.mark.parametrize("name", ["torchao-int8wo", "torchao-int4wo"])
def test_a_peer_that_cannot_run_is_a_row_that_says_why(gpt2_dir, name):
    """No GPU here: torchao's peers cannot load their model on CUDA; the bench gets a row with the
    reason, not a crash."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    prompt = prompt_of(tok)
    calls, row = gpu_bench.peer(name, str(gpt2_dir), tok, prompt, prompt, 12, 4, 12, prompt[0, :4])
    assert calls is None and row["why_not"] and row["recipe"] == gpu_bench.PEERS[name]


def test_the_default_methods_stay_those_of_the_committed_benches():
    """A bench run without --methods times what it did before the later additions: a rerun of a
    committed record's command measures the same methods."""
    assert "torchao-int4wo" in gpu_bench.METHODS and "torchao-int4wo" not in gpu_bench.DEFAULT_METHODS
    assert not set(gpu_bench.CALIBRATED_STORAGE) & set(gpu_bench.DEFAULT_METHODS)


def test_conv1d_to_linear_keeps_the_models_logits(gpt2_dir):
    """What torchao's peer quantizes: GPT-2's Conv1D layers as nn.Linear compute the same logits."""
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    ids = prompt_of(tok, 20)
    with torch.no_grad():
        before = model(ids).logits
        gpu_bench.conv1d_to_linear(model)
        after = model(ids).logits
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)


def test_tensor_bytes_counts_what_a_tensor_subclass_holds(gpt2_dir):
    """torchao's quantized weights are tensor subclasses, whose storage cannot be read:
    evaluate.tensor_bytes counts the plain tensors each one holds (the peer's weights row)."""
    torchao = pytest.importorskip("torchao.quantization")
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    plain = {id(p): p for p in [*model.parameters(), *model.buffers()]}          # tied wte/lm_head once
    assert ev.tensor_bytes(model)["bytes"] == sum(p.numel() * p.element_size() for p in plain.values())
    gpu_bench.conv1d_to_linear(model)
    torchao.quantize_(model, torchao.Int8WeightOnlyConfig())
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # each quantized weight: its int8 values, fp32 row scales and int8 zero points, not a float matrix
    expect = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.endswith(".weight")
                 or "wte" in n or "wpe" in n or "ln" in n)
    expect += sum(m.weight.qdata.numel() + 4 * m.weight.scale.numel() + m.weight.zero_point.numel() for m in lin)
    assert ev.tensor_bytes(model)["bytes"] == expect
