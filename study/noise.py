"""How far apart two perplexities must be before the study ranks them: a paired bootstrap over
the evaluation windows. No torch: the report and the tables import it.

Two runs of one group score the same tokens in the same windows, and each record keeps every
window's summed NLL and token count (perplexity.windows). Resampling the windows with
replacement, the same draw for both runs, gives the spread of the perplexity change that comes
from which text was scored alone; a change whose 95% band holds zero is a tie.
"""
from __future__ import annotations

import functools
import math
import random

DRAWS = 2000           # bootstrap resamples
LEVEL = 0.95           # the band's coverage
SEED = 0               # the same draws for every pair, so a report is reproducible


def windows_of(rec: dict) -> tuple[list[float], list[int]] | None:
    """(NLL sums, token counts) per window, or None for a record written before they were kept."""
    w = (rec.get("perplexity") or {}).get("windows")
    if not w or len(w.get("nll_sum", [])) != len(w.get("n_scored", [])):
        return None
    return w["nll_sum"], w["n_scored"]


def change_band(base: dict, other: dict, draws: int = DRAWS, level: float = LEVEL,
                seed: int = SEED) -> tuple[float, float] | None:
    """The 95% band, in percent, of other's perplexity change against base's, from a paired
    bootstrap over their common windows; None where a record lacks its windows or the two were
    not scored on the same windows (token counts differ)."""
    a, b = windows_of(base), windows_of(other)
    if a is None or b is None or a[1] != b[1] or not a[1]:
        return None
    return _band(tuple(a[0]), tuple(b[0]), tuple(a[1]), draws, level, seed)


@functools.lru_cache(maxsize=1024)
def _band(na: tuple, nb: tuple, counts: tuple, draws: int, level: float, seed: int) -> tuple[float, float]:
    """change_band's bootstrap, keyed by the windows themselves: a report asks for the same pair in
    several places and in every layout pass, and the seeded draws give the same band each time."""
    rng, n, changes = random.Random(seed), len(counts), []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        tokens = sum(counts[i] for i in pick)
        changes.append(100 * (math.exp((sum(nb[i] for i in pick) - sum(na[i] for i in pick)) / tokens) - 1))
    changes.sort()
    tail = (1 - level) / 2
    return changes[int(tail * (draws - 1))], changes[int(math.ceil((1 - tail) * (draws - 1)))]


def ranked(a: dict, b: dict) -> dict | None:
    """b against a on the same windows: the band of b's perplexity change against a's (percent),
    and whether it holds zero (a tie: the text must not rank them). None without windows."""
    band = change_band(a, b)
    return None if band is None else {"band": band, "tie": band[0] <= 0 <= band[1]}
