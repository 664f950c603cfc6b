"""Bad input, as a hurried or unlucky user gives it, to every script.

Each case must end with one line on stderr, a non-zero exit and no traceback, before any
long work, and leave every file that existed before it byte-identical (and make none).
Then the data-loss cases: names that cannot collide, GGUF files that are whole and keyed
by their model's content, a quantized folder recognised as such, a damaged study resumed."""
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import bonus_gguf as bg
import evaluate as ev
import explore_calibrated as ec
import part1_quantize_scratch as p1
import part2_bnb_nf4 as p2
import plot_results as pr
import results
import run_study
import tiny_models
from report import build_report as br
from study.config import RunOptions


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders, by path, with the sha256 of its bytes."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, gpt2_dir, text_file):
    """A user's folder: a model, a text, some results, and the broken things users meet."""
    root = tmp_path_factory.mktemp("world")
    model = root / "tiny"
    shutil.copytree(gpt2_dir, model)
    shutil.copy(text_file, root / "text.txt")
    (root / "results").mkdir()
    (root / "results" / "old.json").write_text('{"schema_version": 1, "method": {"name": "kept"}}')
    (root / "a-file").write_text("not a folder\n")
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("mine\n")
    (root / "empty.txt").write_text("\n \r\n")
    (root / "not.gguf").write_bytes(b"PK\x03\x04 a zip, not a gguf" * 10)

    cut = root / "truncated"                                 # a download that stopped half way
    shutil.copytree(gpt2_dir, cut)
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    bert = root / "bert"                                    # a model, but not a causal LM
    from transformers import DistilBertConfig, DistilBertModel
    DistilBertModel(DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2,
                                     hidden_dim=32)).save_pretrained(bert)

    no_tok = root / "no-tokenizer"                          # weights and config only
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gpt2_dir / name, no_tok / name)

    bnb_saved = root / "bnb-saved"                          # what part2 --save writes: quantization_config
    shutil.copytree(gpt2_dir, bnb_saved)
    cfg = json.loads((bnb_saved / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (bnb_saved / "config.json").write_text(json.dumps(cfg))

    p1_saved = root / "p1-saved"                            # what part1 --save writes: int8 + its spec
    m, tok = ev.load_model(str(gpt2_dir), device="cpu")
    spec = p1.quantize_model(m)
    p1.save_quantized(m, p1_saved, spec, tok)

    home = root / "home"                                    # for '--model=~/tiny'
    home.mkdir()
    shutil.copytree(gpt2_dir, home / "tiny")
    (home / "notes.txt").write_text("my notes\n")
    (root / "one.txt").write_text("a")                      # one token
    (root / "dangling").symlink_to(root / "gone")
    (root / "report.json").write_text('{"schema_version": 1, "method": {"name": "a results file"}}')
    nan = root / "nan-weights"                              # a model whose weights hold NaN
    shutil.copytree(gpt2_dir, nan)
    from safetensors.torch import load_file, save_file
    t = load_file(nan / "model.safetensors")
    t["transformer.h.0.attn.c_attn.weight"][0, 0] = float("nan")
    save_file(t, str(nan / "model.safetensors"), metadata={"format": "pt"})
    return root


def cases(w: Path) -> list[tuple[object, list[str], str]]:
    """(script, argv, what the one line must say)."""
    m, t = str(w / "tiny"), str(w / "text.txt")
    base = ["--model", m, "--text-file", t, "--device", "cpu", "--quiet", "--results-dir", str(w / "results"),
            "--prefill-tokens", "32", "--prompt-tokens", "8", "--new-tokens", "8"]     # fit a context of 128
    return [
        # evaluate.py: the model
        (ev, ["--model", str(w / "truncated"), "--text-file", t], "is cut short"),
        (ev, ["--model", str(w / "bert"), "--text-file", t], "not a causal language model"),
        (ev, ["--model", str(w / "no-tokenizer"), "--text-file", t], "no tokenizer files"),
        (ev, ["--model", str(w / "bnb-saved"), "--text-file", t], "already quantized by bitsandbytes"),
        (ev, ["--model", str(w / "p1-saved"), "--text-file", t], "already quantized by part1_quantize_scratch"),
        (ev, ["--model", str(w / "a-file"), "--text-file", t], "is a file, not a model folder"),
        (ev, ["--model", str(w / "nope"), "--text-file", t], "does not exist"),
        (ev, ["--model=~/nope", "--text-file", t], f"'{w / 'home' / 'nope'}' does not exist"),
        # evaluate.py: devices
        (ev, base + ["--device-map", "bogus"], "unknown --device-map 'bogus'"),
        (ev, base + ["--device", "gpu"], "unknown device 'gpu'"),
        # evaluate.py: ranges
        *[(ev, base + [flag, value], f"{flag} must be at least") for flag, value in (
            ("--new-tokens", "0"), ("--prompt-tokens", "0"), ("--prefill-tokens", "0"), ("--prefill-tokens", "-4"),
            ("--per-line", "-1"), ("--warmup", "-1"), ("--repeats", "0"), ("--max-tokens", "1"),
            ("--max-length", "1"))],
        (ev, base + ["--threads", "0"], "--threads must be between 1 and"),
        (ev, base + ["--stride", "0"], "--stride"),
        (ev, base + ["--prefill-tokens", "512"], "--prefill-tokens (512) is longer than the model's context of 128"),
        (ev, base + ["--prompt-tokens", "100", "--new-tokens", "100"], "--prompt-tokens + --new-tokens (200)"),
        (ev, base + ["--max-length", "256"], "context of 128"),
        # evaluate.py: text and output locations
        (ev, ["--model", m, "--text-file", str(w / "empty.txt")], "is empty"),
        (ev, ["--model", m, "--text-file", str(w / "missing.txt")], "does not exist"),
        (ev, base + ["--results-dir", str(w / "a-file")], "--results-dir"),
        (ev, base + ["--results-dir", str(w / "a-file" / "sub")], "is a file"),
        (ev, base + ["--out", str(w / "results")], "is a folder"),
        (ev, base + ["--out", str(w / "a-file" / "r.json")], "is a file"),
        # explore_calibrated.py: the grid and the calibration text
        (ec, base + ["--bits", "5"], "--bits 5 is not supported"),
        (ec, base + ["--method", "smoothquant"], "unknown --method 'smoothquant'"),
        (ec, base + ["--group-size", "48"], "group size 48 does not divide"),
        (ec, base + ["--group-size", "16", "--calib-file", str(w / "missing.txt")], "does not exist"),
        (ec, base + ["--group-size", "16", "--calib-len", "16", "--calib-samples", "2"],
         "too few calibration tokens"),
        (ec, base + ["--group-size", "16", "--calib-len", "512"], "--calib-len 512 is longer than the windows"),
        (ec, base + ["--group-size", "16", "--calib-len", "64", "--calib-file", t],
         "shares 32 consecutive tokens with the scored text"),
        (ec, base + ["--calib-source", "c4"], "unknown --calib-source 'c4'"),
        (ec, base + ["--method", "awq", "--act-order"], "--act-order is GPTQ's option"),
        # part1: saving never overwrites
        (p1, base + ["--save", m], "the model's own folder"),
        (p1, base + ["--save", str(w / "a-file")], "is a file"),
        (p1, base + ["--save", str(w / "full")], "is not empty"),
        (p1, base + ["--save", str(w / "new"), "--bench"], "--save"),
        # part1: settings, checked before the weights load
        (p1, base + ["--scheme", "group", "--group-size", "0"], "--group-size must be at least 1"),
        (p1, base + ["--scheme", "group", "--group-size", "-8"], "--group-size must be at least 1"),
        (p1, base + ["--scheme", "group", "--group-size", "24"], "does not divide"),
        (p1, base + ["--mode", "selective", "--blocks", "99"], "the model has 2 blocks"),
        (p1, base + ["--mode", "selective", "--blocks", "a"], "malformed --blocks"),
        (p1, base + ["--mode", "selective", "--blocks", "1-0"], "start after end"),
        (p1, base + ["--mode", "selective", "--components", "mlp"], "unknown component 'mlp'"),
        (p1, base + ["--mode", "selective", "--components", ","], "malformed --components"),
        (p1, base + ["--blocks", "0"], "need --mode selective"),
        (p1, base + ["--scheme", "nf4"], "unknown 8-bit scheme 'nf4'"),
        (p1, base + ["--bench", "--sensitivity"], "give one of them"),
        (p1, base + ["--prefill-tokens", "0", "--bench"], "--prefill-tokens must be at least 1"),
        # part2
        *[(p2, base + ["--threshold", v], "--threshold must be a finite number") for v in ("-1", "nan", "inf")],
        (p2, base + ["--mode", ","], "malformed --mode"),
        (p2, base + ["--mode", "nf8"], "unknown mode 'nf8'"),
        (p2, base + ["--mode", "nf4"], "multiples of 64"),                # the tiny model is 32 wide
        (p2, base + ["--mode", "int8", "--save", str(w / "a-file")], "is a file"),
        (p2, base + ["--mode", "int8", "--save", m], "the model's own folder"),
        (p2, base + ["--mode", "int8,nf4", "--out", str(w / "r.json")], "--out names one results file"),
        (p2, base + ["--compare", "--bench"], "give one of them"),
        (p2, ["--compare", "--model", str(w / "p1-saved")], "already quantized"),
        # the GGUF bonus
        (bg, ["--inspect", str(w / "not.gguf")], "is not a GGUF file"),
        (bg, ["--inspect", str(w / "nope.gguf")], "does not exist"),
        (bg, ["--inspect", str(w / "not.gguf"), "--out", str(w / "results")], "is a folder"),
        (bg, base + ["--push-to-hub", ""], "--push-to-hub needs USER/REPO"),
        (bg, base + ["--push-to-hub", "a/b/c"], "--push-to-hub needs USER/REPO"),
        (bg, base + ["--push-to-hub", "user/repo"], "no Hugging Face token"),
        (bg, base + ["--dry-run"], "--dry-run goes with --push-to-hub"),
        (bg, base + ["--gguf-dir", str(w / "a-file")], "--gguf-dir"),
        (bg, base + ["--types", "Q9_9"], "unknown GGUF type 'Q9_9'"),
        (bg, base + ["--types", ","], "--types is empty"),
        (bg, base + ["--out", str(w / "r.json")], "--out names one results file"),
        # an existing file that this run did not make is never the output
        (ev, base + ["--out", t], "exists and is not a results file"),
        (ev, base + ["--out", str(w / "tiny" / "config.json")], "exists and is not a results file"),
        (ev, base + ["--out=~/notes.txt"], f"'{w / 'home' / 'notes.txt'}' exists and is not a results file"),
        (p2, ["--compare", "--model", m, "--out", str(w / "tiny" / "model.safetensors")], "is not a results file"),
        (bg, ["--inspect", str(w / "not.gguf"), "--out", str(w / "not.gguf")], "is not a results file"),
        (br, ["--results", str(w / "results"), "--out", str(w / "report.json")], "is not a pdf file"),
        (p1, base + ["--save", str(w / "new-save"), "--out", str(w / "new-save" / "config.json")], "inside --save"),
        (ev, base + ["--results-dir", ""], "--results-dir is empty"),
        (ev, base + ["--results-dir", str(w / "dangling")], "broken symbolic link"),
        (ev, base + ["--results-dir", str(w / "dangling" / "sub")], "broken symbolic link"),
        (ev, base + ["--out", str(w / "results" / "new") + "/"], "ends with '/'"),
        (p2, base + ["--mode", "int8", "--save", str(w / "sv"), "--out", str(w / "sv" / "bnb-int8" / "c.json")],
         "--out is inside --save"),
        (p2, ["--compare", "--model", m, "--threshold", "3"], "it goes with --mode int8"),
        # values that are out of this world
        (ev, base + ["--threads", "99999999999"], "--threads must be between 1 and"),
        (ev, base + ["--threads", "100000"], "--threads must be between 1 and"),
        (p1, base + ["--mode", "selective", "--blocks", "0-999999999"], "the model has 2 blocks"),
        (ev, base + ["--repeats", "abc"], "invalid int value: 'abc' (see --help)"),
        # flags that contradict each other or do nothing
        (p1, base + ["--bench", "--bits", "4"], "--bench times fp32 against whole-model INT8"),
        (p1, base + ["--bench", "--skip-latency"], "--bench times fp32"),
        (p1, base + ["--sensitivity", "--mode", "selective", "--blocks", "0"], "--sensitivity quantizes"),
        (p1, base + ["--bits", "4", "--group-size", "33"], "--group-size goes with --scheme group"),
        (p2, base + ["--dtype", "bfloat16"], "use --compute-dtype"),
        (p2, base + ["--threshold", "0.5", "--mode", "nf4"], "it goes with --mode int8"),
        (p2, base + ["--layer", "x"], "--layer picks the histogram's layer of --compare"),
        (p2, base + ["--bench", "--skip-latency"], "--bench is a timing run"),
        (p2, ["--compare", "--model", m, "--layer", "nope"], "--layer nope: no such block linear"),
        (p2, ["--compare", "--model", str(w / "nan-weights")], "holds NaN or infinite weights"),
        (bg, ["--inspect", str(w / "not.gguf"), "--push-to-hub", "a/b"], "--inspect only reads one file"),
        (bg, base + ["--dtype", "float16"], "the GGUF types are chosen with --types"),
        (bg, base + ["--gguf-dir", m], "inside the model's folder"),
        # the wrong kind of path, named as such
        (ev, base[:2] + ["--text-file", str(w / "tiny")], "is a folder, not a text file"),
        (ev, base[:2] + ["--text-file", ""], "--text-file is empty"),
        (ev, base[:2] + ["--text-file", str(w / "one.txt"), "--skip-latency"], "fewer than 2 tokens"),
        (p2, base[:2] + ["--text-file", str(w / "one.txt"), "--mode", "int8", "--skip-latency"],
         "fewer than 2 tokens"),
        (bg, ["--inspect", str(w / "tiny")], "is a folder, not a file"),
        (pr, ["--results", t], "is a file, not a folder"),
        # the study
        (run_study, ["--model", m, "--text-file", t, "--steps", ""], "malformed --steps"),
        (run_study, ["--model", m, "--text-file", t, "--steps", "baseline,part9"], "unknown step 'part9'"),
        (run_study, ["--model", m, "--text-file", t, "--results-dir", str(w / "a-file")], "--results-dir"),
        (run_study, ["--model", m, "--text-file", t, "--report", str(w / "results")], "is a folder"),
        (run_study, ["--model", m, "--text-file", t, "--max-tokens", "0"], "--max-tokens must be at least 2"),
        (run_study, ["--model", m, "--text-file", t, "--steps", "baseline"], "longer than the model's context"),
        # figures and report
        (pr, ["--results", str(w / "nope")], "does not exist"),
        (pr, ["--results", str(w / "results"), "--out", str(w / "a-file")], "is a file"),
        (br, ["--results", str(w / "results"), "--out", str(w / "results")], "is a folder"),
        (br, ["--results", str(w / "results"), "--figures", str(w / "a-file")], "is a file"),
    ]


def case_id(case) -> str:
    script, argv, _ = case
    return f"{Path(script.__file__).stem}:{' '.join(a.split('/')[-1] for a in argv if a != '--quiet')}"[:90]


def no_login(monkeypatch, world) -> None:
    """No token anywhere, whatever the developer's own login: env and the token file."""
    import huggingface_hub.constants as hc
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(world / "hf-home-empty"))
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(world / "hf-home-empty" / "token"))
    monkeypatch.setattr(hc, "HF_STORED_TOKENS_PATH", str(world / "hf-home-empty" / "stored_tokens"))


