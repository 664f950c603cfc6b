"""speed/fast_decode.py's command line: bad input is one line, before any work."""

import pytest
import torch

import evaluate as ev
from speed import fast_decode, gpu_bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_bench_without_cuda_is_one_clear_line(cli_error):
    assert "needs CUDA" in cli_error(fast_decode, ["--smoke"])


def test_unknown_method_is_rejected():
    with pytest.raises(ev.UserError, match="unknown method 'int3'"):
        gpu_bench.parse_methods("fp16,int3")


def test_the_anatomy_is_a_gpu_run(cli_error):
    assert "--anatomy is the GPU's fused step" in cli_error(fast_decode, ["--anatomy", "--device", "cpu"])


def test_cpu_bench_refuses_a_gguf_dir_it_cannot_use_before_any_work(cli_error, gpt2_dir, tmp_path):
    """--gguf-dir that is a file, or inside the model's own folder: one line, and the model's
    folder is left as it was."""
    pytest.importorskip("llama_cpp")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    base = ["--device", "cpu", "--model", str(gpt2_dir), "--text-file", str(text), "--results-dir", str(tmp_path)]
    assert "is a file, not a folder" in cli_error(fast_decode, base + ["--gguf-dir", str(a_file)])
    before = sorted(p.name for p in gpt2_dir.iterdir())
    assert "inside the model's folder" in cli_error(fast_decode, base + ["--gguf-dir", str(gpt2_dir / "gguf")])
    assert sorted(p.name for p in gpt2_dir.iterdir()) == before
    assert not list(tmp_path.glob("*.json"))


def test_gemma3_takes_the_static_path_and_the_fused_step_says_why_not(gemma3_dir, text_file, tmp_path):
    """Gemma 3 runs on the static-cache path (its logits equal the model's: test_decoder.py); the
    fused step, written for GPT-2's and Llama's blocks, refuses it in one line, and the CPU bench
    records why instead of a number from the wrong computation."""
    import evaluate as ev
    from speed import decoder
    model, _ = ev.load_model(str(gemma3_dir), device="cpu")
    with pytest.raises(ev.UserError, match="fused step is written for GPT-2 and Llama blocks, not 'gemma3_text'"):
        decoder.FastDecoder(model, 4, 4, fused=True)
    rec = fast_decode.main(device="cpu", model=str(gemma3_dir), text_file=str(text_file),
                           methods="fp32,scratch-int8-fast", results_dir=str(tmp_path), prefill_tokens=16,
                           prompt_tokens=4, new_tokens=4, repeats=2, warmup=1, quiet=True)
    table = rec["bench"]["table"]
    assert set(table) == {"fp32", "scratch-int8-fast", "fp32·generate"}
    assert "not 'gemma3_text'" in table["scratch-int8-fast"]["why_not_fused"]
    assert table["fp32"]["leading_tokens_equal"] == 4 == table["scratch-int8-fast"]["leading_tokens_equal"]


def test_one_half_precision_baseline_and_gemma_takes_bf16():
    """The GPU bench's baseline is fp16 or bf16, exactly one; a model that overflows float16 runs
    bf16 in place of fp16 by default and refuses fp16 when it is asked for."""
    assert gpu_bench.parse_methods("bf16,scratch-int8-fast") == ["bf16", "scratch-int8-fast"]
    assert gpu_bench.baseline_of(["scratch-int8-fast", "bf16"]) == "bf16"
    with pytest.raises(ev.UserError, match="must include fp16 or bf16"):
        gpu_bench.parse_methods("scratch-int8-fast")
    with pytest.raises(ev.UserError, match="once: fp16 and bf16 are both baselines"):
        gpu_bench.parse_methods("fp16,bf16")
    assert fast_decode.half_for("gemma3_text", ["fp16", "bnb-nf4"], explicit=False) == ["bf16", "bnb-nf4"]
    assert fast_decode.half_for("llama", ["fp16", "bnb-nf4"], explicit=True) == ["fp16", "bnb-nf4"]
    with pytest.raises(ev.UserError, match="overflows float16 .*give bf16 in place of fp16"):
        fast_decode.half_for("gemma3_text", ["fp16"], explicit=True)


def test_every_bench_method_computes_in_the_baselines_dtype(gpt2_dir):
    """load_method loads each method in the half precision it is given: its kept layers and its
    activations (the final norm's dtype) are bfloat16 under a bf16 baseline."""
    for name in ("bf16", "scratch-int8-fast", "scratch-int4-fast"):
        m = gpu_bench.load_method(name, str(gpt2_dir), "cpu", "bfloat16")
        assert gpu_bench.compute_dtype(m) == torch.bfloat16, name
    assert gpu_bench.compute_dtype(gpu_bench.load_method("fp16", str(gpt2_dir), "cpu")) == torch.float16


@pytest.mark.parametrize("spec,says", [("1,x", "whole numbers"), ("0,4", "from 1 to 16"), ("1,32", "from 1 to 16"),
                                       ("1,4,4", "distinct"), ("4,16", "must include 1"), ("", "from 1 to 16")])
def test_a_bad_batch_list_is_one_clear_line(spec, says):
    from speed import batch_bench
    with pytest.raises(ev.UserError, match=says):
        batch_bench.parse_batches(spec)


def test_the_batch_list_is_sorted_and_the_prompts_are_consecutive_slices():
    from speed import batch_bench
    assert batch_bench.parse_batches("16, 1,4") == [1, 4, 16]
    ids = torch.arange(100)[None]
    p = batch_bench.batch_prompts(ids, 4, 10)
    assert p.shape == (4, 10) and torch.equal(p[2], torch.arange(20, 30))
    with pytest.raises(ev.UserError, match="fewer than 16 prompts of 10"):
        batch_bench.batch_prompts(ids, 16, 10)


def test_the_batch_bench_is_a_gpu_run(cli_error):
    assert "--batch is the GPU's batched decode" in cli_error(fast_decode, ["--batch", "1,4", "--device", "cpu"])
