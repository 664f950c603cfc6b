"""The README and docs/: within their budget, every link resolves, and no measured number is
typed by hand (measured numbers live in RESULTS.md and the report, generated from results/)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What a hand-typed measurement looks like: a time, a signed percentage change, a ratio against a
# baseline written to two decimals, or a perplexity-like figure with four decimals.
MEASURED = re.compile(r"\d+\.\d+ ?(ms|µs|us)\b|[+-]\d+(\.\d+)?%|\b\d\.\d\d[×x]\b(?! fp16's time)|\b\d+\.\d{4}\b")


def test_the_readme_is_at_most_10_kb_and_names_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 10_000
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name


def test_every_relative_link_resolves():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_no_measured_number_is_typed_into_markdown():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found = [m.group(0) for m in MEASURED.finditer(text)
                 if not text[:m.start()].endswith(("at most ", "target of "))]      # a target, not a measurement
        assert not found, f"{page.name}: {found[:5]}"
