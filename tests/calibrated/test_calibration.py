"""Calibration never overlaps the scored text, and the record says where it came from."""
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from calibrated import calibration as cal
from results import UserError
from study.text import read_text_file, tokenize

ROOT = Path(__file__).resolve().parents[2]
SCORED_TOKENS = 16384                     # the CPU rows' budget (study/plan.py's CPU_TOKEN_BUDGET)


@pytest.fixture(scope="module")
def wiki():
    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "gpt2")
    full = tokenize(tok, read_text_file(ROOT / "data" / "wikitext-2-raw" / "wiki.test.raw"))
    return tok, full


def spans(ids: torch.Tensor, n: int) -> set:
    """Every run of n consecutive tokens, as tuples: the plain, independent check."""
    t = ids.reshape(-1).tolist()
    return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


@pytest.mark.parametrize("source", ["enwiki", "botchan", "wikitext2-test-tail"])
def test_no_calibration_window_shares_a_span_with_a_scored_window(wiki, source):
    tok, full = wiki
    scored = full[:, :SCORED_TOKENS]
    c = cal.calibration_set(tok, source=source, calib_file=None, n_samples=64, seq_len=512, seed=0,
                            scored_ids=scored, full_text_ids=full)
    assert c.windows.shape == (64, 512)
    scored_spans = spans(scored, cal.OVERLAP_SPAN)
    for w in c.windows:
        assert not spans(w, cal.OVERLAP_SPAN) & scored_spans
    if source == "wikitext2-test-tail":
        assert min(c.offsets) >= SCORED_TOKENS            # after the last scored token
    rec = c.record()
    assert rec["overlap_check"]["shared_spans"] == 0 and rec["n_tokens"] == 64 * 512 and rec["seed"] == 0
    assert len(rec["text_sha256"]) == 64


def test_a_calibration_text_that_overlaps_the_scored_text_is_refused(wiki, tmp_path):
    tok, full = wiki
    scored = full[:, :SCORED_TOKENS]
    copy = tmp_path / "copy.txt"                           # a user's "own" text: a slice of the test split
    copy.write_text(tok.decode(full[0, 5000:9000]), encoding="utf-8")
    with pytest.raises(UserError, match="shares 32 consecutive tokens"):
        cal.calibration_set(tok, source="file", calib_file=str(copy), n_samples=8, seq_len=256, seed=0,
                            scored_ids=scored)


def test_the_same_seed_draws_the_same_windows(wiki):
    tok, full = wiki
    a = cal.calibration_set(tok, source="botchan", calib_file=None, n_samples=8, seq_len=128, seed=3,
                            scored_ids=full[:, :1000])
    b = cal.calibration_set(tok, source="botchan", calib_file=None, n_samples=8, seq_len=128, seed=3,
                            scored_ids=full[:, :1000])
    c = cal.calibration_set(tok, source="botchan", calib_file=None, n_samples=8, seq_len=128, seed=4,
                            scored_ids=full[:, :1000])
    assert torch.equal(a.windows, b.windows) and not torch.equal(a.windows, c.windows)


def test_botchan_is_the_carried_file_without_its_licence_header():
    text, description, licence = cal.source_text("botchan")
    assert "Project Gutenberg" not in text[:2000] and "public domain" in licence
    assert "#8868" in description


def test_the_wikipedia_converter_keeps_prose_and_drops_markup():
    """scripts/make_calibration_text.py's converter, on a page of markup written here."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_calibration_text as mk
    markup = ("{{Infobox|name=x {{nested}}}}\n'''Albedo''' is the [[reflection|reflectivity]] of a [[surface]]"
              "<ref>a cite</ref> of a body.\n== History ==\n* The term was used in [[optics]] from 1760 on.\n"
              "[[File:A.png|thumb|a [[picture]]]]\n== References ==\n* a reference that goes away here\n")
    text = mk.plain(markup, "Albedo")
    assert text.splitlines() == [" = Albedo = ", "", " Albedo is the reflectivity of a surface of a body. ", "",
                                 " == History == ", "", " The term was used in optics from 1760 on. "]
    text, description, licence = cal.source_text("enwiki")
    assert licence == "CC BY-SA 3.0" and text.startswith(" = Anarchism = ")
