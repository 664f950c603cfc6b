"""Every script's main() has an explicit signature: its keywords are its CLI's flags, with the
same defaults, so a caller and the command line cannot disagree."""
import dataclasses
import importlib
import inspect

import pytest

from study import cli
from study.config import RunOptions

SCRIPTS = ("evaluate", "part1_quantize_scratch", "part2_bnb_nf4", "bonus_gguf", "explore_calibrated",
           "speed.fast_decode", "run_study", "plot_results", "report.build_report")
# The scripts that measure one run take the flags they share as run=RunOptions(...)
SHARED = ("evaluate", "part1_quantize_scratch", "part2_bnb_nf4", "bonus_gguf", "explore_calibrated")


@pytest.mark.parametrize("name", SCRIPTS)
def test_main_takes_exactly_the_flags_with_their_defaults(name):
    module = importlib.import_module(name)
    params = inspect.signature(module.main).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), "main(**kwargs) hides what it takes"
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values())
    flags = vars(module.build_parser().parse_args([]))
    own = {k: p.default for k, p in params.items() if k != "run"}
    if name in SHARED:
        run = params["run"].default
        assert isinstance(run, RunOptions) and run == RunOptions()
        shared = dataclasses.asdict(run)
        assert not set(own) & set(shared), "a flag is both the script's own and a shared one"
        own = {**own, **shared}
    else:
        assert "run" not in params
    assert own == flags


def test_the_shared_flags_are_exactly_run_options():
    """evaluate.py's flags are the shared ones alone: every field of RunOptions is a flag with
    that default, and every flag a field."""
    import evaluate
    assert vars(evaluate.build_parser().parse_args([])) == dataclasses.asdict(RunOptions())


def test_call_spreads_a_command_lines_keywords():
    """cli.call() gives a main() its own flags as keywords and the shared ones as one RunOptions,
    as the command line and the run plans do."""
    seen, RUN = {}, RunOptions()

    def main(*, mode: str = "x", run: RunOptions = RUN):
        seen.update(mode=mode, run=run)

    cli.call(main, {"mode": "y", "model": "m", "max_tokens": 7, "quiet": True})
    assert seen == {"mode": "y", "run": RunOptions(model="m", max_tokens=7, quiet=True)}
    with pytest.raises(TypeError):
        cli.call(main, {"mode": "y", "no_such_flag": 1})
    assert cli.call(lambda *, a=1: a, {"a": 2}) == 2                  # no run=: the keywords as they are
