"""run_study.py: skips what is done, redoes it with --force, rejects unknown steps, goes on past a failed run."""
import json

import pytest

import run_study


def test_study_skips_finished_runs_and_force_redoes_them(tmp_path, capsys):
    kw = dict(smoke=True, steps="baseline,report", results_dir=str(tmp_path / "r"),
              figures_dir=str(tmp_path / "f"), report=str(tmp_path / "rep" / "report.pdf"), quiet=True)
    first = run_study.main(**kw)
    assert len(first) == 1 and first[0]["method"]["name"] == "baseline-fp32"
    assert any((tmp_path / "r" / "smoke").glob("baseline-fp32__*.json"))
    assert (tmp_path / "rep" / "smoke-report.pdf").read_bytes()[:5] == b"%PDF-"   # the report step ran
    capsys.readouterr()
    assert run_study.main(**kw) == []                                   # nothing redone
    assert "skipped" in capsys.readouterr().out
    assert len(run_study.main(**{**kw, "force": True})) == 1


def test_changed_settings_are_not_skipped(tmp_path):
    kw = dict(smoke=True, steps="baseline", results_dir=str(tmp_path / "r"), quiet=True)
    run_study.main(**kw)
    assert len(run_study.main(**{**kw, "max_tokens": 500})) == 1


def test_unknown_step_is_one_clear_line(cli_error):
    assert "unknown step 'part9'" in cli_error(run_study, ["--smoke", "--steps", "baseline,part9"])


def test_a_failed_run_is_recorded_and_the_rest_goes_on(tmp_path, monkeypatch, capsys):
    """One run fails: the others and the report still run, the failure is one line in the
    ledger and in the summary, the study ends with a non-zero exit; a rerun retries only it."""
    import evaluate
    import part1_quantize_scratch as p1
    real = p1.main

    def flaky(*, run=evaluate.RUN, **kw):            # Part 1's own flags, and the shared ones in run
        if kw.get("scheme") == "per_tensor":
            raise evaluate.UserError("disk full (simulated)")
        return real(run=run, **kw)
    monkeypatch.setattr(p1, "main", flaky)
    kw = dict(smoke=True, steps="baseline,part1,report", results_dir=str(tmp_path / "r"),
              figures_dir=str(tmp_path / "f"), report=str(tmp_path / "rep" / "report.pdf"), quiet=True)
    with pytest.raises(run_study.StudyFailed, match="1 of 9 steps failed .*INT8 whole, per-tensor: disk full"):
        run_study.main(**kw)
    assert (tmp_path / "rep" / "smoke-report.pdf").read_bytes()[:5] == b"%PDF-"
    ledger = json.loads((tmp_path / "r" / "smoke" / ".study-ledger").read_text())
    assert ledger["part1:INT8 whole, per-tensor"]["failed"] == "disk full (simulated)"
    assert len(list((tmp_path / "r" / "smoke").glob("*.json"))) == 7
    assert "FAILED: disk full (simulated)" in capsys.readouterr().err
    monkeypatch.setattr(p1, "main", real)
    redone = run_study.main(**kw)                                          # only the failed run again
    assert [r["method"]["name"] for r in redone] == ["scratch-int8-per_tensor"]


def test_cli_exit_code_says_a_step_failed(tmp_path, monkeypatch, capsys):
    import evaluate
    monkeypatch.setattr(evaluate, "main", lambda **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(SystemExit) as e:
        evaluate.run_cli(run_study.main, run_study.build_parser(),
                         ["--smoke", "--steps", "baseline", "--results-dir", str(tmp_path), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("run_study.py: error: 1 of 1 steps failed (first: baseline fp32: RuntimeError: boom)")


def test_random_weights_reaches_every_run(tmp_path):
    [rec] = run_study.main(smoke=True, steps="baseline", results_dir=str(tmp_path), random_weights=True, quiet=True)
    assert rec["model"]["random_weights"] is True
    assert json.loads(rec.path.read_text())["model"]["random_weights"] is True
