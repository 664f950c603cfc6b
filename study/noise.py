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
    return _central(changes, level)


def _central(draws: list[float], level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap draws: their (1-level)/2 and (1+level)/2 quantiles."""
    draws, tail = sorted(draws), (1 - level) / 2
    return draws[int(tail * (len(draws) - 1))], draws[int(math.ceil((1 - tail) * (len(draws) - 1)))]


def ranked(a: dict, b: dict) -> dict | None:
    """b against a on the same windows: the band of b's perplexity change against a's (percent),
    and whether it holds zero (a tie: the text must not rank them). None without windows."""
    band = change_band(a, b)
    return None if band is None else {"band": band, "tie": band[0] <= 0 <= band[1]}


# -----------------------------------------------------------------------------
# Across models: two tokenizers cut the text into different windows, so the pairing is by bytes.
# A group of 4 windows (about 8 KB of text at stride 512): two models' window edges fall up to half
# a window apart, a small share of such a group; on the whole WikiText-2 test split, 148 groups.

def byte_windows(rec: dict) -> tuple[list[float], list[int]] | None:
    """(NLL sums, UTF-8 bytes) per window, in text order, or None where the record lacks either."""
    w = (rec.get("perplexity") or {}).get("windows") or {}
    nll, size = w.get("nll_sum"), w.get("n_bytes")
    return (nll, size) if nll and size and len(nll) == len(size) else None


def paired_by_bytes(a: dict, b: dict, per_group: int = 4) -> tuple[tuple, tuple, tuple, tuple] | None:
    """Two runs' windows grouped by where their text lies: a group is per_group windows of a in a
    row, and takes the windows of b whose middle byte falls in its text. Windows that run past the
    shorter run's end are left out (both runs score a prefix of the same text). -> (NLL of a,
    bytes of a, NLL of b, bytes of b) per group, or None where a record lacks its windows' bytes,
    the texts differ or fewer than two groups remain."""
    wa, wb = byte_windows(a), byte_windows(b)
    if wa is None or wb is None or (a.get("dataset") or {}).get("sha256") != (b.get("dataset") or {}).get("sha256"):
        return None
    end = min(sum(wa[1]), sum(wb[1]))
    groups, ends, pos = [], [], 0                      # [nll a, bytes a, nll b, bytes b], and each group's end byte
    for i, (nll, size) in enumerate(zip(*wa)):
        if pos + size > end:
            break
        if i % per_group == 0:
            groups.append([0.0, 0, 0.0, 0])
            ends.append(0)
        pos += size
        groups[-1][0] += nll
        groups[-1][1] += size
        ends[-1] = pos
    g, pos = 0, 0
    for nll, size in zip(*wb):
        mid, pos = pos + size / 2, pos + size
        while g < len(groups) and mid >= ends[g]:
            g += 1
        if pos > end or g == len(groups):
            break
        groups[g][2] += nll
        groups[g][3] += size
    if len(groups) < 2:
        return None
    return tuple(tuple(x[i] for x in groups) for i in range(4))


def bpb_band(a: dict, b: dict, per_group: int = 4, draws: int = DRAWS, level: float = LEVEL,
             seed: int = SEED) -> dict | None:
    """b's bits per byte less a's, two models on the same text: each one's bits per byte on the bytes
    both scored (a, b), the difference and its 95% band, from a bootstrap over the text
    (paired_by_bytes' groups, the same draw for both runs), and whether the band holds zero (tie, as
    ranked() says it). None without the windows' bytes."""
    p = paired_by_bytes(a, b, per_group)
    if p is None:
        return None
    na, sa, nb, sb = p
    band = _bpb_band(na, sa, nb, sb, draws, level, seed)
    return {"diff": _bpb(nb, sb) - _bpb(na, sa), "band": band, "tie": band[0] <= 0 <= band[1],
            "a": _bpb(na, sa), "b": _bpb(nb, sb), "bytes": sum(sa), "groups": len(sa)}


def _bpb(nll, size) -> float:
    return sum(nll) / math.log(2) / sum(size)


@functools.lru_cache(maxsize=256)
def _bpb_band(na: tuple, sa: tuple, nb: tuple, sb: tuple, draws: int, level: float,
              seed: int) -> tuple[float, float]:
    rng, n, diffs = random.Random(seed), len(na), []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        diffs.append(_bpb([nb[i] for i in pick], [sb[i] for i in pick])
                     - _bpb([na[i] for i in pick], [sa[i] for i in pick]))
    return _central(diffs, level)
