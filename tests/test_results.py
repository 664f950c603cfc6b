"""results.py, the one home of the results record: every writer stamps its kind, every main
returns Records that know their file, schema 1 files are still read, and a stand-in's random
weights are a field, not words in a label."""
import json
from pathlib import Path

import pytest
import torch

import evaluate as ev
import part1_quantize_scratch as p1
import plot_results as pr
import results
from study.config import RunOptions

RUN = dict(device="cpu", max_length=32, stride=32, max_tokens=300, per_line=0, skip_latency=True, quiet=True)


def test_every_main_returns_records_that_know_their_file(gpt2_dir, text_file, tmp_path):
    base = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path), **RUN))
    sens = p1.main(sensitivity=True,
                   run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path), **RUN))
    for rec, kind in ((base, "eval"), (sens, "sensitivity")):
        assert isinstance(rec, results.Record) and rec["kind"] == kind
        assert rec.path.parent == tmp_path and json.loads(rec.path.read_text()) == dict(rec)
        assert rec["schema_version"] == results.SCHEMA_VERSION == 3
        assert rec["method"]["identity"]["name"] == rec["method"]["name"].removesuffix("-sensitivity")
    loaded = {r["_file"]: r for r in results.load_results(tmp_path)}
    assert {results.kind_of(r) for r in loaded.values()} == {"eval", "sensitivity"}
    assert all(r.path == tmp_path / name for name, r in loaded.items())


def test_random_weights_is_a_field_and_readers_use_it(gpt2_dir, text_file, tmp_path):
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path),
                                 random_weights=True, stand_in="tiny (any words at all)", **RUN))
    assert rec["model"]["random_weights"] is True
    assert not pr.perplexity_means_something(rec)
    plain = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path / "b"),
                                   stand_in="its perplexity means nothing, says the label", **RUN))
    assert plain["model"]["random_weights"] is False and pr.perplexity_means_something(plain)


@pytest.mark.parametrize("old,kind", [
    ({"perplexity": {}}, "eval"), ({"perplexity": {}, "sensitivity": {}}, "sensitivity"), ({"bench": {}}, "bench"),
    ({"compare": {}}, "compare"), ({"gguf_inspection": {}}, "gguf-inspect"), ({"push": {}}, "gguf-push")])
