"""Every script's main() has an explicit signature: its keywords are its CLI's flags, with the
same defaults, so a caller and the command line cannot disagree."""
import importlib
import inspect

import pytest

SCRIPTS = ("evaluate", "part1_quantize_scratch", "part2_bnb_nf4", "bonus_gguf", "speed.fast_decode", "run_study",
           "plot_results", "report.build_report")


@pytest.mark.parametrize("name", SCRIPTS)
def test_main_takes_exactly_the_flags_with_their_defaults(name):
    module = importlib.import_module(name)
    params = inspect.signature(module.main).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), "main(**kwargs) hides what it takes"
    flags = vars(module.build_parser().parse_args([]))
    assert set(params) == set(flags)
    assert {k: p.default for k, p in params.items()} == flags
