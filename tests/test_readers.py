"""The readers read records only: plot_results.py, the report builder, scripts/results_table.py
and the record schema import neither torch nor any bench or evaluator module, and build the
figures, RESULTS.md's tables and the PDF from records alone."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The modules a reader must never pull in: torch and everything that measures.
MACHINERY = ("torch", "evaluate", "part1_quantize_scratch", "part2_bnb_nf4", "bonus_gguf", "run_study",
             "speed.gpu_bench", "speed.cpu_bench", "speed.anatomy", "speed.decoder", "speed.fused_step",
             "speed.static_cache", "speed.kernels", "study.loading", "study.text", "study.perplexity",
             "study.memory", "study.timing")

READ_ONLY = r"""
import sys
sys.modules["torch"] = None                   # any import of torch now fails with ImportError
root, results_dir, out = sys.argv[1:4]
sys.path[:0] = [root, root + "/scripts"]
import results, plot_results, results_table
from report import build_report
records = results.load_results(results_dir)
figures = plot_results.plot_all(records, out + "/figures")
table = results_table.main(results_dir)
pdf = build_report.build_report(results_dir, out + "/report.pdf", out + "/figures")
machinery = sorted(m for m in MACHINERY if m in sys.modules and sys.modules[m] is not None)
print("LOADED", ",".join(machinery) or "-")
print("FIGURES", len(figures), len(table), pdf.stat().st_size)
"""


def test_readers_build_figures_tables_and_report_with_torch_blocked(results_dir, tmp_path):
    code = f"MACHINERY = {MACHINERY!r}\n" + READ_ONLY
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(results_dir), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("LOADED", "FIGURES")))
    assert lines["LOADED"] == "-"                                   # no measuring module was imported
    n_figures, table_chars, pdf_bytes = map(int, lines["FIGURES"].split())
    assert n_figures >= 4 and table_chars > 1000 and pdf_bytes > 10_000
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_a_failing_section_stops_the_build_with_its_reason(results_dir, tmp_path, monkeypatch):
    from report import build_report as br

    def broken_section(doc, s):
        raise KeyError("perplexity")
    monkeypatch.setattr(br, "MAIN", (broken_section,))
    with pytest.raises(br.SectionFailed, match="section 'broken_section' failed: KeyError"):
        br.build_report(results_dir, tmp_path / "r.pdf", tmp_path / "figures")
    assert not (tmp_path / "r.pdf").exists()


def test_results_md_prints_the_batch_bench_as_its_record_says(results_dir, capsys):
    """The fixture's batch record (conftest.batch_result): every method at every batch, its ratios as stored."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import results_table
    text = results_table.main(str(results_dir))
    block = text.split("**batch-decode-bench** (batch.json)")[1]
    assert "NVIDIA Test GPU, 3 round-robin repeats, 76 decode steps after a 11-token prompt" in block
    assert "| scratch-int4-fast | 4 | 5.500 (4.950-6.050) | 727 | 1.25 | 2.75 | 4/4 |" in block
    assert "| fp16 | 1 | 4.000 (3.600-4.400) | 250 | 1.00 | 1.00 | 1/1 |" in block
