"""plot_results.py on a fixture set of results files (conftest.results_dir), one of them malformed."""
import json

from conftest import record

import plot_results as pr


def test_fixture_results_make_the_expected_figures(results_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    made = pr.main(results=str(results_dir), out=str(out))
    names = sorted(p.name for p in made)
    group = "m-small_wiki.test.raw_L64-S32-N999_cpu"
    assert names == sorted([f"memory_{group}.png", f"perplexity_{group}.png", f"pareto_{group}.png",
                            "latency_bnb-bench_g_cuda.png", "latency_gpu-decode-bench_g2_cuda.png",
                            "fast_path_g2_cuda.png", "sensitivity_m-small.png",
                            "nf4_levels_tiny.png", "reconstruction_error_tiny.png"])
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in made)
    assert "broken.json" in capsys.readouterr().err                              # skipped, with a warning


def test_random_weights_stand_in_gets_no_perplexity_figure(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    for i, (m, mib) in enumerate([("baseline-fp32", 400.0), ("scratch-int8-per_channel", 100.0)]):
        rec = record(m, 5e4, mib, model="gpt2-random", stand_in="gpt2-random (GPT-2 shapes)")
        rec["model"]["random_weights"] = True                        # the field, not the label's words
        (d / f"{i}.json").write_text(json.dumps(rec))
    names = [p.name for p in pr.main(results=str(d), out=str(tmp_path / "f"))]
    assert len(names) == 1 and names[0].startswith("memory_gpt2-random")


def test_missing_results_folder_is_one_clear_line(cli_error, tmp_path):
    assert "does not exist" in cli_error(pr, ["--results", str(tmp_path / "none")])


def test_results_table_prints_the_fast_path_of_a_gpu_bench(results_dir, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "results_table.py"
    spec = importlib.util.spec_from_file_location("results_table", path)
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    text = rt.main(str(results_dir))
    assert "| scratch-int4-fast | 1.50 | 1.00 | 0.600 | 0.75 | 12.0 | 170 | 77/77 |" in text   # 0.6/0.8, 0.6/0.05
    assert "| bnb-nf4 | 2.00 | 1.10 | 2.000 | 0.90 | 5.0 |" in text                          # a bench without one
    assert text.count("Fast path (") == 1
