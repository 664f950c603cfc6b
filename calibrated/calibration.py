"""The calibration text: where it comes from, the windows drawn from it, and the proof that no
calibration window shares a token span with the scored text.

Sources (CALIBRATION_SOURCES):
- wikitext2-train, ptb-train: the train split of the scored dataset, from the Hub (the default
  when the scored text comes from the Hub: WikiText-2 train for WikiText-2, PTB train for PTB);
- enwiki: English Wikipedia's first articles (April 2016), as plain text, which the repository
  carries in data/enwiki/ (CC BY-SA 3.0), built from gensim 4.4.0's test data on PyPI by
  scripts/make_calibration_text.py. The offline default: the scored text's domain (encyclopedia
  articles), other articles;
- botchan: Natsume Soseki's "Botchan", the Project Gutenberg eBook #8868 that the repository
  carries in data/botchan/ (public domain in the US; the file keeps the Project Gutenberg
  License it ships with): English prose of another domain, to measure what the source moves;
- wikitext2-test-tail: the tokens of the scored text after the last one scored, for runs that
  score only the first --max-tokens of a local WikiText-2 test file: same domain, disjoint text;
- a local file (--calib-file PATH).

Windows are `seq_len` tokens at seeded random offsets. Whatever the source, check_disjoint()
refuses a calibration set that shares any OVERLAP_SPAN consecutive tokens with the scored ids.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from results import UserError

ROOT = Path(__file__).resolve().parent.parent
BOTCHAN = ROOT / "data" / "botchan" / "botchan.txt"
BOTCHAN_SHA256 = "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"
ENWIKI = ROOT / "data" / "enwiki" / "enwiki-2016-shortened.txt"
ENWIKI_SHA256 = "c7c5caf17269d4a94451f9b0c560bb0ebdc0c16e4186c3bd7d0dbba5fb21e49e"
CALIBRATION_SOURCES = ("auto", "wikitext2-train", "ptb-train", "enwiki", "botchan", "wikitext2-test-tail")
# Two texts that share this many consecutive tokens share text, not a phrase: a common phrase
# repeats in 5-10 tokens, and WikiText-2's train and test splits share no 32-token span.
OVERLAP_SPAN = 32
N_SAMPLES = 128                       # GPTQ's and AWQ's papers: 128 windows
SEQ_LEN = 512                         # AWQ's code; GPTQ's paper uses 2048 (longer than small models' context)
SEED = 0


@dataclass
class Calibration:
    """The calibration windows (n, seq_len) and what the results record says about them."""
    source: str
    description: str
    licence: str
    text_sha256: str
    windows: torch.Tensor
    seed: int
    offsets: list[int] = field(default_factory=list)
    overlap: dict | None = None

    def record(self) -> dict:
        n, length = self.windows.shape
        return {"source": self.source, "description": self.description, "licence": self.licence,
                "text_sha256": self.text_sha256, "n_samples": n, "seq_len": length, "n_tokens": n * length,
                "seed": self.seed, "offsets_sha256": hashlib.sha256(str(self.offsets).encode()).hexdigest(),
                "overlap_check": self.overlap}


def auto_source(dataset: str, text_file: str | None) -> str:
    """The default calibration source: the scored dataset's train split from the Hub, or
    offline (a local scored file) the carried Wikipedia text."""
    return "enwiki" if text_file is not None else f"{dataset}-train"


def gutenberg_body(text: str) -> str:
    """A Project Gutenberg eBook without its header and licence: the text between the markers."""
    start = text.find("*** START OF")
    end = text.find("*** END OF")
    if start < 0 or end < 0:
        raise UserError("data/botchan/botchan.txt is not the Project Gutenberg eBook (no START/END markers)")
    return text[text.index("\n", start) + 1:end].strip()


def source_text(source: str, calib_file: str | None = None) -> tuple[str, str, str]:
    """(text, description, licence) of a named source or a local file."""
    from study.text import load_text, read_text_file
    if calib_file is not None:
        name = Path(calib_file).expanduser().name
        return read_text_file(calib_file), f"local file {name}", "as the file's own"
    if source == "enwiki":
        raw = ENWIKI.read_bytes()
        if hashlib.sha256(raw).hexdigest() != ENWIKI_SHA256:
            raise UserError(f"{ENWIKI} is not the carried file (its sha256 differs): "
                            "scripts/make_calibration_text.py rebuilds it")
        return (raw.decode("utf-8"), "English Wikipedia, April 2016, articles of page ids 10-30302 (gensim 4.4.0's "
                "test dump), as plain text by scripts/make_calibration_text.py", "CC BY-SA 3.0")
    if source == "botchan":
        raw = BOTCHAN.read_bytes()
        if hashlib.sha256(raw).hexdigest() != BOTCHAN_SHA256:
            raise UserError(f"{BOTCHAN} is not the carried file (its sha256 differs)")
        return (gutenberg_body(raw.decode("utf-8-sig")),
                "Botchan (Natsume Soseki, tr. Yasotaro Morri), Project Gutenberg eBook #8868, body only",
                "public domain in the US (Project Gutenberg License)")
    if source in ("wikitext2-train", "ptb-train"):
        t = load_text(source.split("-")[0], None, split="train")
        return t.text, t.description, "CC BY-SA 3.0 / GFDL" if source.startswith("wikitext2") else \
            "LDC user agreement (read from the Hub, not redistributed)"
    raise UserError(f"unknown calibration source '{source}' (choose {', '.join(CALIBRATION_SOURCES[1:])}, "
                    "or --calib-file PATH)")


def draw_windows(ids: torch.Tensor, n: int, seq_len: int, seed: int, low: int = 0) -> tuple[torch.Tensor, list]:
    """n windows of seq_len tokens from ids (N,), each at a seeded random offset in [low, N - seq_len]."""
    room = ids.numel() - seq_len - low
    if room < 0:
        raise UserError(f"the calibration text has {ids.numel() - low} tokens, fewer than one window of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    offsets = (low + torch.randint(0, room + 1, (n,), generator=g)).tolist()
    return torch.stack([ids[o:o + seq_len] for o in offsets]), offsets


def span_hashes(ids: np.ndarray, span: int) -> np.ndarray:
    """A 64-bit polynomial hash of every run of `span` consecutive tokens (uint64 arithmetic wraps)."""
    if ids.size < span:
        return np.zeros(0, dtype=np.uint64)
    base = np.uint64(1_000_003)
    powers = base ** np.arange(span - 1, -1, -1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        runs = np.lib.stride_tricks.sliding_window_view(ids.astype(np.uint64), span)
        return (runs * powers).sum(axis=1, dtype=np.uint64)


def check_disjoint(windows: torch.Tensor, scored: torch.Tensor, span: int = OVERLAP_SPAN) -> dict:
    """UserError if any calibration window shares `span` consecutive tokens with the scored ids
    (1, N) or (N,); else what was checked. A hash hit is confirmed on the tokens themselves."""
    s = scored.reshape(-1).cpu().numpy()
    hashes = span_hashes(s, span)
    where = {}
    for pos, hv in enumerate(hashes.tolist()):
        where.setdefault(hv, pos)
    for w, window in enumerate(windows.cpu().numpy()):
        for j, hv in enumerate(span_hashes(window, span).tolist()):
            pos = where.get(hv)
            if pos is not None and np.array_equal(window[j:j + span], s[pos:pos + span]):
                raise UserError(f"calibration window {w} shares {span} consecutive tokens with the scored text "
                                f"(scored position {pos}): calibration must not overlap the scored text; "
                                "choose another --calib-source or --calib-file")
    return {"span_tokens": span, "scored_tokens": int(s.size), "calibration_windows": int(windows.shape[0]),
            "shared_spans": 0}


def calibration_set(tokenizer, *, source: str, calib_file: str | None, n_samples: int, seq_len: int, seed: int,
                    scored_ids: torch.Tensor, full_text_ids: torch.Tensor | None = None) -> Calibration:
    """Draw the calibration windows and prove them disjoint from scored_ids (1, N).
    wikitext2-test-tail draws from full_text_ids (the scored text before its --max-tokens cut),
    after the last scored token."""
    from study.text import tokenize
    if source == "wikitext2-test-tail":
        if full_text_ids is None:
            raise UserError("--calib-source wikitext2-test-tail needs a local scored text (--text-file)")
        ids, low = full_text_ids.reshape(-1), scored_ids.shape[-1]
        text_sha = hashlib.sha256(ids.numpy().tobytes()).hexdigest()
        description, licence = "the scored text's tokens after the last scored one", "as the scored text"
    else:
        text, description, licence = source_text(source, calib_file)
        ids, low = tokenize(tokenizer, text).reshape(-1), 0
        text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    windows, offsets = draw_windows(ids, n_samples, seq_len, seed, low)
    cal = Calibration(f"file:{Path(calib_file).name}" if calib_file else source, description, licence, text_sha,
                      windows, seed, offsets)
    cal.overlap = check_disjoint(windows, scored_ids)
    return cal