def test_schema_1_files_are_skipped_and_upgraded_by_the_script(old, kind, tmp_path):
    """Readers read fields only: an old file is skipped with a warning that names the upgrade,
    which infers, once, what schema 1 did not say (its kind, and random weights from its label)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import upgrade_results
    assert results.kind_of({"schema_version": 1, **old}) is None
    assert "upgrade_results.py" in results.record_problem({"schema_version": 1, "method": {}, **old})
    label = "gpt2-random ...; its perplexity means nothing"
    assert not results.random_weights({"model": {"stand_in": label}})
    new = upgrade_results.schema_2({"schema_version": 1, "model": {"id": "m", "stand_in": label}, **old})
    assert new["kind"] == kind and results.random_weights(new) and new["model"]["stand_in"] == label
    plain = upgrade_results.schema_2({"schema_version": 1, "model": {"stand_in": "smollm2-135m for gpt2"}, **old})
    assert not results.random_weights(plain)


def test_upgrade_brings_a_schema_1_eval_file_to_a_record_the_readers_take(tmp_path):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import upgrade_results
    from conftest import record
    today = record("baseline-fp32", 20.0, 100.0)
    old = {k: v for k, v in today.items() if k not in ("kind", "_file")}
    old["schema_version"] = 1
    old["method"] = {"name": "baseline-fp32", "settings": {"dtype": "float32", "quantized": False}}
    old["model"] = {k: v for k, v in old["model"].items() if k != "random_weights"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "notes.json").write_text("[1, 2]")                     # not a results file: left alone
    assert upgrade_results.main(folder=str(tmp_path)) == [tmp_path / "old.json"]
    [rec] = results.load_results(tmp_path)
    assert rec["kind"] == "eval" and rec["schema_version"] == results.SCHEMA_VERSION
    assert rec["method"]["identity"]["name"] == "baseline-fp32" and rec["model"]["random_weights"] is False
    assert (tmp_path / "notes.json").read_text() == "[1, 2]"
    assert upgrade_results.main(folder=str(tmp_path)) == []           # run again: nothing to do


def test_the_committed_results_read_back_with_their_kinds():
    recs = results.load_results(Path(__file__).resolve().parents[1] / "results")
    kinds = {results.kind_of(r) for r in recs}
    assert kinds >= {"eval", "bench", "sensitivity", "compare", "gguf-inspect"}
    assert all(results.record_problem(r) is None for r in recs)


def test_new_record_refuses_an_unknown_kind_and_config_is_never_mutated():
    with pytest.raises(ValueError, match="unknown record kind"):
        results.new_record("evaluation", "m", {}, {"id": "x"}, torch.device("cpu"))
    cfg = ev.EvalConfig()
    resolved = cfg.resolve(128)
    assert (cfg.max_length, cfg.stride) == (None, None) and (resolved.max_length, resolved.stride) == (128, 128)
    with pytest.raises(AttributeError):                  # frozen: a caller's config cannot be changed
        cfg.max_length = 5


def test_defaults_are_declared_once():
    """Every parser that takes an evaluation flag reads its default from ev.DEFAULTS."""
    import part2_bnb_nf4 as p2
    from speed import fast_decode
    for module in (ev, p1, p2, fast_decode):
        args = module.build_parser().parse_args([])
        for field in ("prefill_tokens", "prompt_tokens", "new_tokens", "repeats", "warmup"):
            assert getattr(args, field) == getattr(ev.DEFAULTS, field), (module.__name__, field)


def test_saved_spec_stores_lists_and_loads_them_back(gpt2_dir, tmp_path):
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    spec = p1.quantize_model(model, mode="selective", blocks=[1], components=["qkv", "ffn_down"])
    p1.save_quantized(model, tmp_path / "q", spec, tok)
    _, loaded = p1.load_quantized(tmp_path / "q")
    assert loaded["blocks"] == [1] and loaded["components"] == ["qkv", "ffn_down"]


def test_no_machine_path_in_a_results_file(gpt2_dir, text_file, tmp_path, monkeypatch):
    """model.id is the folder's name (its content: model.sha256), dataset.id the file's name
    (its content: dataset.sha256), and the recorded command has no folders either."""
    monkeypatch.setattr("sys.argv", ["evaluate.py", "--model", str(gpt2_dir), f"--text-file={text_file}",
                                     "--results-dir", str(tmp_path / "r")])
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path / "r"), **RUN))
    text = rec.path.read_text()
    for folder in (str(gpt2_dir.parent), str(text_file.parent), str(tmp_path), "/tmp/", "/root"):
        assert folder not in text, folder
    saved = json.loads(text)
    assert saved["model"]["id"] == gpt2_dir.name and saved["model"]["sha256"] == results.model_identity(
        str(gpt2_dir))["sha256"]
    assert saved["dataset"]["id"] == f"file:{text_file.name}" and len(saved["dataset"]["sha256"]) == 64
    assert saved["command"] == f"evaluate.py --model {gpt2_dir.name} --text-file={text_file.name} --results-dir r"


def test_peak_memory_is_the_perplexity_pass_alone(gpt2_dir, text_file, tmp_path):
    """memory.peak_bytes covers the windowed pass at batch 1 only; the per-line pass (batches of
    lines) and the timings keep their own, so a column of peaks compares like with like."""
    rec = ev.main(run=RunOptions(model=str(gpt2_dir), text_file=str(text_file), results_dir=str(tmp_path),
                                 device="cpu", max_length=32, stride=32, max_tokens=300, per_line=40,
                                 prefill_tokens=32, prompt_tokens=4, new_tokens=4, repeats=2, warmup=1, quiet=True))
    assert rec["memory"]["peak_scope"].startswith("the windowed perplexity pass, batch 1")
    assert isinstance(rec["per_line_perplexity"]["peak_bytes"], int)
    assert isinstance(rec["latency"]["peak_bytes"], int)


def test_a_rerun_is_compared_with_its_timings_left_out(tmp_path, capsys):
    """scripts/compare_results.py: timings, peaks, the time and the machine may move; the
    result may not (to the bit, or within --rtol)."""
    import copy
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_results
    from conftest import record, timing
    assert results.is_volatile(("latency", "prefill", "median"))
    assert results.is_volatile(("bench", "table", "fp16", "fused_path", "decode_ms_per_token", "p90"))
    assert results.is_volatile(("bench", "table", "fp16", "decode_ratio"))
    assert results.is_volatile(("memory", "peak_bytes")) and results.is_volatile(("timestamp",))
    assert not results.is_volatile(("perplexity", "ppl")) and not results.is_volatile(("memory", "weights_bytes"))
    for path in (("command",), ("bench", "int8_targets", "vs_fp32"), ("anatomy", "steps", "fp16", "vs_baseline"),
                 ("anatomy", "steps", "fp16", "links", "0", "us"), ("bench", "table", "fp16", "fast_path", "x_floor")):
        assert results.is_volatile(path), path
    assert not results.is_volatile(("bench", "table", "fp16", "leading_tokens_equal"))
    assert not results.is_volatile(("anatomy", "steps", "fp16", "links", "0", "role"))
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    rec = record("baseline-fp32", 20.0, 100.0, latency=timing(12.0, 5.0))
    rec["memory"]["peak_bytes"] = 1000
    (old / "a.json").write_text(json.dumps(rec))
    moved = copy.deepcopy(rec)
    moved["latency"] = timing(13.0, 4.0)
    moved["memory"]["peak_bytes"] = 1200
    moved["timestamp"] = "2027-01-01T00:00:00+00:00"
    moved["environment"]["device_name"] = "cpu: another"
    moved["command"] = "evaluate.py --results-dir again"                      # a rerun sent elsewhere
    (new / "a.json").write_text(json.dumps(moved))
    assert compare_results.main(old=str(old), new=str(new)) == 0
    moved["perplexity"]["ppl"] = 20.0 * (1 + 1e-9)
    (new / "a.json").write_text(json.dumps(moved))
    assert compare_results.main(old=str(old), new=str(new)) == 1
    assert "perplexity.ppl: 20.0 -> 20.00000002" in capsys.readouterr().out
    assert compare_results.main(old=str(old), new=str(new), rtol=1e-6) == 0
    moved["memory"]["weights_bytes"] = rec["memory"]["weights_bytes"] = 10**8
    (old / "a.json").write_text(json.dumps(rec))
    moved["memory"]["weights_bytes"] += 1                                   # a count is never within rtol
    (new / "a.json").write_text(json.dumps(moved))
    assert compare_results.main(old=str(old), new=str(new), rtol=1e-6) == 1
    del moved["memory"]["weights_bytes"]
    moved["divergence"] = {"kld_mean": 0.5}                                # a measure added since: counted apart
    (new / "a.json").write_text(json.dumps(moved))
    assert compare_results.main(old=str(old), new=str(new), rtol=1e-6) == 1   # but a field gone is a difference
    moved["memory"]["weights_bytes"] = rec["memory"]["weights_bytes"]
    (new / "a.json").write_text(json.dumps(moved))
    capsys.readouterr()
    assert compare_results.main(old=str(old), new=str(new), rtol=1e-6) == 0
    assert "a.json: same, plus 1 fields it lacks (divergence)" in capsys.readouterr().out
    (new / "b.json").write_text(json.dumps(rec))                          # not in the committed folder
    assert compare_results.main(old=str(old), new=str(new), rtol=1e-2) == 1        # b.json
    assert "b.json: not in" in capsys.readouterr().out
