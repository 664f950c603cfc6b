"""run_study.py: skips what is done, redoes it with --force, rejects unknown steps."""

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
