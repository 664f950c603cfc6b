"""The report's sentences that read several records at once, checked against facts built here:
a long name breaks at a hyphen, never mid-word; a calibrated run's variant is described; a best run
with no band of its own is set against the grid's widest band; the stand-in caveat follows the
side-by-side penalties; the conclusions' near-lossless line names each device's pick."""
import pypdf
import pytest

from report.common import describe
from report.doc import break_long_words
from report.sections import closing, explore, measuring, models


def test_a_long_name_breaks_after_a_hyphen_or_underscore_not_mid_word():
    narrow = break_long_words("scratch-int8-per_channel", 60, "Helvetica", 7.6)
    assert narrow.replace("<br/>", "") == "scratch-int8-per_channel"
    assert all(part and part[-1] in "-_" for part in narrow.split("<br/>")[:-1])      # each cut after - or _
    assert break_long_words("fp16", 60, "Helvetica", 7.6) == "fp16"                   # fits: untouched
    tagged = break_long_words("<b>scratch-int8-per_channel</b><br/>+0.52%", 60, "Helvetica", 7.6)
    assert tagged.startswith("<b>scratch-") and tagged.endswith("</b><br/>+0.52%")    # tags left as they are
    assert "<br/>" in tagged.split("</b>")[0]


def test_a_calibrated_runs_variant_is_in_its_description():
    ident = {"key": "gptq-w4", "description": "GPTQ, 4-bit, per output channel"}
    rec = {"method": {"identity": ident, "settings": {"variant": "ao", "act_order": True}}}
    assert describe(rec) == "GPTQ, 4-bit, per output channel, act-order (the columns with the largest Hessian " \
                            "diagonal first)"
    rec = {"method": {"identity": ident, "settings": {"variant": "cal-botchan", "calibration": {
        "source": "botchan", "description": "a novel"}}}}
    assert describe(rec) == "GPTQ, 4-bit, per output channel, calibrated on botchan (a novel)"
    assert describe({"method": {"identity": ident, "settings": {}}}) == ident["description"]


def test_a_best_run_without_windows_is_set_against_the_grids_widest_band(monkeypatch):
    change = {"a": 17.56, "b": 31.48, "c": 81.0}
    bands = {"a": None, "b": (30.92, 32.03), "c": (79.83, 82.19)}
    monkeypatch.setattr(explore, "delta", lambda r, n: change[n])
    monkeypatch.setattr(explore, "band", lambda r, n: bands[n])
    text = explore.unbanded_lead({}, "a", ["b", "c"])
    lead, widest = 31.48 - 17.56, 82.19 - 79.83
    assert f"its lead over b, {lead:.1f} points, is {lead / widest:.0f}× the widest band of the other 4-bit runs, " \
           f"{widest:.2f} points" in text
    bands["a"] = (17.0, 18.0)
    assert explore.unbanded_lead({}, "a", ["b", "c"]) == ""                 # it has its own band: nothing added


@pytest.mark.parametrize("worse,n,says", [(6, 7, "larger there for 6 of 7 methods (model and origin change together"),
                                          (1, 7, "smaller there for 6 of 7 methods, consistent with this origin")])
def test_the_stand_in_caveat_follows_the_side_by_side_penalties(monkeypatch, worse, n, says):
    monkeypatch.setattr(measuring, "origin_summary", lambda s: {"small": "s", "large": "l", "worse": worse,
                                                                "n": n, "gain": {}})
    assert says in measuring.origin_caveat(None)
    monkeypatch.setattr(measuring, "origin_summary", lambda s: None)
    assert "not measured here" in measuring.origin_caveat(None)


def test_the_calibrated_gain_says_where_calibration_removes_more():
    more = models.gain_words("g", "r", {"s": 0.89, "l": 0.34}, "s", "l")
    assert "g's penalty is 0.89× r's on s and 0.34× on l: calibration removes far more" in more
    assert models.gain_words("g", "r", {"s": 0.89, "l": 0.85}, "s", "l").endswith("0.85× on l.")


def test_the_near_lossless_line_names_the_least_memory_and_each_devices_pick(monkeypatch):
    change = {"int8": 0.56, "asym": 0.06, "g64": 0.10}
    monkeypatch.setattr(closing, "delta", lambda runs, n: runs[n]["change"])
    runs = lambda *names: {n: {"memory": {"weights_mib": {"int8": 129.2, "asym": 129.3, "g64": 134.9}[n]},  # noqa
                               "change": change[n]} for n in names}
    cpu, gpu = runs("int8", "asym"), runs("int8", "g64")
    rows = [{"group": ("m", "t", 1, 1, 1, "cpu: X", "cpu"), "share": share, "runs": cpu,
             "pick": "asym", "least_within_1pct": "int8" if share == 0.5 else None} for share in (0.5, 0.3, 0.2)]
    rows += [{"group": ("m", "t", 1, 1, 1, "NVIDIA H200", "cuda"), "share": share, "runs": gpu,
              "pick": "g64", "least_within_1pct": "int8" if share == 0.5 else None} for share in (0.5, 0.3, 0.2)]
    text = closing.lossless_words(rows)
    assert text.startswith("Within 1% of fp32's perplexity, the least memory is int8's 129.2 MiB (+0.56%, CPU; ")
    assert "the lowest perplexity within 30% of fp32's memory is asym's (129.3 MiB, +0.06%, CPU) and g64's " \
           "(134.9 MiB, +0.10%, NVIDIA H200)" in text


def test_a_spacer_at_the_end_makes_no_blank_page(tmp_path):
    """A table ends with a spacer; where the spacer no longer fits, it used to spill onto a page of its own."""
    from reportlab.lib.units import cm
    from reportlab.platypus import Spacer

    from report.doc import Doc
    doc = Doc(tmp_path, None)
    doc.p("The only text.")
    doc.story.append(Spacer(1, 30 * cm))                      # taller than what is left of the page
    out = tmp_path / "one.pdf"
    doc.build(out, "title")
    assert len(pypdf.PdfReader(str(out)).pages) == 1


def test_the_decision_table_drops_a_decode_column_of_dashes(monkeypatch):
    """Table 10 keeps its decode column only where at least half its picks were timed side by side;
    otherwise the caption sends the reader to the speed section."""
    from report.sections import closing

    class FakeDoc:
        def __init__(self):
            self.tables = []

        def h1(self, *a, **k):
            pass

        def p(self, *a, **k):
            pass

        def label(self, *a, **k):
            pass

        def table(self, header, rows, caption, widths=None):
            self.tables.append((header, rows, caption))

    runs = {"a": {"memory": {"weights_mib": 10.0}, "perplexity": {"ppl": 2.0}},
            "baseline-fp32": {"memory": {"weights_mib": 40.0}, "perplexity": {"ppl": 2.0}}}
    row = lambda ratio: {"runs": runs, "pick": "a", "next": None, "share": 0.5, "budget_mib": 20.0,  # noqa: E731
                         "group": ("m", "t", 1, 1, 0, "NVIDIA H200"), "ratio": ratio}
    monkeypatch.setattr(closing, "decision_groups", lambda s: [])
    for ratios, timed in (([0.9, None], True), ([0.9, None, None], False)):
        monkeypatch.setattr(closing, "decision_rows", lambda s, ratios=ratios: [row(r) for r in ratios])
        doc = FakeDoc()
        closing.decision(doc, None)
        header, rows, caption = doc.tables[0]
        assert ("decode vs fp16" in header) == timed
        assert all(len(r) == len(header) for r in rows)
        assert ("most picks ran in no side-by-side bench" in caption) != timed
