"""evaluate.py: perplexity against a brute-force computation, exact memory counts,
latency statistics, the results file, and bad input."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate as ev
import results
from study.config import RunOptions


def load(path, dtype="float32"):
    return ev.load_model(str(path), dtype=dtype, device="cpu")


# ---------------------------------------------------------------- perplexity

def brute_force_nll(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """Token by token: target t (t >= 1) is predicted from ids[k*stride : t], where k is
    the first window (windows start every `stride` tokens, hold max_length inputs)
    that reaches t. One forward pass per token, on the prefix only."""
    ids = ids[0]
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(1, ids.numel()):
            k = max(0, math.ceil((t - max_length) / stride))
            context = ids[k * stride:t]
            assert 1 <= context.numel() <= max_length
            logits = model(context[None]).logits[0, -1].double()
            total += -(torch.log_softmax(logits, -1)[ids[t]]).item()
            count += 1
    return total, count


@pytest.mark.parametrize("max_length,stride", [(32, 32), (32, 16), (32, 7), (16, 5), (64, 64)])
def test_perplexity_equals_brute_force(tiny_dir, tiny_text, max_length, stride):
    model, tok = load(tiny_dir)
    ids = ev.tokenize(tok, tiny_text, max_tokens=150)
    got = ev.perplexity(model, ids, max_length, stride, progress=False)
    nll, n = brute_force_nll(model, ids, max_length, stride)
    assert got["n_tokens_scored"] == n == ids.shape[1] - 1       # every token after the first, once
    assert got["mean_nll"] == pytest.approx(nll / n, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


@pytest.mark.parametrize("max_length,stride", [(32, 16), (16, 5)])
def test_each_windows_nll_is_kept_for_the_bootstrap(tiny_dir, tiny_text, max_length, stride):
    """perplexity.windows: each window's summed NLL and token count, in order; token t belongs to
    the first window that reaches it (the brute force's k), so the sums are the brute force's
    grouped by k."""
    model, tok = load(tiny_dir)
    ids = ev.tokenize(tok, tiny_text, max_tokens=150)
    w = ev.perplexity(model, ids, max_length, stride, progress=False)["windows"]
    sums, counts = {}, {}
    with torch.no_grad():
        for t in range(1, ids.shape[1]):
            k = max(0, math.ceil((t - max_length) / stride))
            logits = model(ids[0, k * stride:t][None]).logits[0, -1].double()
            sums[k] = sums.get(k, 0.0) - torch.log_softmax(logits, -1)[ids[0, t]].item()
            counts[k] = counts.get(k, 0) + 1
    assert w["n_scored"] == [counts[k] for k in sorted(counts)]
    assert w["nll_sum"] == pytest.approx([sums[k] for k in sorted(sums)], rel=1e-5)


def test_text_shorter_than_one_window(gpt2_dir, tiny_text):
    model, tok = load(gpt2_dir)
    ids = ev.tokenize(tok, tiny_text, max_tokens=20)
    got = ev.perplexity(model, ids, 64, 32, progress=False)
    nll, n = brute_force_nll(model, ids, 64, 32)
    assert (got["n_windows"], got["n_tokens_scored"]) == (1, 19)
    assert got["mean_nll"] == pytest.approx(nll / n, rel=1e-5)


def test_bits_per_byte_and_word_perplexity_equal_a_direct_count(gpt2_dir, text_file, tmp_path, tiny_text):
    """Every perplexity record carries the tokenizer-free measures: the brute-force NLL of the
    scored tokens over the UTF-8 bytes, and over the words, of the text they spell. GPT-2's
    byte-level tokens decode back to the text itself, so that text is the text file's (LF
    endings, as it is read) less the first token's piece."""
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), device="cpu", max_length=32, stride=16,
                                 max_tokens=120, skip_latency=True, skip_disk=True, per_line=0, quiet=True,
                                 out=str(tmp_path / "r.json")))
    model, tok = load(gpt2_dir)
    ids = ev.tokenize(tok, tiny_text, max_tokens=120)
    nll, n = brute_force_nll(model, ids, 32, 16)
    spelled = tok.decode(ids[0].tolist())
    assert tiny_text.replace("\r\n", "\n").startswith(spelled)              # lossless: the text's own prefix
    scored = spelled[len(tok.decode(ids[0, :1].tolist())):]
    n_bytes, n_words = len(scored.encode("utf-8")), len(spelled.split()) - len(tok.decode(ids[0, :1]).split())
    p = rec["perplexity"]
    assert (p["n_bytes"], p["n_words"]) == (n_bytes, n_words)
    assert p["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert p["word_perplexity"] == pytest.approx(math.exp(nll / n_words), rel=1e-5)
    assert p["word_perplexity"] > p["ppl"]                   # a word is one token or more


def test_window_plan_scores_each_position_once():
    for n, length, stride in [(100, 32, 32), (100, 32, 7), (10, 64, 32), (2, 4, 4), (33, 32, 32)]:
        scored = [p for begin, end, first in ev.window_plan(n, length, stride) for p in range(first, end + 1)]
        assert scored == list(range(1, n))
        assert all(end - begin <= length for begin, end, _ in ev.window_plan(n, length, stride))


def test_per_line_is_the_mean_of_line_perplexities(gpt2_dir):
    model, tok = load(gpt2_dir)
    lines = ["the model is a token", "", "scale zero point of the weight error", "a",
             "integer float precision"]
    got = ev.per_line_perplexity(model, tok, "\n".join(lines), n_lines=3000, max_length=64,
                                 batch_size=2, progress=False)
    expected = []
    for line in lines:
        ids = tok(line, return_tensors="pt").input_ids
        if line.strip() and ids.shape[1] >= 2:
            expected.append(ev.perplexity(model, ids, 64, 64, progress=False)["ppl"])
    assert len(expected) >= 3 and got["n_lines"] == len(expected)
    assert got["mean_of_line_ppl"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)


# ---------------------------------------------------------------- memory

def gpt2_param_count(cfg, vocab):
    d, L, P = cfg.n_embd, cfg.n_layer, cfg.n_positions
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + P * d + L * block + 2 * d      # lm_head is tied to wte: not counted again


def test_memory_bytes_equal_hand_count_gpt2(gpt2_dir):
    model, _ = load(gpt2_dir)
    expected = 4 * gpt2_param_count(model.config, model.config.vocab_size)
    got = ev.tensor_bytes(model)
    assert got["bytes"] == expected
    assert got["by_dtype_bytes"] == {"float32": expected}
    half, _ = load(gpt2_dir, dtype="float16")
    assert ev.tensor_bytes(half)["by_dtype_bytes"] == {"float16": expected // 2}


def test_memory_bytes_equal_hand_count_llama(llama_dir):
    model, _ = load(llama_dir)
    c = model.config
    d, i, hd = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * hd
    block = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * i
    params = 2 * c.vocab_size * d + c.num_hidden_layers * block + d   # untied embed and lm_head
    buffers = sum(b.numel() for b in model.buffers())                 # rotary inv_freq tables
    assert buffers == 2 * (hd // 2)
    assert ev.tensor_bytes(model)["bytes"] == 4 * (params + buffers)


def test_disk_bytes_counts_what_save_writes(tmp_path):
    got = ev.disk_bytes(lambda d: (tmp_path / "x").write_bytes(b"") or open(f"{d}/w.bin", "wb").write(b"x" * 1234))
    assert got == 1234


# In a process of its own: inside the test suite, memory that earlier tests free during the
# block (their models, their threads' buffers) lowers the RSS as much as the allocation raises
# it, and the rise over the entry value reads near 0 (seen once in a CI run).
PEAK_PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from study.memory import PeakMemory
big = torch.ones(256 * 2**20 // 4)     # an earlier, larger peak, freed: the block must not see it
del big
with PeakMemory(torch.device("cpu")) as peak:
    x = torch.ones(64 * 2**20 // 4)   # 64 MiB, touched
    del x
print(peak.kind)
print(peak.peak_bytes)
"""


def test_peak_memory_sees_an_allocation_and_not_an_earlier_peak():
    from conftest import ROOT
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(ROOT)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    kind, peak = out[-2], int(out[-1])
    assert 60 * 2**20 <= peak < 200 * 2**20, (kind, peak)


# ---------------------------------------------------------------- latency

def test_latency_statistics(gpt2_dir, tiny_text):
    model, tok = load(gpt2_dir)
    ids = ev.tokenize(tok, tiny_text)
    lat = ev.latency(model, tok, ids, prefill_tokens=32, prompt_tokens=8, new_tokens=8, repeats=10, warmup=1)
    for stats in (lat["prefill"], lat["decode"]["ms_per_token"]):
        assert stats["n"] == 10
        assert 0 < stats["min"] <= stats["p10"] <= stats["median"] <= stats["p90"] <= stats["max"]


def test_summarize_quantiles():
    s = ev.summarize([float(x) for x in range(1, 12)])   # 1..11
    assert (s["median"], s["p10"], s["p90"]) == (6.0, 2.0, 10.0)


def test_greedy_decode_makes_exactly_new_tokens(gpt2_dir):
    model, tok = load(gpt2_dir)
    prompt = torch.tensor([[1, 2, 3, 4]])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=ev.greedy_config(tok, 12))
    assert out.shape == (1, 16)


# ---------------------------------------------------------------- the CLI and its results file

def test_cli_writes_a_complete_results_file(gpt2_dir, text_file, tmp_path, tiny_text):
    out = tmp_path / "r.json"
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), device="cpu", max_length=64, stride=32,
                                 prefill_tokens=32, prompt_tokens=8, new_tokens=8, repeats=3, warmup=1, per_line=50,
                                 out=str(out), quiet=True, stand_in="tiny test model"))
    saved = json.loads(out.read_text())
    assert saved["perplexity"] == rec["perplexity"]
    assert saved["dataset"]["sha256"] == __import__("hashlib").sha256(tiny_text.encode()).hexdigest()  # CRLF read as LF
    assert saved["model"]["local"] and saved["model"]["stand_in"] == "tiny test model"
    assert saved["model"]["id"] == gpt2_dir.name and len(saved["model"]["sha256"]) == 64
    assert saved["memory"]["unit"].startswith("MiB")
    assert saved["memory"]["disk_bytes"] > saved["memory"]["weights_bytes"]
    assert set(saved["environment"]["versions"]) >= {"torch", "transformers", "bitsandbytes"}
    assert saved["method"]["name"] == "baseline-fp32" and saved["timestamp"] and saved["command"]
    assert not list(tmp_path.glob(".*.tmp"))                         # atomic write left no temp file


def test_max_tokens_is_recorded(gpt2_dir, text_file, tmp_path):
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), device="cpu", max_length=32, stride=32,
                                 max_tokens=100, per_line=0, skip_latency=True, skip_disk=True,
                                 out=str(tmp_path / "r.json"), quiet=True))
    assert rec["dataset"]["truncated"] and rec["dataset"]["max_tokens"] == 100
    assert rec["perplexity"]["n_tokens_scored"] == 99


def test_write_json_atomic_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    results.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        results.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ---------------------------------------------------------------- bad input



def test_bad_inputs_end_in_one_line(cli_error, capsys, gpt2_dir, text_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \r\n")
    base = ["--model", str(gpt2_dir), "--text-file", str(text_file), "--device", "cpu", "--quiet"]
    cases = {
        "does not exist": ["--model", str(tmp_path / "nope"), "--text-file", str(text_file)],
        "--model DIR": ["--model", "no-such-org/no-such-model", "--text-file", str(text_file), "--device", "cpu"],
        "text file": ["--model", str(gpt2_dir), "--text-file", str(tmp_path / "missing.txt")],
        "is empty": ["--model", str(gpt2_dir), "--text-file", str(empty)],
        "context of 128": base + ["--max-length", "256", "--stride", "128"],
        "--stride": base + ["--max-length", "64", "--stride", "0"],
    }
    for expected, argv in cases.items():
        assert expected in cli_error(ev, argv), expected
    assert "--stride" in cli_error(ev, base + ["--max-length", "64", "--stride", "65"])
    assert "--stride" in cli_error(ev, base + ["--stride", "-1"])
    assert "error" in cli_error(ev, ["--model", str(text_file)])      # a file, not a model folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(cli_error, capsys, gpt2_dir, text_file):
    assert "no CUDA" in cli_error(ev, ["--model", str(gpt2_dir), "--text-file", str(text_file),
                                           "--device", "cuda"])


def test_bad_input_from_the_real_command_line(tmp_path):
    """The same as a user sees it: a separate process, stderr only, exit code 2."""
    proc = subprocess.run([sys.executable, str(ev.Path(ev.__file__)), "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"evaluate.py: error: model path '{tmp_path / 'nope'}' does not exist"


def test_an_older_record_gets_the_tokenizer_free_measures_a_rerun_would_write(gpt2_dir, text_file, tmp_path):
    """scripts/add_tokenizer_free.py fills a record written before bits per byte existed: from the
    record's own NLL, on the text rebuilt from its file and its model's tokenizer, the values equal
    the evaluator's to the bit. A record of another text is left alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import add_tokenizer_free
    models = tmp_path / "models"
    shutil.copytree(gpt2_dir, models / gpt2_dir.name)
    out = tmp_path / "results"
    rec = ev.main(run=RunOptions(model=str(models / gpt2_dir.name), text_file=str(text_file), device="cpu",
                                 max_length=32, stride=16, max_tokens=120, skip_latency=True, skip_disk=True,
                                 per_line=0, quiet=True, out=str(out / "r.json")))
    measured = {k: rec["perplexity"][k] for k in ("bits_per_byte", "word_perplexity", "n_bytes", "n_words")}
    window_bytes = rec["perplexity"]["windows"]["n_bytes"]
    older = json.loads((out / "r.json").read_text())
    for k in (*measured, "tokenizer_free_definition"):
        del older["perplexity"][k]
    del older["perplexity"]["windows"]["n_bytes"]
    bytes_only = json.loads(json.dumps(older))                  # had bits per byte, not its windows' bytes
    bytes_only["perplexity"].update(measured)
    other = json.loads(json.dumps(older))
    other["dataset"]["sha256"] = "0" * 64
    (out / "r.json").write_text(json.dumps(older))
    (out / "other.json").write_text(json.dumps(other))
    (out / "s.json").write_text(json.dumps(bytes_only))
    written = add_tokenizer_free.main(folder=str(out), text_file=str(text_file), models=str(models))
    assert written == [out / "r.json", out / "s.json"]
    got = json.loads((out / "r.json").read_text())["perplexity"]
    assert {k: got[k] for k in measured} == measured
    assert got["windows"]["n_bytes"] == window_bytes
    assert "add_tokenizer_free.py" in got["tokenizer_free_added_by"]
    got = json.loads((out / "s.json").read_text())["perplexity"]
    assert got["windows"]["n_bytes"] == window_bytes and "window_bytes_added_by" in got
    assert "bits_per_byte" not in json.loads((out / "other.json").read_text())["perplexity"]


def test_each_window_counts_the_bytes_its_scored_tokens_spell(gpt2_dir, text_file, tmp_path):
    """windows.n_bytes, against a direct count: the decoded length of the tokens up to each
    window's last target, less the length up to the one before its first; they add up to the
    record's n_bytes, and with the NLL they give back its bits per byte."""
    from transformers import AutoTokenizer

    from study.text import load_text, tokenize
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), device="cpu", max_length=32,
                                 stride=12, max_tokens=150, skip_latency=True, skip_disk=True, per_line=0,
                                 quiet=True, out=str(tmp_path / "r.json")))
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    ids = tokenize(tok, load_text(text_file=str(text_file)).text, 150)[0].tolist()
    spelled = lambda k: len(tok.decode(ids[:k]).encode("utf-8"))           # noqa: E731
    want, done = [], 1
    for _, end, _ in ev.window_plan(len(ids), 32, 12):
        want.append(spelled(end + 1) - spelled(done))
        done = end + 1
    p = rec["perplexity"]
    assert p["windows"]["n_bytes"] == want and sum(want) == p["n_bytes"]
    assert math.isclose(sum(p["windows"]["nll_sum"]) / math.log(2) / sum(want), p["bits_per_byte"], rel_tol=1e-12)


def test_add_tokenizer_free_refuses_a_folder_as_its_text_before_reading_any_record(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import add_tokenizer_free
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(results.UserError, match="is a folder"):
        add_tokenizer_free.main(folder=str(tmp_path), text_file=str(tmp_path))
