"""scripts/add_windows.py: a rerun lends its per-window NLL only to the same measurement."""
import json
import sys
from pathlib import Path

import pytest
from conftest import record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import add_windows  # noqa: E402


def pair(tmp_path, name="a.json", nll=(30.0, 12.0), counts=(10, 5)):
    old = record("baseline-fp32", 20.0, 100.0)
    old["perplexity"].update(mean_nll=sum(nll) / sum(counts), n_tokens_scored=sum(counts), n_windows=len(nll))
    new = json.loads(json.dumps(old))
    new["perplexity"]["windows"] = {"nll_sum": list(nll), "n_scored": list(counts)}
    new["latency"] = {"differs": True}                      # a rerun's timings are not taken
    (tmp_path / "old").mkdir(exist_ok=True)
    (tmp_path / "new").mkdir(exist_ok=True)
    (tmp_path / "old" / name).write_text(json.dumps(old))
    (tmp_path / "new" / name).write_text(json.dumps(new))
    return old


def test_the_windows_of_an_equal_rerun_are_added_and_nothing_else(tmp_path):
    old = pair(tmp_path)
    assert add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old")) == 1
    got = json.loads((tmp_path / "old" / "a.json").read_text())
    assert got["perplexity"]["windows"] == {"nll_sum": [30.0, 12.0], "n_scored": [10, 5]}
    assert "add_windows.py" in got["perplexity"]["windows_added_by"]
    del got["perplexity"]["windows"], got["perplexity"]["windows_added_by"]
    assert got == old                                       # its own timings and every other field kept
    assert add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old")) == 0   # once


def test_a_rerun_with_another_total_lends_nothing(tmp_path, capsys):
    pair(tmp_path)
    new = json.loads((tmp_path / "new" / "a.json").read_text())
    new["perplexity"]["mean_nll"] += 1e-9                   # not the same measurement, by a hair
    (tmp_path / "new" / "a.json").write_text(json.dumps(new))
    with pytest.raises(SystemExit) as e:
        add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old"))
    assert e.value.code == 1 and "perplexity.mean_nll differs" in capsys.readouterr().err
    assert "windows" not in json.loads((tmp_path / "old" / "a.json").read_text())["perplexity"]


def test_a_missing_rerun_folder_is_one_line(cli_error, tmp_path):
    assert "not a folder" in cli_error(add_windows, [str(tmp_path / "none")])


def test_an_equal_rerun_lends_the_measures_added_since_and_the_models_own_count(tmp_path):
    """The divergence and bits per weight a record lacks come from the rerun, each saying so; the
    parameter count becomes the model's own only where the rerun's torch count is the record's."""
    old = pair(tmp_path)
    old["model"] = {**old.get("model", {}), "n_params": 35136}
    new = json.loads((tmp_path / "new" / "a.json").read_text())
    new["model"] = {**old["model"], "n_params": 134515008, "n_params_torch": 35136}
    new["divergence"] = {"kld_mean": 0.004}
    new["bits_per_weight"] = {"model": {"bits_per_weight": 8.1}}
    new["environment"] = {"device_name": "NVIDIA H100 80GB HBM3"}
    (tmp_path / "old" / "a.json").write_text(json.dumps(old))
    (tmp_path / "new" / "a.json").write_text(json.dumps(new))
    assert add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old")) == 1
    got = json.loads((tmp_path / "old" / "a.json").read_text())
    assert got["divergence"]["kld_mean"] == 0.004 and "H100" in got["divergence"]["added_by"]
    assert got["bits_per_weight"]["model"] == {"bits_per_weight": 8.1}
    assert (got["model"]["n_params"], got["model"]["n_params_torch"]) == (134515008, 35136)
    assert got.get("latency") == old.get("latency") and got.get("environment") == old.get("environment")
    new["model"]["n_params_torch"] = 99                         # another count: not the same model state
    (tmp_path / "new" / "a.json").write_text(json.dumps(new))
    (tmp_path / "old" / "a.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit):
        add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old"))


def test_a_rerun_a_rounding_apart_lends_only_within_the_tolerance_and_says_so(tmp_path):
    """--rel-tol: a mean NLL 1e-8 apart (relative) lends at 1e-7, and the record says by how much;
    the same pair at the default (exact) lends nothing. A rerun whose file name differs in its
    settings hash alone finds its record."""
    pair(tmp_path, name="m__x__cpu__aaaa1111.json")
    rerun = tmp_path / "new" / "m__x__cpu__aaaa1111.json"
    new = json.loads(rerun.read_text())
    new["perplexity"]["mean_nll"] *= 1 + 1e-8
    s = new["perplexity"]["mean_nll"] * sum(new["perplexity"]["windows"]["n_scored"])
    new["perplexity"]["windows"]["nll_sum"] = [s - 12.0, 12.0]
    rerun.unlink()
    (tmp_path / "new" / "m__x__cpu__bbbb2222.json").write_text(json.dumps(new))
    with pytest.raises(SystemExit):
        add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old"))
    assert add_windows.main(rerun=str(tmp_path / "new"), results_dir=str(tmp_path / "old"), rel_tol=1e-7) == 1
    got = json.loads((tmp_path / "old" / "m__x__cpu__aaaa1111.json").read_text())
    assert "1.0e-08 (relative)" in got["perplexity"]["windows_added_by"]


def test_other_model_files_lend_only_with_the_flag_and_an_equal_total(tmp_path, capsys):
    """Another build of the stand-in (its folder hashes differently): refused by default; with
    --other-model-files lent where the totals are equal to the last bit, naming both hashes; a
    total a hair apart is refused even under a tolerance."""
    old = pair(tmp_path)
    old["model"] = {**old.get("model", {}), "sha256": "a" * 64}
    new = json.loads((tmp_path / "new" / "a.json").read_text())
    new["model"] = {**old["model"], "sha256": "b" * 64}
    (tmp_path / "old" / "a.json").write_text(json.dumps(old))
    (tmp_path / "new" / "a.json").write_text(json.dumps(new))
    args = {"rerun": str(tmp_path / "new"), "results_dir": str(tmp_path / "old")}
    with pytest.raises(SystemExit):
        add_windows.main(**args)
    assert "model.sha256 differs" in capsys.readouterr().err
    new["perplexity"]["mean_nll"] *= 1 + 1e-12
    (tmp_path / "new" / "a.json").write_text(json.dumps(new))
    with pytest.raises(SystemExit):
        add_windows.main(**args, other_model_files=True, rel_tol=1e-7)
    assert "only an equal total lends" in capsys.readouterr().err
    new["perplexity"]["mean_nll"] = old["perplexity"]["mean_nll"]
    (tmp_path / "new" / "a.json").write_text(json.dumps(new))
    assert add_windows.main(**args, other_model_files=True) == 1
    got = json.loads((tmp_path / "old" / "a.json").read_text())
    assert got["model"]["sha256"] == "a" * 64                  # the record keeps its own identity
    assert "aaaaaaaaaaaa… here, bbbbbbbbbbbb… in the rerun" in got["perplexity"]["windows_added_by"]