def test_every_bad_input_is_one_line_and_touches_nothing(world, cli_error, monkeypatch):
    monkeypatch.setenv("HOME", str(world / "home"))
    no_login(monkeypatch, world)
    failures = []
    for case in cases(world):
        script, argv, expected = case
        before = snapshot(world)
        try:
            line = cli_error(script, argv)
            if expected not in line:
                failures.append(f"{case_id(case)}: expected '{expected}' in: {line}")
        except (AssertionError, Exception) as e:                        # one report for every case
            failures.append(f"{case_id(case)}: {type(e).__name__}: {str(e)[:300]}")
        after = snapshot(world)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            failures.append(f"{case_id(case)}: files changed: {[Path(p).name for p, _ in changed][:5]}")
    assert not failures, "\n".join(failures)


def test_tilde_is_expanded_in_model(world, cli_error, monkeypatch):
    """'--model=~/tiny' (no shell expansion) reaches the model: its context is read."""
    monkeypatch.setenv("HOME", str(world / "home"))
    line = cli_error(ev, ["--model=~/tiny", "--text-file", str(world / "text.txt"), "--max-length", "256"])
    assert "context of 128" in line


def test_local_folder_errors_do_not_blame_the_hub(world, cli_error):
    for name in ("truncated", "bert", "no-tokenizer"):
        line = cli_error(ev, ["--model", str(world / name), "--text-file", str(world / "text.txt")])
        assert "Hub" not in line, line


