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


def f_timing(summary: dict | None, lines: bool = False) -> str:
    """A timing's median with its p10–p90: '26.97 (25.81–30.04)', or as two lines of table markup
    (lines=True: the spread under the median, in a smaller font); '–' where not timed."""
    if not summary:
        return "–"
    if lines:                      # a narrow column: the spread to 0.1 ms
        return f"{f_ms(summary['median'])}<br/><font size=\"7\">{summary['p10']:.1f}–{summary['p90']:.1f}</font>"
    return f"{f_ms(summary['median'])} ({f_ms(summary['p10'])}–{f_ms(summary['p90'])})"


def f_ratio(x: float) -> str:
    return f"{x:.2f}×"


def f_band(band: tuple[float, float] | None) -> str:
    """A 95% band of a perplexity change, in percent: '[+0.41, +0.63]'; '–' where none."""
    return "–" if band is None else f"[{band[0]:+.2f}, {band[1]:+.2f}]"


def pct_change(new: float, old: float) -> float:
    return 100.0 * (new / old - 1.0)


def mib(nbytes: int | float | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20
