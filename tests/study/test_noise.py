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


# ---------------------------------------------------------------- across models, paired by bytes

def brec(sums, sizes, sha="t"):
    return {"dataset": {"sha256": sha},
            "perplexity": {"windows": {"nll_sum": list(sums), "n_scored": [1] * len(sums), "n_bytes": list(sizes)}}}


def test_two_models_on_the_same_text_pair_by_where_their_windows_lie():
    """a's windows of 100 bytes; b's of 50, 150, 100, 100: each of b's goes to the group of a that
    holds its middle byte, and the difference is b's bits per byte less a's, on their common bytes."""
    ln2 = math.log(2)
    a = brec([100 * ln2, 100 * ln2, 100 * ln2, 100 * ln2], [100] * 4)          # 1 bit per byte
    b = brec([25 * ln2, 75 * ln2, 100 * ln2, 50 * ln2], [50, 150, 100, 100])   # 0.5, 0.5, 1.0, 0.5
    na, sa, nb, sb = noise.paired_by_bytes(a, b, per_group=1)
    assert sa == (100, 100, 100, 100)
    assert sb == (50, 150, 100, 100)         # middles at 25, 125, 250, 350
    r = noise.bpb_band(a, b, per_group=1)
    assert math.isclose(r["diff"], (250 / 400) - 1.0, rel_tol=1e-12)
    assert r["band"][1] < 0 and r["bytes"] == 400


def test_a_shorter_run_bounds_the_text_compared_and_other_texts_do_not_pair():
    ln2 = math.log(2)
    a = brec([100 * ln2] * 4, [100] * 4)
    b = brec([100 * ln2] * 2, [100] * 2)                       # scored only the first 200 bytes
    r = noise.bpb_band(a, b, per_group=1)
    assert r["bytes"] == 200 and r["groups"] == 2 and r["diff"] == 0.0 and r["band"] == (0.0, 0.0)
    assert noise.bpb_band(a, brec([1.0] * 4, [100] * 4, sha="other")) is None
    assert noise.bpb_band(a, rec([1.0, 2.0], [1, 1])) is None  # windows without their bytes


def test_windows_of_one_model_group_by_four():
    ln2 = math.log(2)
    a = brec([100 * ln2] * 8, [100] * 8)
    b = brec([50 * ln2] * 8, [100] * 8)
    na, sa, nb, sb = noise.paired_by_bytes(a, b)
    assert sa == sb == (400, 400)
    assert math.isclose(noise.bpb_band(a, b)["diff"], -0.5, rel_tol=1e-12)
