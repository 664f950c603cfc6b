#!/usr/bin/env python3
"""Add bits per byte and word perplexity, and each window's bytes, to results records written before the
evaluator computed them.

    python scripts/add_tokenizer_free.py                 # every results/*.json that lacks them
    python scripts/add_tokenizer_free.py --dry-run       # say what would change, write nothing

Both measures are the record's own total NLL (perplexity.mean_nll x n_tokens_scored) over
the bytes and the words of the text its scored tokens spell (study.perplexity.tokenizer_free,
the function the evaluator calls). That text is rebuilt here as the run built it: the record's
text file (its sha256 checked), tokenized by the folder of the record's model id, cut to the
record's max_tokens, and the token count checked against the record's. No model runs: the
numbers are those a rerun would write, to the last bit. Each record so completed says so
(perplexity.tokenizer_free_added_by), naming the folder's sha256 where it is not the record's
(the same stand-in built by another transformers release). A record whose text or model is
not here, or whose token count does not match, is left alone and named.

Each window's bytes (perplexity.windows.n_bytes: what pairs two models' windows by the text they
scored, study.noise.bpb_band) are added the same way to a record that keeps its windows, only
where the bytes rebuilt add up to the record's own n_bytes (perplexity.window_bytes_added_by).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import results  # noqa: E402
from study.cli import UserError, run_cli  # noqa: E402
from study.perplexity import tokenizer_free  # noqa: E402
from study.text import TextSource, load_text, tokenize  # noqa: E402

ADDED_BY = ("scripts/add_tokenizer_free.py, from this record's mean_nll and n_tokens_scored over the text its "
            "tokens spell (the record was written before the evaluator computed these)")


WINDOWS_ADDED_BY = ("scripts/add_tokenizer_free.py, from the text this record's windows scored, rebuilt as the "
                    "run built it (the record was written before the evaluator kept each window's bytes)")


def lacking(rec: dict) -> bool:
    ppl = rec.get("perplexity")
    if not isinstance(ppl, dict) or "mean_nll" not in ppl:
        return False
    return "bits_per_byte" not in ppl or bool(ppl.get("windows")) and "n_bytes" not in ppl["windows"]


@functools.lru_cache(maxsize=8)
def tokens(folder: str, text_file: str, max_tokens: int | None):
    """The model's tokenizer and the (1, N) ids the evaluator scored: study.text.tokenize's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok, tokenize(tok, source(text_file).text, max_tokens)


@functools.lru_cache(maxsize=2)
def source(text_file: str) -> TextSource:
    return load_text(text_file=text_file)


def completed(rec: dict, text_file: Path, models: Path) -> dict:
    """The record with its tokenizer-free measures added; ValueError says why it cannot be."""
    data, model = rec.get("dataset") or {}, rec.get("model") or {}
    if data.get("sha256") != source(str(text_file)).sha256:
        raise ValueError(f"its text ({data.get('id')}) is not {text_file.name}")
    folder = models / str(model.get("id"))
    if not folder.is_dir():
        raise ValueError(f"its model {model.get('id')} is not in {models}")
    tok, ids = tokens(str(folder), str(text_file), rec["eval"].get("max_tokens"))
    ppl = rec["perplexity"]
    if ids.shape[1] != ppl["n_tokens_total"]:
        raise ValueError(f"its {ppl['n_tokens_total']} tokens are {ids.shape[1]} here")
    # A stand-in built by another transformers release has other JSON files, so another folder
    # sha256, from the same GGUF and tokenizer: say which folder tokenized, and that the counts agree.
    here = results.model_identity(str(folder))["sha256"]
    how = ADDED_BY + ("" if here == model.get("sha256") else
                      f"; tokenized by a build of {model.get('id')} whose files differ (folder sha256 {here[:12]}...), "
                      f"with the record's {ppl['n_tokens_total']:,} tokens")
    free = tokenizer_free(ppl, tok, ids)
    if "bits_per_byte" not in ppl:
        return {**rec, "perplexity": {**ppl, **free, "tokenizer_free_added_by": how}}
    if free["n_bytes"] != ppl["n_bytes"]:
        raise ValueError(f"its scored text is {ppl['n_bytes']:,} bytes, {free['n_bytes']:,} here")
    return {**rec, "perplexity": {**ppl, "windows": free["windows"],
                                  "window_bytes_added_by": how.replace(ADDED_BY, WINDOWS_ADDED_BY)}}


def main(*, folder: str = "results", text_file: str = "data/wikitext-2-raw/wiki.test.raw",
         models: str = "models", dry_run: bool = False) -> list[Path]:
    """Complete every record under folder that lacks the measures; returns the files written."""
    if not Path(folder).is_dir():
        raise UserError(f"no results folder {folder}")
    source(text_file)                                   # a missing, empty or folder text file: one line, first
    written = []
    for path in sorted(Path(folder).glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not lacking(rec):
            continue
        try:
            new = completed(rec, Path(text_file), Path(models))
        except ValueError as e:
            print(f"left alone: {path.name}: {e}", file=sys.stderr)
            continue
        p = new["perplexity"]
        print(f"{path.name}: {p['bits_per_byte']:.4f} bits per byte, word perplexity {p['word_perplexity']:.2f}"
              + (f", {len(p['windows']['n_bytes'])} windows' bytes" if "n_bytes" in (p.get("windows") or {}) else ""))
        if not dry_run:
            results.write_json_atomic(path, new)
            written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="add_tokenizer_free.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="results", help="folder of results JSON (default: results)")
    p.add_argument("--text-file", default="data/wikitext-2-raw/wiki.test.raw",
                   help="the scored text the records name (its sha256 is checked; "
                        "default: the carried WikiText-2 test split)")
    p.add_argument("--models", default="models",
                   help="folder holding the records' models by id, as scripts/make_standins.py builds them "
                        "(default: models)")
    p.add_argument("--dry-run", action="store_true", help="print what would be added, write nothing")
    return p


if __name__ == "__main__":
    run_cli(main, build_parser())
