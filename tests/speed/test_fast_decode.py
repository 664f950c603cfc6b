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


def test_the_static_path_refuses_gemma3_and_says_why(cli_error, gemma3_dir, text_file, tmp_path):
    """Gemma 3's sliding windows, extra norms and scaled embedding are not in a static-cache
    model: one line that names them, never a number from the wrong computation."""
    line = cli_error(fast_decode, ["--device", "cpu", "--model", str(gemma3_dir), "--text-file", str(text_file),
                                   "--results-dir", str(tmp_path)])
    assert "'gemma3_text'" in line and "sliding-window attention" in line
