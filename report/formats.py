"""The report's number formats: one for each kind of number, so that the text and the tables agree.
"""
from __future__ import annotations


def f_ppl(x: float) -> str:
    return f"{x:.4f}"


def f_pct(x: float) -> str:
    return f"{x:+.2f}%"


def f_mib(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def f_ms(x: float) -> str:
    return f"{x:.2f}"


def f_ratio(x: float) -> str:
    return f"{x:.2f}×"


def f_band(band: tuple[float, float] | None) -> str:
    """A 95% band of a perplexity change, in percent: '[+0.41, +0.63]'; '–' where none."""
    return "–" if band is None else f"[{band[0]:+.2f}, {band[1]:+.2f}]"


def pct_change(new: float, old: float) -> float:
    return 100.0 * (new / old - 1.0)


def mib(nbytes: int | float | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20
