"""Typesetting: a thin layer over reportlab so that the sections read as text.

The text is set in DejaVu Sans, which matplotlib ships, so no system font is needed.
"""
from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape

# -----------------------------------------------------------------------------
# Typesetting (reportlab): a thin layer so that sections read as text


class Doc:
    """A story of flowables; sections append to it, build() sets it.

    known: what an earlier pass of the same story learned (Doc.build returns it): the page each
    anchor landed on and the number each labelled figure or table got, so that a page near the
    front (the question map) can name pages and figures that come later."""

    def __init__(self, figures: Path, known: dict | None = None):
        import matplotlib
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

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
            "p": style("p", "BodyText", fontSize=BODY_PT, leading=BODY_PT * 1.32, spaceAfter=4),
            "small": style(
                "s", "BodyText", fontSize=CAPTION_PT, leading=CAPTION_PT * 1.25,
                textColor=colors.HexColor("#333333")
            ),
            "cell": style("c", "BodyText", fontSize=CELL_PT, leading=CELL_PT * 1.2),
            "mono": style("m", "Code", "DejaVuMono", fontSize=CELL_PT, leading=CELL_PT * 1.2),
            "subtitle": style("st", "BodyText", fontSize=12, leading=16, spaceAfter=6),
            "ref": style("r", "BodyText", fontSize=CAPTION_PT, leading=CAPTION_PT * 1.2, spaceAfter=1.5,
                         leftIndent=14, firstLineIndent=-14),
        }
        self.figures = figures
        self.story: list = []
        self.n_fig = 0
        self.n_tab = 0
        self.refs: dict[str, int] = {}     # table numbers that the text cites, set as they are made
        self.known = known or {"pages": {}, "labels": {}}
        self.printed_fonts: dict[str, float | None] = {}   # figure -> its smallest text in print, in pt
        self.pages: dict[str, int] = {}    # anchor -> page, filled while build() lays the story out
        self.labels: dict[str, str] = {}   # key -> "Figure 3" / "Table 5", as they are made
        self.n_appendix = 0                # appendices lettered so far
        self._block_start = 0              # story index where the last table began (label() anchors there)

    # -- cross references: anchors (pages) and labels (figure and table numbers) --------------

    def anchor(self, key: str) -> None:
        """Remember the page the story has reached here; page_of(key) reads it on the next pass."""
        self.story.append(_Anchor(key, self.pages))

    def label(self, key: str, kind: str = "Figure") -> None:
        """Name the figure or table just made (its number) and anchor the page where it begins."""
        from reportlab.platypus import KeepTogether
        self.labels[key] = f"{kind} {self.n_fig if kind == 'Figure' else self.n_tab}"
        last, anchor = self.story[-1], _Anchor(key, self.pages)
        if isinstance(last, KeepTogether):
            last._content.insert(0, anchor)          # inside: it moves to the next page with the figure
        else:                                        # before a split table's caption (kept with the table)
            self.story.insert(self._block_start, anchor)

    def page_of(self, key: str) -> str:
        """'p. N' from the pass before, or '' where the key was not laid out (yet)."""
        n = self.known["pages"].get(key)
        return f"p. {n}" if n else ""

    def label_of(self, key: str) -> str:
        return self.known["labels"].get(key, "")

    def page_break(self) -> None:
        from reportlab.platypus import PageBreak
        self.story.append(PageBreak())

    def h1(self, text: str, key: str | None = None) -> None:
        self._heading(text, "h1")
        if key:
            self.anchor(key)

    def appendix(self, title: str, key: str) -> None:
        """'Appendix A: title', lettered in print order."""
        self.n_appendix += 1
        self.h1(f"Appendix {chr(64 + self.n_appendix)}: {title}", key=key)

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
        markup: bool = False,
        split: bool = False,
    ) -> None:
        """A table; a column with a width in cm wraps its text, one of None fits its content.
        markup: the wrapped cells are already markup (escaped names, <b>), not plain text."""
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
        room = [w * cm - 8 if w else None for w in widths]          # the cell's text width (4 pt padding a side)
        data += [
            [Paragraph(break_long_words(str(v) if markup else escape(str(v)), room[i], cell.fontName,
                                        cell.fontSize), cell) if wrap[i] else str(v)
             for i, v in enumerate(row)]
            for row in rows
        ]
        t = Table(
            data, colWidths=[w * cm if w else None for w in widths], repeatRows=1, hAlign="LEFT"
        )
        t.setStyle(
            TableStyle(
                [
                    ("FONTNAME", (0, 0), (-1, -1), "DejaVu"),
                    ("FONTSIZE", (0, 0), (-1, -1), CELL_PT),
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
        self._block_start = len(self.story)          # where label() anchors a table that may split
        if len(rows) < 25 and not split:
            self.story.append(KeepTogether([cap, Spacer(1, 2), t, Spacer(1, 6)]))
        else:                              # a long table splits, its header row carried (repeatRows)
            cap.keepWithNext = 1
            self.story += [cap, Spacer(1, 2), t, Spacer(1, 6)]

    def figure(self, name: str, caption: str, max_height_cm: float = 12) -> bool:
        from reportlab.lib.units import cm
        from reportlab.platypus import Image, KeepTogether, Paragraph, Spacer

        path = self.figures / name
        if not path.exists():
            return False
        img = Image(str(path))
        scale = min(16.5 * cm / img.imageWidth, max_height_cm * cm / img.imageHeight)
        img.drawWidth, img.drawHeight = img.imageWidth * scale, img.imageHeight * scale
        self.printed_fonts[name] = printed_min_font(path, img.drawWidth)
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

    def build(self, out: Path, title: str, subject: str = "") -> dict:
        """Lay the story out into out (atomically); -> what this pass learned (see known)."""
        from reportlab.lib.pagesizes import A4
        from reportlab.lib.units import cm
        from reportlab.platypus import SimpleDocTemplate, Spacer

        while self.story and isinstance(self.story[-1], Spacer):      # a last spacer alone would make a blank page
            self.story.pop()

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
                subject=subject,
                author="report/build_report.py",
            ).build(self.story, onFirstPage=footer, onLaterPages=footer)
            tmp.replace(out)  # a half-written PDF never replaces a good one
        finally:
            tmp.unlink(missing_ok=True)
        return {"pages": dict(self.pages), "labels": dict(self.labels)}


def printed_min_font(png: Path, draw_width_pt: float) -> float | None:
    """The smallest text of a figure as printed: the size plot_results wrote into the PNG, times
    the scale from the figure's own width (pixels at its dpi) to its width on the page."""
    from PIL import Image as PILImage

    import plot_results as pr
    with PILImage.open(png) as im:
        size = float(im.info.get(pr.MIN_FONT_KEY, 0) or 0)
        dpi = (im.info.get("dpi") or (pr.DPI, pr.DPI))[0]
        own_width_pt = im.width / dpi * 72
    return size * draw_width_pt / own_width_pt if size else None


MIN_PRINTED_PT = 7.0          # the smallest figure text the report allows, at print size
def break_long_words(markup: str, width: float, font: str, size: float) -> str:
    """markup with each word wider than width (points) broken after a '-' or '_' (a line break where
    it would otherwise be cut mid-name: "scratch-int8-per_chann / el"); tags are left alone."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    def fit(word: str, face: str) -> str:
        if stringWidth(word, face, size) <= width:
            return word
        cuts = [i + 1 for i, ch in enumerate(word[:-1]) if ch in "-_"]
        fitting = [i for i in cuts if stringWidth(word[:i], face, size) <= width]
        if not fitting:
            return word
        return word[:fitting[-1]] + "<br/>" + fit(word[fitting[-1]:], face)

    out, bold = [], False
    for part in re.split(r"(<[^>]*>|\s+)", markup):        # tags and spaces kept as they are
        if part.startswith("<"):
            bold = {"<b>": True, "</b>": False}.get(part.lower(), bold)
        elif part and not part.isspace():
            part = fit(part, f"{font}-Bold" if bold else font)
        out.append(part)
    return "".join(out)


BODY_PT, CAPTION_PT, CELL_PT = 10, 8.5, 7.6     # body text, captions, table cells (figures: plots/style)


def _flowable():
    from reportlab.platypus import Flowable
    return Flowable


class _Anchor(_flowable()):
    """A flowable of no size that writes the page it is drawn on into a dict."""

    def __init__(self, key: str, pages: dict):
        super().__init__()
        self.key, self.into = key, pages
        self.width = self.height = 0

    def wrap(self, *args):
        return 0, 0

    def draw(self):
        self.into.setdefault(self.key, self.canv.getPageNumber())
