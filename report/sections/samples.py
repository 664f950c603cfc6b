"""What a perplexity change looks like: the same prompts completed greedily by the baseline and
by schemes across the range (scripts/greedy_samples.py), beside each scheme's perplexity change.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
import results
from report.common import Study, delta
from report.doc import Doc
from report.formats import f_pct


def samples_record(s: Study) -> dict | None:
    """The samples of the headline model, else of any model."""
    recs = [r for r in s.records if results.kind_of(r) == "samples"]
    head = s.headline[0] if s.headline else None
    return next((r for r in recs if pr.short_model(r) == head), next(iter(recs), None))


def change_of(s: Study, rec: dict, name: str) -> float | None:
    """name's perplexity change in the group of the samples' model with the most tokens that has it."""
    for k in s.ppl_groups():
        runs = s.runs(k)
        if k[0] == pr.short_model(rec) and name in runs and "baseline-fp32" in runs:
            return delta(runs, name)
    return None


def qualitative(doc: Doc, s: Study) -> None:
    rec = samples_record(s)
    doc.h2("What the perplexity changes look like")
    if rec is None:
        doc.p("<i>No greedy samples in these results (scripts/greedy_samples.py).</i>")
        return
    smp, n_new = rec["samples"], rec["method"]["settings"]["new_tokens"]
    names = list(smp["completions"])
    rows = []
    for name in names:
        d = None if name == "baseline-fp32" else change_of(s, rec, name)
        head = f"<b>{escape(name)}</b><br/>" + ("fp32" if name == "baseline-fp32" else
                                               f"{f_pct(d)}" if d is not None else "not evaluated")
        rows.append([head] + [escape(c.strip()) for c in smp["completions"][name]])
    doc.table(["method, perplexity vs fp32"] + [f"“{escape(p)}” …" for p in smp["prompts"]], rows,
              f"The same {len(smp['prompts'])} prompts, {n_new} new tokens each, greedy, by "
              f"{escape(pr.short_model(rec))} in fp32 and quantized ({escape(pr.device_of(rec))}); the perplexity "
              "changes are those of the evaluation runs of the same model.",
              widths=[3.9, 4.2, 4.2, 4.2], markup=True, split=True)
    doc.label("samples-table", "Table")
    equal = smp["leading_tokens_equal"]
    same = [n for n in names if n != "baseline-fp32" and all(e >= n_new for e in equal[n])]
    first = {n: min(equal[n]) for n in names if n not in same and n != "baseline-fp32"}
    text = (f"{', '.join(escape(n) for n in same)} {'writes' if len(same) == 1 else 'write'} the baseline's "
            "text word for word. " if same else "No scheme writes the baseline's text word for word. ")
    if first:
        text += ("On its worst prompt each parts from it after " + ", ".join(
                     f"{v} token{'' if v == 1 else 's'} ({escape(n)})" for n, v in first.items())
                 + ": a small perplexity change already flips a close call between two words, and from there "
                 "the text goes its own way.")
    variety = {n: distinct_share(smp["completions"][n]) for n in names}
    low = min(variety, key=variety.get)
    text += (f" Distinct words per completion, as a share of its words: {variety['baseline-fp32']:.0%} for fp32, "
             f"{variety[low]:.0%} for {escape(low)}, the lowest" + (" (it repeats itself)." if variety[low] <
                                                                     0.6 else ".") if low != "baseline-fp32"
             else " No scheme repeats itself more than fp32.")
    doc.p(text)


def distinct_share(completions: list[str]) -> float:
    """Distinct words over words, averaged over the completions: low when a text repeats itself."""
    shares = [len(set(w)) / len(w) for w in (c.split() for c in completions) if w]
    return sum(shares) / len(shares) if shares else 0.0
