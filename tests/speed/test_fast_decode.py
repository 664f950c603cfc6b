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
