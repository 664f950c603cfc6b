"""The sentences that name a run's settings: its window, stride, tokens, timing lengths and device.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
from report.common import model_label

# -----------------------------------------------------------------------------
# The assignment's sections: Summary, How we measure, Part 1, Part 2, Bonus, Speed, Limitations


def latency_of(rec: dict) -> tuple[float | None, float | None]:
    """(prefill ms, decode ms/token) medians of a run's own timing, or None where not timed."""
    pre, dec = latency_spread(rec)
    return (pre or {}).get("median"), (dec or {}).get("median")


def latency_spread(rec: dict) -> tuple[dict | None, dict | None]:
    """(prefill, decode ms/token) summaries of a run's own timing (median, p10, p90, ...), or None."""
    lat = rec.get("latency") or {}
    return (lat.get("prefill") or {}) or None, ((lat.get("decode") or {}).get("ms_per_token") or {}) or None


def short_name(rec: dict) -> str:
    """A method's name for a table cell: a selective run by its blocks and components."""
    parts = pr.selective_parts(rec)
    return (f"scratch-int8 blocks {parts[0].replace('-', ', ')}: {parts[1].replace('+', ', ')}" if parts
            else rec["method"]["name"])


def setting_facts(rec: dict) -> dict:
    """What the headline's caption says about how a run measured: read from the record."""
    d, p = rec["dataset"], rec["perplexity"]
    lat = rec.get("latency") or {}
    dec = lat.get("decode") or {}
    return {
        "model": model_label(rec),
        "text": pr.text_name(rec),
        "tokens": p["n_tokens_scored"],
        "whole": not d.get("truncated"),
        "text_tokens": d.get("n_tokens"),
        "L": p["max_length"],
        "S": p["stride"],
        "windows": p.get("n_windows"),
        "device": pr.device_of(rec),
        "prefill_tokens": (lat.get("prefill") or {}).get("tokens"),
        "prompt_tokens": dec.get("prompt_tokens"),
        "new_tokens": dec.get("new_tokens"),
        "repeats": lat.get("repeats"),
        "decode_definition": dec.get("definition"),
    }


def settings_sentence(x: dict) -> str:
    tokens = (f"all {x['tokens']:,} scored tokens of the text" if x["whole"]
              else f"the first {x['tokens']:,} tokens of the text's {x['text_tokens']:,}")
    out = (f"{escape(x['model'])} on {escape(x['text'])}: {tokens}, windows of {x['L']} tokens at "
           f"stride {x['S']}" + (f" ({x['windows']:,} windows)" if x["windows"] else "")
           + f", on {escape(x['device'])}.")
    if x["prefill_tokens"]:
        out += (f" Prefill is one forward pass over 1×{x['prefill_tokens']} tokens; decode is "
                f"{escape(str(x['decode_definition']))}, {x['new_tokens']} new tokens after a "
                f"{x['prompt_tokens']}-token prompt; medians of {x['repeats']} repeats.")
    return out
