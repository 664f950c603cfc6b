"""The scored text: WikiText-2 or PTB from the Hub, or a local file, and its tokens.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from results import UserError
from study.cli import one_line

DATASETS = {
    # name: where load_text() finds its test split on the Hub, and how rows become one text.
    # ptb: the canonical id (the short 'ptb_text_only' is refused by huggingface_hub >= 1 as a
    # repo id); its main branch holds only a dataset script, which datasets >= 4 does not run,
    # so it is read from the parquet conversion, whose branch has penn_treebank/{split}/*.parquet
    # and no README (hence data_dir, not a config name).
    "wikitext2": dict(path="Salesforce/wikitext", name="wikitext-2-raw-v1", data_dir=None, revision=None,
                      split="test", column="text", joiner="\n\n"),
    "ptb": dict(path="ptb-text-only/ptb_text_only", name=None, data_dir="penn_treebank",
                revision="refs/convert/parquet", split="test", column="sentence", joiner="\n"),
}


# -----------------------------------------------------------------------------
# Text

@dataclass
class TextSource:
    id: str            # "wikitext2", "ptb" or "file:<path>"
    text: str
    description: str
    revision: str | None = None        # the Hub commit the split was read at

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def slug(self) -> str:
        return Path(self.id[5:]).stem if self.id.startswith("file:") else self.id


def read_text_file(path: str | os.PathLike) -> str:
    """Any local UTF-8 text; universal newlines turn CRLF and CR into '\\n'."""
    if str(path).strip() == "":
        raise UserError("--text-file is empty; give a file, or leave it out to read --dataset from the Hub")
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"text file '{path}' is a folder, not a text file")
    if not p.is_file():
        raise UserError(f"text file '{path}' does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"text file '{path}' is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise UserError(f"text file '{path}' is empty")
    return text


def load_text(dataset: str = "wikitext2", text_file: str | None = None, split: str | None = None) -> TextSource:
    """The evaluation text: a local file if given, else the named Hub test split (DATASETS);
    split names another split (calibrated/calibration.py reads the train split).

    wikitext2: Salesforce/wikitext, wikitext-2-raw-v1, test, rows joined by "\\n\\n".
    ptb: ptb-text-only/ptb_text_only, test, read from its parquet conversion (datasets>=4
    no longer runs dataset scripts), sentences joined by "\\n".
    The Hub's rows and a local file of the same corpus are not the same text (blank rows,
    joins), so their token counts and perplexities are not comparable (see the README).
    """
    if text_file is not None:
        name = Path(text_file).expanduser().name                  # the sha256 says which file; no machine path
        return TextSource(f"file:{name}", read_text_file(text_file), f"local file {name}")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset '{dataset}' (choose {', '.join(DATASETS)}, or --text-file PATH)")
    d = DATASETS[dataset]
    try:
        import datasets  # only when the Hub is used
    except ImportError:
        raise UserError("the 'datasets' package is needed for Hub datasets (pip install datasets), "
                        "or pass --text-file PATH") from None
    try:
        rows = datasets.load_dataset(d["path"], d["name"], data_dir=d["data_dir"],
                                     split=split or d["split"], revision=d["revision"])
    except Exception as e:  # datasets raises many types, for "offline" and for everything else
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}: {one_line(e, 120)}"
        raise UserError(f"cannot load dataset '{d['path']}' from the Hub ({why}); "
                        f"pass a local copy with --text-file PATH") from None
    described = " ".join(str(x) for x in (d["path"], d["name"] or d["data_dir"], split or d["split"]))
    name = dataset if split in (None, d["split"]) else f"{dataset}-{split}"
    return TextSource(name, d["joiner"].join(rows[d["column"]]), described,
                      hub_commit("dataset", d["path"], d["revision"]))


def hub_commit(kind: str, repo_id: str, revision: str | None = None, filename: str | None = None) -> str | None:
    """The commit the Hub resolved for a repo (what a result was measured at), or None when it
    cannot tell. A model is read from the local cache that the load just filled (no request);
    a dataset asks the Hub once."""
    try:
        if kind == "model":
            from huggingface_hub import try_to_load_from_cache
            path = try_to_load_from_cache(repo_id, filename or "config.json", revision=revision)
            return Path(path).parent.name if isinstance(path, str) and "snapshots" in path else None
        from huggingface_hub import HfApi
        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:                      # provenance only: never the reason a run fails
        return None


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """(1, N) token ids of the whole text, cut to the first max_tokens if given."""
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)  # silence the "longer than the model" warning
    try:
        ids = tokenizer(text, return_tensors="pt").input_ids
    finally:
        tokenizer.model_max_length = saved
    if max_tokens is not None:
        ids = ids[:, :max_tokens]
    if ids.shape[1] < 2:
        raise UserError("the text has fewer than 2 tokens: nothing to score")
    return ids
