"""study/noise.py: the paired bootstrap over windows that says when two perplexities tie."""
import math

from study import noise


def rec(sums, counts):
    return {"perplexity": {"windows": {"nll_sum": list(sums), "n_scored": list(counts)}}}


def test_a_run_against_itself_is_a_tie_of_zero_width():
    a = rec([30.0, 41.0, 25.5, 33.0], [10, 12, 9, 11])
    assert noise.change_band(a, a) == (0.0, 0.0)
    assert noise.ranked(a, a)["tie"]


def test_a_uniform_shift_per_token_is_its_exact_change():
    """Every token 0.01 nats worse: every resample's change is exp(0.01) - 1, so the band is
    that point, outside zero: ranked, not a tie."""
    counts = [10, 12, 9, 11, 8]
    a = rec([3.0 * c for c in counts], counts)
    b = rec([3.01 * c for c in counts], counts)
    lo, hi = noise.change_band(a, b)
    assert math.isclose(lo, 100 * (math.exp(0.01) - 1), rel_tol=1e-9) and math.isclose(hi, lo, rel_tol=1e-9)
    assert not noise.ranked(a, b)["tie"]


def test_the_band_brackets_the_change_and_holds_zero_when_windows_disagree():
    """One window better, one worse by as much: the whole-text change is 0, and resampling the
    windows spreads it to both sides."""
    counts = [10] * 6
    a = rec([30.0] * 6, counts)
    b = rec([31.0, 29.0, 31.0, 29.0, 31.0, 29.0], counts)
    lo, hi = noise.change_band(a, b)
    assert lo < 0 < hi and noise.ranked(a, b)["tie"]


def test_no_band_without_windows_or_on_other_windows():
    a = rec([30.0, 40.0], [10, 12])
    assert noise.change_band(a, {"perplexity": {"ppl": 3.0}}) is None          # written before windows
    assert noise.change_band(a, rec([30.0, 40.0], [10, 13])) is None           # other tokens
    assert noise.ranked({"perplexity": {}}, a) is None
