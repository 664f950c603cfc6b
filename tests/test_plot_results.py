"""plot_results.py on a fixture set of results files, one of them malformed."""
import json

import pytest

import evaluate as ev
import plot_results as pr


def record(method, ppl, mib, model="m-small", device="cpu: test", stand_in=None, **extra):
    return {"schema_version": 1, "method": {"name": method, "settings": {"scheme": "per_channel"}},
            "model": {"id": f"/x/{model}", "stand_in": stand_in},
            "dataset": {"id": "file:/t/wiki.test.raw", "sha256": "0" * 64},
            "perplexity": {"ppl": ppl, "max_length": 64, "stride": 32, "n_tokens_scored": 999},
            "memory": {"weights_mib": mib}, "environment": {"device_name": device}, **extra}


def bench_table(names):
    stat = {"median": 2.0, "p10": 1.9, "p90": 2.1}
    return {n: {"prefill_ms": stat, "decode_ms_per_token": stat, "prefill_ratio": 1.0 + i / 10,
                "decode_ratio": 1.0 - i / 10, "weights_mib": 10.0 / (i + 1)} for i, n in enumerate(names)}


@pytest.fixture()
def results_dir(tmp_path, gpt2_dir):
    import part2_bnb_nf4 as p2
    d = tmp_path / "results"
    d.mkdir()
    files = {
        "a.json": record("baseline-fp32", 20.0, 100.0),
        "b.json": record("scratch-int8-per_channel", 20.1, 26.0),
        "c.json": record("bnb-nf4", 25.0, 14.0),
        "other.json": record("baseline-fp32", 9.0, 5.0, model="lonely"),          # a group of one: no figure
        "bench.json": {"schema_version": 1, "method": {"name": "bnb-bench"}, "model": {"id": "g", "stand_in": "x"},
                       "dataset": {"id": "t"}, "environment": {"device_name": "NVIDIA H100"},
                       "bench": {"table": bench_table(["fp16", "bnb-nf4"]), "baseline": "fp16", "repeats": 3,
                                 "prefill_tokens": 512, "new_tokens": 128}},
        "sens.json": record("scratch-int8-per_channel-sensitivity", 20.0, 100.0, sensitivity={
            "baseline_ppl": 20.0, "block": [{"block": "0", "delta_pct": 0.1}, {"block": "1", "delta_pct": -0.02}],
            "component": [{"component": "qkv", "delta_pct": 0.2}]}),
        "cmp.json": {"schema_version": 1, "method": {"name": "nf4-vs-linear-4bit"}, "model": {"id": "tiny"},
                     "environment": {"device_name": "cpu"}},
    }
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    files["cmp.json"]["compare"] = p2.compare_4bit(model)
    for name, rec in files.items():
        (d / name).write_text(json.dumps(rec))
    (d / "broken.json").write_text('{"schema_version": 1, "method": ')                # cut off mid-write
    return d


def test_fixture_results_make_the_expected_figures(results_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    made = pr.main(results=str(results_dir), out=str(out))
    names = sorted(p.name for p in made)
    group = "m-small_wiki.test.raw_L64-S32-N999_cpu"
    assert names == sorted([f"memory_{group}.png", f"perplexity_{group}.png", f"pareto_{group}.png",
                            "latency_bnb-bench_g_cuda.png", "sensitivity_m-small.png",
                            "nf4_levels_tiny.png", "reconstruction_error_tiny.png"])
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in made)
    assert "broken.json" in capsys.readouterr().err                              # skipped, with a warning


def test_random_weights_stand_in_gets_no_perplexity_figure(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    note = "gpt2-random ... its perplexity means nothing"
    for i, (m, mib) in enumerate([("baseline-fp32", 400.0), ("scratch-int8-per_channel", 100.0)]):
        (d / f"{i}.json").write_text(json.dumps(record(m, 5e4, mib, model="gpt2-random", stand_in=note)))
    names = [p.name for p in pr.main(results=str(d), out=str(tmp_path / "f"))]
    assert len(names) == 1 and names[0].startswith("memory_gpt2-random")


def test_missing_results_folder_is_one_clear_line(cli_error, tmp_path):
    assert "does not exist" in cli_error(pr, ["--results", str(tmp_path / "none")])