def test_push_that_cannot_reach_the_hub_fails_before_the_work(world, cli_error, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = cli_error(bg, ["--model", str(world / "tiny"), "--text-file", str(world / "text.txt"),
                          "--push-to-hub", "user/repo", "--results-dir", str(world / "results")])
    assert "cannot reach the Hub" in line and "hf_not_a_real_token" not in line


def test_the_cli_from_a_shell(world):
    """results_table.py: --help is help, a missing folder is one line and exit 2."""
    import subprocess
    import sys
    script = str(Path(ev.__file__).parent / "scripts" / "results_table.py")
    ok = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "usage" in ok.stdout
    bad = subprocess.run([sys.executable, script, str(world / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "does not exist" in bad.stderr
    two = subprocess.run([sys.executable, script, "a", "b"], capture_output=True, text=True)
    assert two.returncode == 2 and two.stderr.strip().splitlines() == [
        "results_table.py: error: unrecognized arguments: b (see --help)"]


# -----------------------------------------------------------------------------
# Data loss and silently wrong results

def test_results_names_differ_by_model_content_not_folder_name(tmp_path, text_file):
    a = tiny_models.make_tiny_model(tmp_path / "a" / "gpt2", arch="gpt2", seed=0)
    b = tiny_models.make_tiny_model(tmp_path / "b" / "gpt2", arch="gpt2", seed=1)
    c = tmp_path / "c" / "gpt2"
    shutil.copytree(a, c)                                       # the same model, elsewhere
    src = ev.load_text(text_file=str(text_file))
    cfg = ev.EvalConfig(max_length=64, stride=32)
    pa, pb, pc = (ev.run_path(tmp_path, "baseline-fp32", str(x), src, cfg) for x in (a, b, c))
    assert pa != pb and pa == pc
    assert pa.name.startswith("baseline-fp32__gpt2__tiny__L64-S32__cpu__")
    assert ev.run_path(tmp_path, "baseline-fp32", str(a), src, cfg, device="cuda") != pa
    assert ev.run_path(tmp_path, "baseline-fp32", str(a), src, ev.EvalConfig(max_length=64, stride=32,
                                                                                  per_line=10)) != pa


def test_two_models_in_same_named_folders_keep_both_results(tmp_path, text_file):
    kw = dict(text_file=str(text_file), device="cpu", max_length=32, stride=32, max_tokens=200, per_line=0,
              skip_latency=True, skip_disk=True, quiet=True, results_dir=str(tmp_path / "r"))
    for seed in (0, 1):
        d = tiny_models.make_tiny_model(tmp_path / f"s{seed}" / "gpt2", arch="gpt2", seed=seed)
        ev.main(run=RunOptions(model=str(d), **kw))
    recs = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.json")]
    assert len(recs) == 2 and recs[0]["perplexity"]["ppl"] != recs[1]["perplexity"]["ppl"]
    assert recs[0]["model"]["sha256"] != recs[1]["model"]["sha256"]


def test_gguf_cache_is_keyed_by_content(tmp_path):
    a = tiny_models.make_tiny_model(tmp_path / "a" / "m", arch="gpt2", seed=0)
    b = tiny_models.make_tiny_model(tmp_path / "b" / "m", arch="llama", seed=0)
    assert bg.gguf_stem(str(a), a) != bg.gguf_stem(str(b), b)
    assert bg.gguf_stem(str(a), a).startswith("m-")


def test_an_interrupted_conversion_leaves_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "m-F32.gguf"
    with pytest.raises(KeyboardInterrupt):
        with bg.written_whole(out) as tmp:
            tmp.write_bytes(b"GGUF half a file")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with bg.written_whole(out) as tmp:
        tmp.write_bytes(b"GGUF whole")
    assert [p.name for p in tmp_path.iterdir()] == ["m-F32.gguf"] and out.read_bytes() == b"GGUF whole"


def test_quantize_to_a_partial_file_is_never_reused(tmp_path, monkeypatch):
    """A failed quantizer call leaves nothing that make_gguf_files() would take as done."""
    f32 = tmp_path / "m-F32.gguf"
    f32.write_bytes(b"GGUF")

    class FakeLlama:
        LLAMA_FTYPE_MOSTLY_Q8_0 = 7

        @staticmethod
        def llama_model_quantize_default_params():
            return type("P", (), {})()

        @staticmethod
        def llama_model_quantize(src, dst, params):
            Path(dst.decode()).write_bytes(b"GGUF partial")
            raise KeyboardInterrupt

    monkeypatch.setattr(bg, "require", lambda *a: FakeLlama)
    with pytest.raises(KeyboardInterrupt):
        bg.quantize(f32, tmp_path / "m-Q8_0.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-F32.gguf"]


def test_nan_never_reaches_a_results_file(tmp_path):
    path = tmp_path / "r.json"
    results.write_json_atomic(path, {"a": 1})
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            results.write_json_atomic(path, {"ppl": bad})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_per_line_with_no_scorable_line_is_null(gpt2_dir):
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    got = ev.per_line_perplexity(model, tok, "a\n\nb\n", n_lines=10, max_length=64, progress=False)
    assert got["n_lines"] == 0 and got["mean_of_line_ppl"] is None
    json.dumps(got, allow_nan=False)


def test_part1_folder_still_loads_with_load_quantized(world):
    model, spec = p1.load_quantized(world / "p1-saved")
    assert spec["bits"] == 8 and any(isinstance(m, p1.Int8Linear) for m in model.modules())


def test_wrong_schema_is_skipped_with_a_warning_not_a_traceback(tmp_path, results_dir, capsys):
    good = json.loads((results_dir / "a.json").read_text())
    bad = {"str_ppl.json": {**good, "perplexity": {**good["perplexity"], "ppl": "20.0"}},
           "null_mib.json": {**good, "memory": {"weights_mib": None}},
           "zero_base.json": {**good, "perplexity": {**good["perplexity"], "ppl": 0}},
           "list.json": [1, 2, 3],
           "bench_str.json": {**json.loads((results_dir / "bench.json").read_text()), "bench": {"table": "x"}}}
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for name, rec in bad.items():
        (results_dir / name).write_text(json.dumps(rec))
        (only_bad / name).write_text(json.dumps(rec))
    for name in bad:
        assert results.record_problem(bad[name]), name
    assert results.record_problem(good) is None
    pr.main(results=str(results_dir), out=str(tmp_path / "figs"))
    err = capsys.readouterr().err
    assert all(f"skipping {name}" in err for name in bad), err
    br.main(results=str(results_dir), out=str(tmp_path / "rep" / "r.pdf"), figures=str(tmp_path / "figs"))
    assert (tmp_path / "rep" / "r.pdf").read_bytes()[:5] == b"%PDF-"
    import importlib.util
    spec = importlib.util.spec_from_file_location("results_table", Path(ev.__file__).parent / "scripts" /
                                                  "results_table.py")
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    assert "| baseline-fp32 |" in rt.main(str(results_dir))
    with pytest.raises(ev.UserError, match="no results JSON"):
        results.load_results(only_bad)


def test_study_reruns_a_damaged_result_and_survives_a_damaged_ledger(tmp_path, capsys):
    kw = dict(smoke=True, steps="baseline", results_dir=str(tmp_path / "r"), quiet=True)
    assert len(run_study.main(**kw)) == 1
    folder = tmp_path / "r" / "smoke"
    out = next(folder.glob("baseline-fp32__*.json"))
    out.write_text('{"schema_version": 1, "meth')                    # damaged after the run
    assert len(run_study.main(**kw)) == 1                            # redone, not skipped
    assert json.loads(out.read_text())["method"]["name"] == "baseline-fp32"
    ledger = folder / ".study-ledger"
    ledger.write_text("{ not json")
    capsys.readouterr()
    assert len(run_study.main(**kw)) == 1
    err = capsys.readouterr().err
    assert "could not be read" in err and len(err.strip().splitlines()) == 1
    kept = list(folder.glob(".study-ledger.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{ not json"      # set aside, not deleted
    assert run_study.main(**kw) == []                                # and the new ledger works


def test_latency_too_long_fails_before_the_perplexity_pass(gpt2_dir, text_file, monkeypatch, cli_error):
    calls = []
    monkeypatch.setattr(ev, "perplexity", lambda *a, **k: calls.append(1))
    cli_error(ev, ["--model", str(gpt2_dir), "--text-file", str(text_file), "--prefill-tokens", "4096"])
    assert calls == []


def test_blocks_out_of_range_fail_before_the_weights_load(gpt2_dir, text_file, monkeypatch, cli_error):
    calls = []
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: calls.append(1))
    cli_error(p1, ["--model", str(gpt2_dir), "--text-file", str(text_file), "--mode", "selective",
                   "--blocks", "5"])
    assert calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_gpu_where_one_is_needed(gpt2_dir, text_file, cli_error):
    base = ["--model", str(gpt2_dir), "--text-file", str(text_file)]
    assert "no CUDA" in cli_error(ev, base + ["--device-map", "cuda"])
    assert "--device-map cuda:0 asked for" in cli_error(ev, base + ["--device-map", "cuda:0"])
    assert "no CUDA" in cli_error(ev, base + ["--device", "cuda:0"])
    from speed import fast_decode
    assert "needs CUDA" in cli_error(fast_decode, base)


def test_non_finite_loss_is_one_line(gpt2_dir, text_file, monkeypatch):
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    with torch.no_grad():
        model.transformer.wte.weight[:] = float("nan")
    ids = ev.tokenize(tok, "the model is a token of the layer")
    with pytest.raises(ev.UserError, match="not finite .*hold NaN or infinity$"):
        ev.perplexity(model, ids, 32, 32, progress=False)


def test_a_line_whose_perplexity_overflows_is_counted_not_a_traceback(gpt2_dir):
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)                       # tied: logits in the tens of thousands
    got = ev.per_line_perplexity(model, tok, "the model is a token of the layer\nscale zero point",
                                 n_lines=10, max_length=64, progress=False)
    assert got["n_lines_overflowing"] >= 1 and got["mean_of_line_ppl"] is None
    json.dumps(got, allow_nan=False)


def test_plots_and_report_alone_need_no_model_check(world, tmp_path, results_dir):
    """run_study --steps report reads results only: a model whose context is short is no reason to stop."""
    assert run_study.main(model=str(world / "tiny"), text_file=str(world / "text.txt"), steps="plots",
                          results_dir=str(results_dir), figures_dir=str(tmp_path / "f"), quiet=True) == []
    assert list((tmp_path / "f").glob("*.png"))



class NotATensor:
    """An object that a plain state dict never holds: torch.load(weights_only=True) refuses it."""


def test_a_bin_that_is_not_a_plain_state_dict_is_one_line(gpt2_dir, text_file, tmp_path, cli_error):
    from safetensors.torch import load_file
    folder = tmp_path / "pickled"
    shutil.copytree(gpt2_dir, folder)
    state = {}
    for f in folder.glob("*.safetensors"):
        state.update(load_file(f))
        f.unlink()
    state["extra"] = NotATensor()
    torch.save(state, folder / "pytorch_model.bin")
    err = cli_error(ev, ["--model", str(folder), "--text-file", str(text_file), "--device", "cpu",
                         "--skip-latency", "--per-line", "0", "--results-dir", str(tmp_path / "r")])
    assert "pytorch_model.bin is not a plain state dict" in err and "was not loaded" in err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*.json"))
