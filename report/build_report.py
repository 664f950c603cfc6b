#!/usr/bin/env python3
"""The study's PDF report, built only from results/*.json: the sections in order, and the CLI.

    python report/build_report.py         # results/ -> report/figures/ + report/report.pdf
    python report/build_report.py --results DIR --out FILE.pdf --figures DIR

Every number in the report, and every comparison in its text ("NF4 is x% better than
FP4"), is read or computed from the results files; none is typed in. Each section is a
module of report/sections/ (summary, measuring, part1, part2, explore, models, bonus, speed, anatomy,
limitations, appendix); what they share (the number formats, Study: the records sorted by
question) is report/common.py, and the typesetting report/doc.py. A section whose
measurements are missing says so instead of guessing; a section that fails stops the build
with its reason (SectionFailed), so a bug never reads as missing data. The figures are
redrawn by plot_results.py first, so the PDF and report/figures/ always come from the same
files.

Assumptions: the results files are those written by this project's scripts, at today's schema
(results.SCHEMA_VERSION; scripts/upgrade_results.py brings older ones up); each measured method's
identity is the one study/registry.py stamped into its record.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import plot_results as pr  # noqa: E402
from report.common import Study
from report.doc import MIN_PRINTED_PT, Doc
from report.sections.appendix import appendix, memory_ppl_tables, supporting
from report.sections.bonus import bonus, gguf_inside
from report.sections.closing import conclusions, decision, glossary, references
from report.sections.explore import explore
from report.sections.front import cover, question_map
from report.sections.limitations import limitations
from report.sections.measuring import how_we_measure, runs_methods_devices
from report.sections.models import larger_against_smaller
from report.sections.part1 import part1
from report.sections.part2 import part2
from report.sections.samples import qualitative
from report.sections.speed import speed, speed_summary
from report.sections.summary import headline_table, title_block
from study import cli  # noqa: E402

# -----------------------------------------------------------------------------
# Build


class SectionFailed(RuntimeError):
    """A section could not be built from the records; the report is not written without it."""


# The report's sections in print order, each a function (doc, study) in report/sections/: the main
# body answers the assignment (after the cover and the question map); the appendices hold the detail.
MAIN = (question_map, how_we_measure, part1, part2, explore, larger_against_smaller, qualitative, bonus, speed_summary,
        decision, limitations, conclusions, references)
APPENDICES = (glossary, supporting, headline_table, memory_ppl_tables, runs_methods_devices, gguf_inside, appendix)
# report/speed.pdf: the engineering the assignment did not ask for (every bench, the fused step, its anatomy)
SPEED = (speed,)
PASSES = 4            # layouts until the pages and numbers that the question map cites stop moving


def speed_pdf(out: Path) -> Path:
    """Where the speed report goes beside the main one: report/speed.pdf for report/report.pdf."""
    return out.with_name("speed.pdf" if out.stem == "report" else f"{out.stem}-speed.pdf")


def compose(doc: Doc, s: Study, sections) -> None:
    for section in sections:
        try:
            section(doc, s)
        except Exception as e:   # a bug, or a record that lacks what the section reads: never a silent gap
            raise SectionFailed(f"section '{section.__name__}' failed: {type(e).__name__}: {e}") from e


def build_report(results: str | Path = "results", out: str | Path = "report/report.pdf",
                 figures: str | Path = "report/figures") -> Path:
    """Redraw the figures from the records in `results`, then write the PDF (and the speed PDF
    beside it) from the same records. The main report is laid out until the pages and numbers
    that its question map cites are those of the layout itself."""
    results, out, figures = Path(results), Path(out), Path(figures)
    records = pr.load_results(results)
    pr.plot_all(records, figures)
    s = Study(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    known = None
    for _ in range(PASSES):
        doc = Doc(figures, known)
        cover(doc, s, results)
        compose(doc, s, MAIN)
        doc.anchor("main-end")
        doc.page_break()
        compose(doc, s, APPENDICES)
        main_pages = (known or {"pages": {}})["pages"].get("main-end")
        learned = doc.build(out, "Weight quantization study: report built from results/*.json",
                            subject="; ".join(([MAIN_BODY.format(main_pages)] if main_pages else [])
                                              + [smallest_text(doc)]))
        if learned == known:
            break
        known = learned
    else:
        raise SectionFailed(f"the question map's pages did not settle in {PASSES} layouts")
    sdoc = Doc(figures)
    sdoc.p("Speed in detail: the benches, the fused decode step and its anatomy", "title")
    title_block(sdoc, s, results)
    compose(sdoc, s, SPEED)
    small = sorted(name for name, v in {**doc.printed_fonts, **sdoc.printed_fonts}.items()
                   if v and v < MIN_PRINTED_PT)
    if small:
        warnings.warn(f"{len(small)} figure(s) print text under {MIN_PRINTED_PT:g} pt: {', '.join(small)}",
                      stacklevel=2)
    sdoc.build(speed_pdf(out), "Weight quantization study: speed in detail, built from results/*.json",
               subject=smallest_text(sdoc))
    return out


MAIN_BODY = "main body: pages 1-{}; then the appendices"      # the PDF's subject: where the main body ends
SMALLEST_TEXT = "smallest figure text {:.1f} pt"                  # and the smallest text of its figures in print


def smallest_text(doc: Doc) -> str:
    """SMALLEST_TEXT for the figures this document placed."""
    return SMALLEST_TEXT.format(min((v for v in doc.printed_fonts.values() if v), default=0))


def subject_number(pdf: str | Path, pattern: str) -> str | None:
    """The number that pattern's group catches in the PDF's subject (MAIN_BODY, SMALLEST_TEXT), or None."""
    import re

    import pypdf
    m = re.search(pattern, str(pypdf.PdfReader(str(pdf)).metadata.get("/Subject", "")))
    return m.group(1) if m else None


def main_body_pages(pdf: str | Path) -> int | None:
    """The main body's last page, as the PDF's subject records it."""
    n = subject_number(pdf, r"pages 1-(\d+)")
    return None if n is None else int(n)


def smallest_figure_text(pdf: str | Path) -> float | None:
    """The smallest text of the PDF's figures at print size, in points, as its subject records it."""
    n = subject_number(pdf, r"smallest figure text ([\d.]+) pt")
    return None if n is None else float(n)


RESULTS_DIR, PDF, FIGURES_DIR = "results", "report/report.pdf", "report/figures"   # main()'s and the CLI's


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=RESULTS_DIR, help=f"folder of results JSON (default: {RESULTS_DIR})")
    p.add_argument("--out", default=PDF, help=f"the PDF to write (default: {PDF})")
    p.add_argument("--figures", default=FIGURES_DIR,
                   help=f"where the figures are drawn and read from (default: {FIGURES_DIR})")
    return p


def main(*, results: str = RESULTS_DIR, out: str = PDF, figures: str = FIGURES_DIR) -> Path:
    """Redraw the figures and write the PDF from the records in `results`; -> the PDF's path."""
    results, out, figures = (cli.expand_path(x) for x in (results, out, figures))
    cli.check_output_file(out, "--out", kind="pdf")
    cli.check_output_dir(figures, "--figures")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        out = build_report(results, out, figures)
    print(f"wrote {out} (main body: {main_body_pages(out)} pages) and {speed_pdf(out)}")
    return out


if __name__ == "__main__":
    cli.run_cli(main, build_parser())
