#!/usr/bin/env python3
"""The one evaluation path of the study: memory, latency and perplexity.

Every method (the unquantized baseline, Part 1's from-scratch INT8, Part 2's
bitsandbytes modes, the GGUF bonus) is measured through the functions in this
file, so their numbers sit in one table. Run on its own, it evaluates the
unquantized baseline and writes one results JSON:

    python evaluate.py                                   # gpt2 from the Hub, WikiText-2
    python evaluate.py --model DIR --text-file wiki.test.raw --device cpu
    python evaluate.py --smoke                           # tiny offline model, ~1 minute

Assumptions, stated once:
- The model is a causal LM that `AutoModelForCausalLM` loads (Hub id or folder).
- Perplexity is corpus-level and token-weighted: the text is tokenized once,
  scored with sliding windows of `max_length` tokens moved by `stride`, and every
  token after the first is scored exactly once, with all the context its window
  allows. ppl = exp(sum of NLL / number of scored tokens).
- Memory is reported in MiB (2**20 bytes): (a) the bytes the parameters and
  buffers really occupy, by dtype, shared tensors (tied embeddings) counted
  once; (b) the size on disk once saved; (c) the peak device memory during
  evaluation (CUDA `max_memory_allocated` after a reset, or the peak rise of the
  process RSS on a CPU).
- Latency is warmed up, synchronized, and reported as median, p10 and p90.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import results
from results import UserError  # noqa: F401  (every script raises ev.UserError for a user's mistake)

MiB = 2**20
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


MAX_LENGTH_CAP = 1024       # the default window: min(model context, this)
STRIDE_CAP = 512            # the default stride: min(this, window)


def default_stride(max_length: int) -> int:
    return min(STRIDE_CAP, max_length)


@dataclass(frozen=True)
class EvalConfig:
    """How a model is measured; the same for every method of one comparison. The one place
    where each default is declared: the CLI flags, latency() and the benches read them from
    DEFAULTS. Frozen: resolve() and dataclasses.replace() return a new config."""
    max_length: int | None = None      # None: min(model context, MAX_LENGTH_CAP)
    stride: int | None = None          # None: default_stride(max_length)
    max_tokens: int | None = None
    per_line: int = 3000               # 0 skips the per-sample aggregation
    prefill_tokens: int = 512
    prompt_tokens: int = 32
    new_tokens: int = 128
    repeats: int = 10
    warmup: int = 2
    skip_latency: bool = False
    skip_disk: bool = False

    def resolve(self, context: int | None) -> "EvalConfig":
        """A copy with the window defaults filled from the model's context."""
        length = self.max_length if self.max_length is not None else min(context or MAX_LENGTH_CAP, MAX_LENGTH_CAP)
        return replace(self, max_length=length,
                       stride=self.stride if self.stride is not None else default_stride(length))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EvalConfig":
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__ if hasattr(args, k)})


DEFAULTS = EvalConfig()


# -----------------------------------------------------------------------------
# Errors: a user's mistake is one line on stderr and a non-zero exit.

def run_cli(main: Callable[..., object], parser: argparse.ArgumentParser, argv=None) -> None:
    """Parse argv, call main(**args), and turn a UserError into one clean line."""
    def one_line_error(message: str):                 # argparse's usage + error is two lines
        print(f"{parser.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        main(**vars(args))
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished results files are kept", file=sys.stderr)
        sys.exit(130)


def with_defaults(parser: argparse.ArgumentParser, kwargs: dict) -> argparse.Namespace:
    """main(**kwargs) takes the CLI's flags as keywords; missing ones get the CLI defaults."""
    args = parser.parse_args([])
    unknown = set(kwargs) - set(vars(args))
    if unknown:
        raise TypeError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    vars(args).update(kwargs)
    if isinstance(getattr(args, "model", None), str):
        args.model = expand_model_id(args.model)           # '--model=~/x' reaches us unexpanded
    for key in PATH_FLAGS:                                 # so is '--out=~/r.json': check and write one path
        value = getattr(args, key, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, str(Path(value).expanduser()))
    return args


PATH_FLAGS = ("text_file", "results_dir", "out", "save", "gguf_dir", "inspect", "figures", "figures_dir",
              "report", "results")


# -----------------------------------------------------------------------------
# Output locations: checked before any work, so a long run never fails at its last step.

def _first_existing(path: Path) -> Path:
    """The nearest folder above path that exists; a broken symbolic link on the way is an error
    (the write would fail there, after the work)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        if p.is_symlink():
            raise UserError(f"'{p}' is a broken symbolic link, on the way to '{path}'")
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder the run will write into: a folder already, or one that can be made, where a
    file can really be created (a probe file, removed at once: root passes os.access
    everywhere, /sys and read-only mounts do not take files)."""
    if str(path).strip() == "":
        raise UserError(f"{flag} is empty; give a folder")
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise UserError(f"{flag} '{path}' is a broken symbolic link")
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} '{path}' is a file, not a folder")
    base = _first_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag} '{path}' cannot be made: '{base}' is a file")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".qstudy-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{flag} '{path}' cannot be written: {e.strerror or type(e).__name__} in '{base}'") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str, kind: str = "results") -> Path:
    """A file the run will (re)write: not a folder, in a folder that exists or can be made,
    and, if it exists, a file of the kind this run writes (a results JSON, a PDF): never a
    model's weights, a text or anything else that a slip of the keyboard named."""
    if str(path).strip() == "":
        raise UserError(f"{flag} is empty; give a file name")
    if str(path).endswith(("/", os.sep)):                 # Path() would drop the slash
        raise UserError(f"{flag} '{path}' ends with '/'; give a file name")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} '{path}' is a folder; give a file name")
    if path.exists() and not is_output_of_kind(path, kind):
        raise UserError(f"{flag} '{path}' exists and is not a {kind} file this project wrote; "
                        f"nothing is overwritten (give a new name)")
    check_output_dir(path.parent, f"{flag}'s folder")
    return path


def is_output_of_kind(path: Path, kind: str) -> bool:
    """Whether an existing file is one this project may replace: a results JSON (an object
    with schema_version) or a PDF."""
    try:
        with open(path, "rb") as f:
            if kind == "pdf":
                return f.read(5) == b"%PDF-"
            if path.stat().st_size > 64 * MiB:            # no results file is that big: never read it all
                return False
            rec = json.loads(f.read().decode("utf-8"))
        return isinstance(rec, dict) and "schema_version" in rec
    except (OSError, ValueError):
        return False


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether path is folder itself or lies inside it (both resolved, ~ expanded)."""
    p, f = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return p == f or f in p.parents


def is_model_folder(path: str | os.PathLike, model_id: str) -> bool:
    """Whether path is the local model's own folder (never for a Hub id)."""
    model = Path(model_id).expanduser()
    return model.is_dir() and Path(path).expanduser().resolve() == model.resolve()


def check_out_outside_save(out: str | None, save: str) -> None:
    """--out inside --save would be overwritten by the save (Part 1 and Part 2)."""
    if out is not None and within(out, save):
        raise UserError("--out is inside --save: the save would overwrite it; put the results elsewhere")


def check_new_folder(path: str | os.PathLike, flag: str, model_id: str | None = None) -> Path:
    """A folder a save writes into: new or empty, never the model's own folder, so that no
    file the run did not make is overwritten."""
    path = Path(path).expanduser()
    check_output_dir(path, flag)
    if model_id is not None and is_model_folder(path, model_id):
        raise UserError(f"{flag} '{path}' is the model's own folder: saving there would overwrite its weights")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{flag} '{path}' is not empty; choose a new folder (nothing is overwritten)")
    return path


# -----------------------------------------------------------------------------
# Loading

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")   # accelerate's strategies


def resolve_device(device: str, flag: str = "--device") -> torch.device:
    """'auto' -> cuda if there is one, else cpu. Asking for cuda without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m:
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {device} asked for, but this machine has no CUDA GPU (use {flag} cpu)")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise UserError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.device(device)
    if device != "cpu":
        raise UserError(f"unknown device '{device}' (choose auto, cpu, cuda or cuda:N)")
    return torch.device(device)


def check_device_map(device_map: str | None) -> None:
    """--device-map: one of accelerate's strategies, or one device for the whole model."""
    if device_map is None or isinstance(device_map, dict) or device_map in DEVICE_MAPS:
        return                                        # a dict is a map the code built itself
    if device_map == "cpu" or device_map.startswith("cuda"):
        resolve_device(device_map, "--device-map")
        return
    raise UserError(f"unknown --device-map '{device_map}' (choose {', '.join(DEVICE_MAPS)}, cpu or cuda[:N])")


def looks_like_path(model_id: str) -> bool:
    """A Hub id is 'name' or 'org/name'; anything else, or anything that exists, is a path."""
    return (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
            or Path(model_id).expanduser().exists())


def expand_model_id(model_id: str) -> str:
    """'~/models/x' -> '/home/me/models/x' (the shell does not expand '--model=~/x'); a Hub id as is."""
    return str(Path(model_id).expanduser()) if model_id.startswith("~") else model_id


def model_context(config) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def describe_model(model_id: str, model) -> dict:
    """Where the weights came from: a local folder (with its content hash), or a Hub id at a revision."""
    path = Path(model_id).expanduser()
    local = path.exists()
    return {
        "id": model_id,                                  # results.portable_model() names a folder by its name
        "local": local,
        "sha256": results.model_identity(model_id)["sha256"] if local else None,
        "revision": None if local else (getattr(model.config, "_commit_hash", None)
                                        or hub_commit("model", model_id)),
        "class": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "n_params": sum(p.numel() for p in model.parameters()),
        "context": model_context(model.config),
    }


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt",
                   "sentencepiece.bpe.model")


def safetensors_header(path: Path) -> tuple[dict, int]:
    """A .safetensors file's header (every tensor's byte range, and __metadata__) and its
    length: 8 bytes of length, then that much JSON. ValueError if it is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise ValueError("no safetensors header")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("no safetensors header")
    return header, n


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (cut short, not safetensors), or None. Reads
    only its header."""
    size = path.stat().st_size
    try:
        header, n = safetensors_header(path)
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"'{path}' is not a readable safetensors file"
    if size < 8 + n + end:
        return f"'{path}' is cut short ({size:,} bytes; its header needs {8 + n + end:,}): copy or download it again"
    return None


def saved_quantization(folder: Path) -> str | None:
    """What quantized the model saved in folder, or None for a plain (float) model:
    Part 1's --save writes its spec into model.safetensors' metadata; a bitsandbytes (or
    any other transformers) quantized save writes quantization_config into config.json."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    q = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(q, dict):
        bits = "4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit") else None
        return str(q.get("quant_method", "a quantization library")) + (f" ({bits})" if bits else "")
    weights = folder / "model.safetensors"
    meta = {}
    if weights.is_file():
        try:
            meta = safetensors_header(weights)[0].get("__metadata__") or {}
        except ValueError:                                # not whole: check_model_source says so
            pass
    return "part1_quantize_scratch.py (--save)" if "quant_spec" in meta else None


def check_model_source(model_id: str, need_tokenizer: bool = False) -> None:
    """A local path must be a folder that holds a whole, unquantized saved model; a Hub id
    is tried as is. Reads only small files and headers, so it takes well under a second."""
    path = Path(model_id).expanduser()
    if looks_like_path(model_id) and not path.exists():
        raise UserError(f"model path '{model_id}' does not exist")
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"--model '{model_id}' is a file, not a model folder (one written by save_pretrained)")
    if not (path / "config.json").is_file():
        raise UserError(f"'{model_id}' is not a saved model (no config.json in it)")
    quantized = saved_quantization(path)
    if quantized:
        hint = " (part1_quantize_scratch.load_quantized() reloads it in Python)" if "part1" in quantized else ""
        raise UserError(f"'{model_id}' holds a model already quantized by {quantized}; give the original "
                        f"float model{hint}")
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise UserError(f"'{model_id}' has no weights (no *.safetensors or *.bin file in it)")
    for w in weights:
        if w.suffix == ".safetensors" and (problem := safetensors_problem(w)):
            raise UserError(problem)
    if need_tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"'{model_id}' has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...): "
                        f"save the tokenizer beside the model (tokenizer.save_pretrained(DIR))")


def load_config(model_id: str):
    """The model's config alone: cheap, so settings are checked before a long load.
    It must be a causal LM that AutoModelForCausalLM loads."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    check_model_source(model_id)
    try:
        config = AutoConfig.from_pretrained(model_id)
    except OSError as e:
        raise UserError(unreachable_message(model_id, e)) from None
    except ValueError as e:
        raise UserError(f"'{model_id}' is not a model transformers can load ({one_line(e)})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"'{model_id}' is a '{config.model_type}' model, not a causal language model "
                        f"(AutoModelForCausalLM has no class for it)")
    return config


def skeleton(model_id: str, config=None):
    """The model's modules with no weights (on the meta device): its layers' shapes, for
    checking settings against the architecture before the weights load."""
    from transformers import AutoModelForCausalLM
    config = config or load_config(model_id)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    check_model_source(model_id, need_tokenizer=True)
    try:
        return AutoTokenizer.from_pretrained(model_id)
    except OSError as e:
        raise UserError(unreachable_message(model_id, e)) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"cannot load the tokenizer of '{model_id}' ({one_line(e)})") from None


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's first line, cut to limit characters (for one-line error messages)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def unreachable_message(model_id: str, e: Exception) -> str:
    if Path(model_id).expanduser().exists():
        return f"cannot load '{model_id}' ({one_line(e)})"
    return (f"cannot load '{model_id}' from the Hub ({one_line(e)}). Without Hub access, pass a local copy "
            f"with --model DIR (a folder saved by save_pretrained)")


def load_model(model_id: str, dtype: str = "float32", device: str = "auto",
               device_map: str | None = None, **from_pretrained_kwargs):
    """Load (model, tokenizer) for evaluation, in eval mode, on the asked device.

    device_map='auto' lets accelerate shard a model that one GPU cannot hold;
    the inputs then go to the device of the first layer (see input_device()).
    Extra keywords (e.g. quantization_config) go to from_pretrained.
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}' (choose {', '.join(DTYPES)})")
    dev = resolve_device(device)
    check_device_map(device_map)
    load_config(model_id)                       # a causal LM, whole, not already quantized
    tokenizer = load_tokenizer(model_id)
    kwargs = dict(dtype=DTYPES[dtype], **from_pretrained_kwargs)
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    except OSError as e:
        raise UserError(unreachable_message(model_id, e)) from None
    except (ValueError, RuntimeError) as e:     # e.g. weights that do not fit the config
        raise UserError(f"cannot load the weights of '{model_id}' ({one_line(e)})") from None
    if not device_map and "quantization_config" not in from_pretrained_kwargs:
        model.to(dev)
    model.eval()
    return model, tokenizer


def input_device(model) -> torch.device:
    """Where inputs go: the first parameter's device (the embedding's, under a device_map);
    the CPU for a model that is not torch (bonus_gguf's llama.cpp model)."""
    if not hasattr(model, "parameters"):
        return torch.device("cpu")
    return next(model.parameters()).device


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


def load_text(dataset: str = "wikitext2", text_file: str | None = None) -> TextSource:
    """The evaluation text: a local file if given, else the named Hub test split (DATASETS).

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
        rows = datasets.load_dataset(d["path"], d["name"], data_dir=d["data_dir"], split=d["split"],
                                     revision=d["revision"])
    except Exception as e:  # datasets raises many types, for "offline" and for everything else
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}: {one_line(e, 120)}"
        raise UserError(f"cannot load dataset '{d['path']}' from the Hub ({why}); "
                        f"pass a local copy with --text-file PATH") from None
    described = " ".join(str(x) for x in (d["path"], d["name"] or d["data_dir"], d["split"]))
    return TextSource(dataset, d["joiner"].join(rows[d["column"]]), described,
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


# -----------------------------------------------------------------------------
# Perplexity

def window_plan(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows as (begin, end, score_from). Window inputs are ids[begin:end]
    (at most max_length tokens) and predict the targets ids[begin+1:end+1]; the
    window scores the targets at positions score_from..end. Windows start every
    `stride` tokens; each scores only targets no earlier window scored, so every
    position 1..n_tokens-1 is scored exactly once (position 0 has no context), with
    the most context any window gives it. stride == max_length is the usual
    non-overlapping evaluation, and then no token is lost at window edges."""
    plan, last = [], 0                       # last: the last target position scored so far
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + max_length, n_tokens - 1)
        plan.append((begin, end, last + 1))
        last = end
        if end == n_tokens - 1:
            break
    return plan


def check_windows(max_length: int, stride: int, context: int | None) -> None:
    if max_length < 2:
        raise UserError(f"--max-length must be at least 2 (got {max_length})")
    if context is not None and max_length > context:
        raise UserError(f"--max-length {max_length} is longer than the model's context of {context} tokens")
    if stride <= 0 or stride > max_length:
        raise UserError(f"--stride must be in 1..max-length ({max_length}); got {stride}")


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood in float32. logits (..., V), targets (...)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(targets.shape)


@torch.no_grad()
def perplexity(model, input_ids: torch.Tensor, max_length: int, stride: int,
               progress: bool = True) -> dict:
    """Corpus-level, token-weighted sliding-window perplexity of input_ids (1, N)."""
    check_windows(max_length, stride, model_context(model.config))
    dev = input_device(model)  # under a device_map, the embedding's device
    ids = input_ids[0]
    plan = window_plan(ids.numel(), max_length, stride)
    nll_sum, n_scored = 0.0, 0
    from tqdm.auto import tqdm
    for begin, end, score_from in tqdm(plan, desc="perplexity", unit="win", disable=not progress,
                                       file=sys.stderr):
        window = ids[begin:end + 1].to(dev)                         # (T+1,) inputs and targets
        logits = model(window[None, :-1], use_cache=False).logits[0]  # (T, V): row j predicts window[j+1]
        first = score_from - begin - 1                             # row that predicts score_from
        nll = token_nll(logits[first:], window[first + 1:])
        nll_sum += nll.double().sum().item()
        n_scored += nll.numel()
    mean_nll = nll_sum / n_scored
    if not math.isfinite(mean_nll) or mean_nll > 700:      # exp() would overflow: no number to report
        half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16) if hasattr(model, "parameters") \
            else False
        raise UserError(f"the model's loss is not finite ({mean_nll:.4g}): its weights or activations hold NaN "
                        f"or infinity" + (" (in half precision, try --dtype float32)" if half else ""))
    return {"ppl": math.exp(mean_nll), "mean_nll": mean_nll, "n_tokens_scored": n_scored,
            "n_tokens_total": ids.numel(), "n_windows": len(plan), "max_length": max_length,
            "stride": stride, "aggregation": "corpus-level, token-weighted: exp(sum NLL / tokens)"}


@torch.no_grad()
def per_line_perplexity(model, tokenizer, text: str, n_lines: int = 3000, max_length: int = 1024,
                        max_tokens: int | None = None, batch_size: int = 16,
                        progress: bool = True) -> dict:
    """The sample report's aggregation, kept for comparison only: the plain mean of
    per-line perplexities over the first n_lines non-empty lines (each line scored
    alone, cut to max_length tokens). Short lines weigh as much as long ones, so it
    is not a corpus perplexity. Lines of one token have nothing to score and are
    skipped; with max_tokens, lines stop once that many tokens were used."""
    lines = [ln for ln in text.splitlines() if ln.strip()][:n_lines]
    encoded, used = [], 0
    for line in lines:
        ids = tokenizer(line).input_ids[:max_length]
        if max_tokens is not None and used + len(ids) > max_tokens:
            break
        used += len(ids)
        if len(ids) >= 2:
            encoded.append(ids)
    dev = input_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths batch well
    ppls = [0.0] * len(encoded)
    from tqdm.auto import tqdm
    for start in tqdm(range(0, len(order), batch_size), desc="per-line", unit="batch",
                      disable=not progress, file=sys.stderr):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):                              # right padding
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        logits = model(ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (B, W-1, V)
        nll = token_nll(logits, ids[:, 1:]) * mask[:, 1:]
        per_line = nll.double().sum(1) / mask[:, 1:].sum(1)
        for row, i in enumerate(idx):
            x = per_line[row].item()
            ppls[i] = math.exp(x) if x < 700 else math.inf     # exp() overflows a float past ~709
    finite = bool(ppls) and all(math.isfinite(p) for p in ppls)
    return {"mean_of_line_ppl": statistics.fmean(ppls) if finite else None,   # None: no line, or one overflows
            "median_of_line_ppl": statistics.median(ppls) if ppls and finite else None,
            "n_lines_overflowing": sum(not math.isfinite(p) for p in ppls),
            "n_lines": len(ppls), "n_lines_asked": n_lines, "max_length": max_length,
            "label": "per-sample aggregation of the sample report (mean of per-line perplexities); "
                     "not comparable with the corpus perplexity"}


# -----------------------------------------------------------------------------
# Memory

def storage_key(t: torch.Tensor) -> tuple:
    """Equal for two names of one tensor (tied weights), so it is counted or saved once."""
    return (t.device, t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))


def quant_state_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Tensors that bitsandbytes hangs on a quantized parameter instead of registering:
    a 4-bit weight's quant_state (absmax, code, and with double quantization the
    second-level absmax and code) and an 8-bit weight's row scales (SCB)."""
    out = []
    qs = getattr(t, "quant_state", None)
    while qs is not None:
        out += [x for x in (getattr(qs, "absmax", None), getattr(qs, "code", None),
                            getattr(qs, "offset", None)) if isinstance(x, torch.Tensor)]
        qs = getattr(qs, "state2", None)
    scb = getattr(t, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def _unique_tensors(model: torch.nn.Module):
    """(module name, module, tensor name, tensor, role) for every tensor of the model,
    each storage once (tied wte/lm_head), meta tensors skipped. role is 'tensor' or
    'quant_state' (bitsandbytes' unregistered statistics)."""
    seen = set()
    for mname, module in model.named_modules():
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        # LLM.int8() moves its row scales from the weight to module.state at the first forward;
        # state.CB is the int8 weight itself (same storage, so counted once, as the weight).
        state = getattr(module, "state", None)
        own += [(f"state.{k}", v) for k in ("CB", "SCB") if isinstance(v := getattr(state, k, None), torch.Tensor)]
        for tname, t in own:
            role0 = "quant_state" if tname.startswith("state.") else "tensor"
            for x, role in [(x, role0) for x in flat_tensors(t)] + [(q, "quant_state") for q in quant_state_tensors(t)]:
                if x is None or x.device.type == "meta":
                    continue
                key = storage_key(x)
                if key in seen:
                    continue
                seen.add(key)
                yield mname, module, tname, x, role


def flat_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """A traceable tensor subclass (torchao's quantized weights) as the plain tensors it holds
    (its int8 values, scales, zero points), whose storage can be read; a plain tensor as itself."""
    if hasattr(type(t), "__tensor_flatten__"):
        return [x for n in type(t).__tensor_flatten__(t)[0] for x in flat_tensors(getattr(t, n))]
    return [t]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def tensor_bytes(model: torch.nn.Module) -> dict:
    """Bytes that the parameters, buffers and bitsandbytes quantization statistics
    occupy, by dtype; a storage shared by several names (tied wte/lm_head) is
    counted once. Tensors on the meta device (not materialized) are skipped."""
    by_dtype = {}
    for *_, t, _role in _unique_tensors(model):
        name = str(t.dtype).replace("torch.", "")
        by_dtype[name] = by_dtype.get(name, 0) + nbytes(t)
    total = sum(by_dtype.values())
    return {"bytes": total, "mib": total / MiB, "by_dtype_bytes": dict(sorted(by_dtype.items()))}


QUANT_WEIGHT_NAMES = ("weight", "qweight", "packed")
QUANT_STAT_NAMES = ("scale", "zero_point", "absmax", "SCB")


def memory_breakdown(model: torch.nn.Module) -> dict:
    """Bytes by role, each tensor once, for any model (float, Part 1, bitsandbytes):
    - quantized_weights: integer weights (int8, packed 4-bit as uint8);
    - scales_and_zero_points: what dequantizes them (scales, zero points, block
      absmax, bitsandbytes' quant_state and double-quantization statistics);
    - full_precision: every floating tensor left as it was, split into embeddings,
      the output layer, norms, biases and other (e.g. unquantized linear layers)."""
    out = {"quantized_weights": 0, "scales_and_zero_points": 0, "full_precision": 0}
    detail = {"embeddings": 0, "output_layer": 0, "norms": 0, "biases": 0, "other": 0}
    out_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for mname, module, tname, t, role in _unique_tensors(model):
        if role == "quant_state" or (tname in QUANT_STAT_NAMES and _holds_int_weight(module)):
            out["scales_and_zero_points"] += nbytes(t)
        elif tname in QUANT_WEIGHT_NAMES and not t.is_floating_point():
            out["quantized_weights"] += nbytes(t)
        else:
            out["full_precision"] += nbytes(t)
            is_norm = "norm" in type(module).__name__.lower() or re.search(r"(^|\.)(ln|norm)", mname)
            sub = ("norms" if is_norm else "biases" if tname == "bias"
                   else "output_layer" if module is out_layer
                   else "embeddings" if isinstance(module, torch.nn.Embedding) else "other")
            detail[sub] += nbytes(t)
    return {**out, "full_precision_detail": detail, "total": sum(out.values())}


def _holds_int_weight(module: torch.nn.Module) -> bool:
    return any(not t.is_floating_point() for n, t in
               list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
               if n in QUANT_WEIGHT_NAMES)


def disk_bytes(save: Callable[[str], None]) -> int:
    """Size on disk of everything save(folder) writes (weights, config, tokenizer excluded)."""
    with tempfile.TemporaryDirectory(prefix="qstudy-size-") as d:
        save(d)
        return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def _rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak device memory inside a `with` block.

    CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats()
    (what is allocated in total at the peak, weights included). CPU: the peak
    rise of the process RSS over its value at entry, read from the kernel's
    high-water mark (VmHWM after a reset through /proc/self/clear_refs) where
    Linux allows, else sampled every 2 ms by a thread."""

    def __init__(self, device: torch.device):
        self.device, self.kind, self.peak_bytes = device, None, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max_memory_allocated"
            return self
        self.start = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            self.kind = "cpu peak RSS rise (VmHWM)"
        except OSError:
            self.kind, self._peak, self._stop = "cpu peak RSS rise (sampled)", self.start, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.kind.endswith("(VmHWM)"):
            hwm = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
            self.peak_bytes = max(0, hwm * 1024 - self.start)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(0, max(self._peak, _rss_bytes()) - self.start)
        return False


# -----------------------------------------------------------------------------
# Latency

def summarize(samples: list[float]) -> dict:
    """Median with p10/p90 (linear interpolation) of a list of timings."""
    xs = sorted(samples)

    def q(p: float) -> float:
        k = (len(xs) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"median": q(0.5), "p10": q(0.1), "p90": q(0.9), "min": xs[0], "max": xs[-1], "n": len(xs)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock ms of fn() per repeat, after warmup calls, synchronized on CUDA."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def greedy_config(tokenizer, new_tokens: int):
    """A generation config that decodes exactly new_tokens greedily, whatever the model's defaults."""
    from transformers import GenerationConfig
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            num_beams=1, pad_token_id=pad if pad is not None else 0,
                            eos_token_id=tokenizer.eos_token_id)


def timing_inputs(input_ids: torch.Tensor, prefill_tokens: int, prompt_tokens: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The text's first tokens (repeated if the text is shorter) as a (1, prefill_tokens)
    prefill input and a (1, prompt_tokens) decode prompt."""
    ids = input_ids.reshape(-1)
    need = max(prefill_tokens, prompt_tokens)
    ids = ids.repeat(need // ids.numel() + 1)[:need]
    return ids[:prefill_tokens][None].to(device), ids[:prompt_tokens][None].to(device)


def hf_calls(model, tokenizer, prefill_ids: torch.Tensor, prompt: torch.Tensor, new_tokens: int,
             setup: Callable[[], None] | None = None) -> dict:
    """The two timed calls, as users make them: a forward pass without cache (prefill)
    and greedy generate() of exactly new_tokens (decode). setup() runs first, untimed
    in spirit but cheap (e.g. switching a kernel path)."""
    gen = greedy_config(tokenizer, new_tokens)
    mask = torch.ones_like(prompt)

    def prefill():
        setup and setup()
        return model(prefill_ids, use_cache=False)

    def decode():
        setup and setup()
        return model.generate(prompt, attention_mask=mask, generation_config=gen)
    return {"prefill": prefill, "decode": decode}


def check_timing_lengths(model, prefill_tokens: int, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    """check_latency_fits() against a loaded model (the benches, which time without prepare())."""
    check_latency_fits(EvalConfig(prefill_tokens=prefill_tokens, prompt_tokens=prompt_tokens,
                                  new_tokens=new_tokens), model_context(model.config))
    check_at_least(("--repeats", repeats, 1))


@torch.no_grad()
def latency(model, tokenizer, input_ids: torch.Tensor, prefill_tokens: int = DEFAULTS.prefill_tokens,
            prompt_tokens: int = DEFAULTS.prompt_tokens, new_tokens: int = DEFAULTS.new_tokens,
            repeats: int = DEFAULTS.repeats, warmup: int = DEFAULTS.warmup) -> dict:
    """Prefill: one forward pass of 1 x prefill_tokens. Decode: greedy generate() of
    new_tokens after a prompt_tokens prompt, in ms per new token (the total time
    divided by new_tokens, so it includes the one prompt pass). Both use the
    evaluated text's first tokens, repeated if the text is shorter."""
    check_timing_lengths(model, prefill_tokens, prompt_tokens, new_tokens, repeats)
    dev = input_device(model)
    prefill_ids, prompt = timing_inputs(input_ids, prefill_tokens, prompt_tokens, dev)
    calls = hf_calls(model, tokenizer, prefill_ids, prompt, new_tokens)
    return timed_latency(calls, dev, prefill_tokens, prompt_tokens, new_tokens, repeats, warmup,
                         DECODE_DEFINITION, torch.get_num_threads())


DECODE_DEFINITION = "generate() wall time / new tokens (greedy, includes the prompt pass)"


def timed_latency(calls: dict, device: torch.device, prefill_tokens: int, prompt_tokens: int, new_tokens: int,
                  repeats: int, warmup: int, definition: str, threads: int | None) -> dict:
    """Time calls["prefill"] and calls["decode"] (which makes new_tokens tokens) and
    return the results JSON's latency block: medians with spread, decode per token."""
    prefill_ms = time_call(calls["prefill"], device, repeats, warmup)
    total_ms = time_call(calls["decode"], device, repeats, warmup)
    return {"unit": "ms",
            "prefill": {"tokens": prefill_tokens, **summarize(prefill_ms)},
            "decode": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "definition": definition,
                       "ms_per_token": summarize([t / new_tokens for t in total_ms])},
            "repeats": repeats, "warmup": warmup, "threads": threads}


@torch.no_grad()
def side_by_side(methods: dict[str, dict], device: torch.device, new_tokens: int, repeats: int,
                 warmup: int, baseline: str, progress: bool = True) -> dict:
    """Time several methods in one process, round-robin: each repeat times every
    method once in turn, so drift and noise (other processes, clocks, caches) fall
    on all of them alike. methods[name] = {"prefill": fn, "decode": fn,
    "weights_mib": float, ...}; the decode call produces new_tokens tokens.
    Ratios are medians over the baseline's median."""
    from tqdm.auto import tqdm
    samples = {k: {"prefill": [], "decode": []} for k in methods}
    for what in ("prefill", "decode"):
        for name, m in methods.items():
            time_call(m[what], device, repeats=0, warmup=warmup)
        for _ in tqdm(range(repeats), desc=f"side by side: {what}", file=sys.stderr, disable=not progress):
            for name, m in methods.items():
                t = time_call(m[what], device, repeats=1, warmup=0)[0]
                samples[name][what].append(t / (new_tokens if what == "decode" else 1))
    table = {}
    for name, m in methods.items():
        table[name] = {"prefill_ms": summarize(samples[name]["prefill"]),
                       "decode_ms_per_token": summarize(samples[name]["decode"]),
                       **{k: v for k, v in m.items() if k not in ("prefill", "decode")}}
    base = table[baseline]
    for row in table.values():
        row["prefill_ratio"] = row["prefill_ms"]["median"] / base["prefill_ms"]["median"]
        row["decode_ratio"] = row["decode_ms_per_token"]["median"] / base["decode_ms_per_token"]["median"]
    return {"table": table, "baseline": baseline, "repeats": repeats, "warmup": warmup,
            "order": f"round-robin: each repeat times {', '.join(methods)} in turn"}


def side_by_side_text(result: dict, prefill_tokens: int) -> str:
    """The side-by-side table for the terminal: median [p10-p90] and ratio to the baseline."""
    w = max(16, *map(len, result["table"]))
    spread = lambda s, f: f"{s['median']:{f}} [{s['p10']:{f}}-{s['p90']:{f}}]"     # noqa: E731
    rows = [(name, spread(r["prefill_ms"], ".2f"), spread(r["decode_ms_per_token"], ".3f"), r)
            for name, r in result["table"].items()]
    wp = max(len(f"prefill 1x{prefill_tokens} ms"), *(len(p) for _, p, _, _ in rows))
    wd = max(len("decode ms/token"), *(len(d) for _, _, d, _ in rows))
    lines = [f"{'method':<{w}} {'prefill 1x' + str(prefill_tokens) + ' ms':>{wp}} {'ratio':>6} "
             f"{'decode ms/token':>{wd}} {'ratio':>6} {'weights MiB':>12}"]
    for name, p, d, row in rows:
        mib = row.get("weights_mib")
        lines.append(f"{name:<{w}} {p:>{wp}} {row['prefill_ratio']:>6.2f} {d:>{wd}} {row['decode_ratio']:>6.2f} "
                     f"{'' if mib is None else format(mib, '.1f'):>12}")
    lines.append(f"ratios: median over {result['baseline']}'s median; {result['order']}")
    return "\n".join(lines)


def save_timing_record(kind: str, name: str, settings: dict, model_info: dict, source: "TextSource",
                       result: dict, args: argparse.Namespace, device: torch.device,
                       key_fields: tuple[str, ...]) -> "results.Record":
    """Write a timing run's result as a record of `kind`, the result in the block of that name
    (bench, anatomy): args.out, or <name>__<model>__<device>__<hash>.json under
    args.results_dir, the hash over the text, the settings and the result's key_fields.
    Returns the record (its .path set)."""
    record = results.new_record(
        kind, name, settings, {**model_info, "stand_in": args.stand_in,
                               "random_weights": bool(getattr(args, "random_weights", False))},
        device, dataset={"id": source.id, "sha256": source.sha256}, smoke=args.smoke, **{kind: result})
    out = Path(args.out) if args.out else results.result_path(
        args.results_dir, name, args.model, [device.type],
        {"text": source.sha256, "settings": settings, kind: {k: result.get(k) for k in key_fields}}, args.smoke)
    return results.write(record, out)


def save_side_by_side(name: str, settings: dict, model_info: dict, source: "TextSource", result: dict,
                      args: argparse.Namespace, device: torch.device) -> "results.Record":
    """Write a side-by-side bench (Part 1's and Part 2's --bench, fast_decode) as a results
    record of kind 'bench', print its table, return the record (its .path set)."""
    record = save_timing_record("bench", name, settings, model_info, source, result, args, device,
                                ("prefill_tokens", "prompt_tokens", "new_tokens", "repeats", "warmup"))
    out = record.path
    threads = f", {result['threads']} threads" if result.get("threads") and device.type == "cpu" else ""
    print(f"side by side on {record['environment']['device_name']}{threads}, {result['repeats']} round-robin "
          f"repeats (median [p10-p90]):")
    print(side_by_side_text(result, result["prefill_tokens"]))
    print(f"wrote {out}")
    return record


# -----------------------------------------------------------------------------
# Results

def run_path(results_dir: str | os.PathLike, method: str, model_id: str, source: TextSource,
             cfg: EvalConfig, smoke: bool = False, device: str = "cpu", settings: dict | None = None) -> Path:
    """results/<method>__<model>__<text>__L<max_length>-S<stride>[-T<max_tokens>]__<device>__<hash>.json"""
    tag = f"L{cfg.max_length}-S{cfg.stride}" + (f"-T{cfg.max_tokens}" if cfg.max_tokens else "")
    key = {"text": source.sha256, "eval": asdict(cfg), "device": device, "settings": settings}
    return results.result_path(results_dir, method, model_id, [source.slug, tag, device], key, smoke)


def evaluate(model, tokenizer, source: TextSource, cfg: EvalConfig, *, method: str,
             settings: dict, model_id: str, out_path: str | os.PathLike | None = None,
             save: Callable[[str], None] | None = None, stand_in: str | None = None,
             random_weights: bool = False, smoke: bool = False, extra: dict | None = None,
             kind: str = "eval", progress: bool = True) -> "results.Record":
    """Measure one model and (if out_path) write its results record. Every part calls this.

    method/settings name the scheme; save(folder) writes the model for the size
    on disk (default: save_pretrained); stand_in says which model this one stands
    in for, so that its numbers are labelled wherever they appear, and random_weights
    that its perplexity means nothing."""
    context = model_context(model.config)
    cfg = cfg.resolve(context)
    check_windows(cfg.max_length, cfg.stride, context)
    ids = tokenize(tokenizer, source.text, cfg.max_tokens)
    dev = input_device(model)
    # Size on disk first, before any forward: some quantized layers change their stored
    # form at the first forward (bitsandbytes' CPU 4-bit repacking, see part2_bnb_nf4.py).
    disk = None if cfg.skip_disk else disk_bytes(save or (lambda d: model.save_pretrained(d)))
    measured = {}
    # memory.peak is the peak of one defined pass, the same for every method: the windowed
    # perplexity at batch 1. The per-line pass (batches of lines) and the timings have their own.
    with PeakMemory(dev) as peak:
        measured["perplexity"] = perplexity(model, ids, cfg.max_length, cfg.stride, progress)
    if cfg.per_line:
        with PeakMemory(dev) as line_peak:
            measured["per_line_perplexity"] = per_line_perplexity(
                model, tokenizer, source.text, cfg.per_line, cfg.max_length, cfg.max_tokens,
                progress=progress)
        measured["per_line_perplexity"]["peak_bytes"] = line_peak.peak_bytes
    if not cfg.skip_latency:
        with PeakMemory(dev) as latency_peak:
            measured["latency"] = latency(model, tokenizer, ids, cfg.prefill_tokens, cfg.prompt_tokens,
                                          cfg.new_tokens, cfg.repeats, cfg.warmup)
        measured["latency"]["peak_bytes"] = latency_peak.peak_bytes
    weights = tensor_bytes(model)
    record = results.new_record(
        kind, method, settings,
        {**describe_model(model_id, model), "stand_in": stand_in, "random_weights": random_weights}, dev,
        dataset=dataset_record(source, ids, cfg.max_tokens), smoke=smoke, eval=asdict(cfg), **measured,
        memory=memory_record(weights["bytes"], weights["by_dtype_bytes"], disk, peak), **(extra or {}))
    if out_path is not None:
        record = results.write(record, out_path)
    return record


def dataset_record(source: TextSource, ids: torch.Tensor, max_tokens: int | None) -> dict:
    """The results JSON's dataset block: which text, its sha256, how many tokens were used."""
    return {"id": source.id, "description": source.description, "revision": source.revision,
            "sha256": source.sha256,
            "n_chars": len(source.text), "n_tokens": int(ids.shape[1]),
            "max_tokens": max_tokens, "truncated": max_tokens is not None and int(ids.shape[1]) == max_tokens}


def memory_record(weights_bytes: int, by_dtype_bytes: dict, disk: int | None, peak: "PeakMemory") -> dict:
    """The results JSON's memory block."""
    return {"unit": "MiB (2**20 bytes)", "weights_bytes": weights_bytes, "weights_mib": weights_bytes / MiB,
            "by_dtype_bytes": by_dtype_bytes, "disk_bytes": disk, "disk_mib": None if disk is None else disk / MiB,
            "peak_bytes": peak.peak_bytes, "peak_mib": peak.peak_bytes / MiB, "peak_kind": peak.kind,
            "peak_scope": PEAK_SCOPE}


PEAK_SCOPE = "the windowed perplexity pass, batch 1 (the per-line pass and the timings: their own peak_bytes)"


def summary_line(record: dict) -> str:
    """One human line per run, for the terminal."""
    p, m = record["perplexity"], record["memory"]
    parts = [f"{record['method']['name']}: ppl {p['ppl']:.4f} ({p['n_tokens_scored']} tokens, "
             f"{p['n_windows']} windows, L={p['max_length']} S={p['stride']})",
             f"weights {m['weights_mib']:.1f} MiB"]
    if m["disk_mib"] is not None:
        parts.append(f"disk {m['disk_mib']:.1f} MiB")
    parts.append(f"peak {m['peak_mib']:.1f} MiB")
    if "latency" in record:
        lat = record["latency"]
        parts.append(f"prefill {lat['prefill']['median']:.1f} ms "
                     f"[{lat['prefill']['p10']:.1f}-{lat['prefill']['p90']:.1f}]")
        d = lat["decode"]["ms_per_token"]
        parts.append(f"decode {d['median']:.2f} ms/token [{d['p10']:.2f}-{d['p90']:.2f}]")
    return " | ".join(parts)


# -----------------------------------------------------------------------------
# CLI

def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="gpt2", help="Hub id or local folder (default: gpt2)")
    g.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="weights and activations dtype of the baseline (default: float32, GPT-2's own)")
    g.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda (default: auto)")
    g.add_argument("--device-map", default=None,
                   help="'auto' shards a model too big for one GPU across devices (accelerate)")
    g.add_argument("--stand-in", default=None,
                   help="say which model this one stands in for, e.g. 'smollm2-135m stands in for gpt2'; "
                        "stored in the results and shown beside its numbers")
    g.add_argument("--random-weights", action="store_true",
                   help="the model's weights are random (a stand-in for shapes, memory and speed): its "
                        "perplexity means nothing; stored as model.random_weights, and readers say so")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def add_latency_args(g) -> None:
    """The timing flags, with EvalConfig's defaults (also fast_decode.py's)."""
    g.add_argument("--prefill-tokens", type=int, default=DEFAULTS.prefill_tokens,
                   help=f"prefill length, batch 1 (default: {DEFAULTS.prefill_tokens})")
    g.add_argument("--prompt-tokens", type=int, default=DEFAULTS.prompt_tokens,
                   help=f"decode prompt length (default: {DEFAULTS.prompt_tokens})")
    g.add_argument("--new-tokens", type=int, default=DEFAULTS.new_tokens,
                   help=f"greedy tokens to decode (default: {DEFAULTS.new_tokens})")
    g.add_argument("--repeats", type=int, default=DEFAULTS.repeats,
                   help=f"timed repeats, round-robin where several methods are timed (default: {DEFAULTS.repeats})")
    g.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help=f"untimed warm-up runs (default: {DEFAULTS.warmup})")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text and perplexity")
    g.add_argument("--dataset", default="wikitext2", choices=list(DATASETS),
                   help="Hub test split to score (default: wikitext2); ignored with --text-file")
    g.add_argument("--text-file", default=None, help="score this local UTF-8 text instead (offline use)")
    g.add_argument("--max-length", type=int, default=DEFAULTS.max_length,
                   help=f"window length in tokens (default: min(model context, {MAX_LENGTH_CAP}))")
    g.add_argument("--stride", type=int, default=DEFAULTS.stride,
                   help=f"window step in tokens (default: {STRIDE_CAP}, or max-length if that is shorter)")
    g.add_argument("--max-tokens", type=int, default=DEFAULTS.max_tokens,
                   help="score only the first N tokens of the text (recorded in the JSON)")
    g.add_argument("--per-line", type=int, default=DEFAULTS.per_line,
                   help="lines for the sample report's per-line mean perplexity, shown beside the "
                        f"real figure (default: {DEFAULTS.per_line}; 0 skips it)")
    add_latency_args(p.add_argument_group("latency"))
    g.add_argument("--skip-latency", action="store_true", help="do not time prefill and decode")
    g.add_argument("--skip-disk", action="store_true", help="do not save the model to measure its size")
    g = p.add_argument_group("output")
    g.add_argument("--results-dir", default="results", help="folder for the results JSON (default: results)")
    g.add_argument("--out", default=None, help="exact results file (default: a name made from the settings)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--smoke", action="store_true",
                   help="offline end-to-end run on a tiny random model made on the spot (~1 minute); "
                        "its numbers mean nothing")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    add_eval_args(p)
    return p


def check_common(args: argparse.Namespace) -> None:
    """Checks that need no model: every value's range and every output location, so that a
    mistake fails in a second, before a long load or a long run."""
    if args.quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    if args.threads is not None:
        cpus = os.cpu_count() or 1
        if not 1 <= args.threads <= cpus:
            raise UserError(f"--threads must be between 1 and this machine's {cpus} CPUs (got {args.threads})")
        torch.set_num_threads(args.threads)
    resolve_device(args.device)
    check_device_map(args.device_map)
    check_at_least(("--max-tokens", args.max_tokens, 2), ("--max-length", args.max_length, 2),
                   ("--per-line", args.per_line, 0), *latency_minimums(args))
    if args.max_length is not None:
        check_windows(args.max_length, args.stride or default_stride(args.max_length), None)
    elif args.stride is not None and args.stride <= 0:
        raise UserError(f"--stride must be positive; got {args.stride}")
    if args.out is not None:
        check_output_file(args.out, "--out")
    else:
        check_output_dir(args.results_dir, "--results-dir")
    if args.text_file is not None:
        read_text_file(args.text_file)


def check_at_least(*checks: tuple[str, int | None, int]) -> None:
    """(flag, value, least): each value, where given, is at least its least."""
    for flag, value, least in checks:
        if value is not None and value < least:
            raise UserError(f"{flag} must be at least {least} (got {value})")


def latency_minimums(args) -> tuple:
    """The timing flags' lower bounds, for check_at_least (evaluate's flags and fast_decode's)."""
    return (("--prefill-tokens", args.prefill_tokens, 1), ("--prompt-tokens", args.prompt_tokens, 1),
            ("--new-tokens", args.new_tokens, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0))


def check_latency_fits(cfg: "EvalConfig", context: int | None) -> None:
    """The latency lengths against the model's context, before the perplexity pass, not after."""
    if cfg.skip_latency or context is None:
        return
    for what, n in (("--prefill-tokens", cfg.prefill_tokens),
                    ("--prompt-tokens + --new-tokens", cfg.prompt_tokens + cfg.new_tokens)):
        if n > context:
            raise UserError(f"latency: {what} ({n}) is longer than the model's context of {context} tokens "
                            f"(shorten it, or --skip-latency)")


def prepare(args: argparse.Namespace) -> tuple[EvalConfig, TextSource]:
    """What every part does before loading a model, so bad input fails in seconds:
    check the flags and the model's config, fix the windows, read the text."""
    check_common(args)
    context = model_context(load_config(args.model))
    check_model_source(args.model, need_tokenizer=True)
    cfg = EvalConfig.from_args(args).resolve(context)
    check_windows(cfg.max_length, cfg.stride, context)
    check_latency_fits(cfg, context)
    source = load_text(args.dataset, args.text_file)
    check_scorable(load_tokenizer(args.model), source.text)
    return cfg, source


def check_scorable(tokenizer, text: str, probe_chars: int = 4000) -> None:
    """At least 2 tokens, checked on the text's start before the model loads (the whole text
    only if its start is not enough)."""
    for part in (text[:probe_chars], text):
        if len(tokenizer(part).input_ids) >= 2:
            return
        if len(text) <= probe_chars:
            break
    raise UserError("the text has fewer than 2 tokens: nothing to score (give a longer text)")


# Windows and timings small enough for a tiny model to finish in seconds on a CPU.
SMOKE_SETTINGS = dict(max_length=64, stride=32, prefill_tokens=64, prompt_tokens=8, new_tokens=16,
                      repeats=5, warmup=1, per_line=200, stand_in="tiny random GPT-2 (smoke run)")


def make_smoke_inputs(workdir: str | os.PathLike) -> tuple[str, str]:
    """A tiny random GPT-2 (seeded, so always the same) and a synthetic text, in workdir.
    Its width is 64, the smallest that bitsandbytes' CPU 4-bit kernel takes."""
    import tiny_models
    model_dir = tiny_models.make_tiny_model(Path(workdir) / "tiny-gpt2", arch="gpt2", n_embd=64)
    text_file = Path(workdir) / "tiny.txt"
    text_file.write_text(tiny_models.synthetic_text(), encoding="utf-8")
    return str(model_dir), str(text_file)


def smoke_setup(args: argparse.Namespace, workdir: str) -> None:
    """Point args at the smoke model and text, with the small smoke settings."""
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()                    # the tiny model's save, too
    args.model, args.text_file = make_smoke_inputs(workdir)
    vars(args).update(SMOKE_SETTINGS)


def main(**kwargs) -> dict:
    """Evaluate the unquantized baseline and write its results JSON; returns the record."""
    args = with_defaults(build_parser(), kwargs)
    with tempfile.TemporaryDirectory(prefix="qstudy-smoke-") as workdir:
        if args.smoke:
            smoke_setup(args, workdir)
        cfg, source = prepare(args)
        model, tokenizer = load_model(args.model, args.dtype, args.device, args.device_map)
        method = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[args.dtype]
        settings = {"dtype": args.dtype, "device": args.device, "device_map": args.device_map,
                    "quantized": False}
        dev = resolve_device(args.device).type
        out = Path(args.out) if args.out else run_path(args.results_dir, f"baseline-{method}", args.model,
                                                       source, cfg, args.smoke, dev, settings)
        record = evaluate(model, tokenizer, source, cfg, method=f"baseline-{method}", settings=settings,
                          model_id=args.model, out_path=out, stand_in=args.stand_in,
                          random_weights=args.random_weights, smoke=args.smoke,
                          progress=not args.quiet)
    print(summary_line(record))
    pl = record.get("per_line_perplexity")
    if pl and pl["mean_of_line_ppl"] is not None:
        print(f"  (per-sample aggregation, not comparable: mean of {pl['n_lines']} line perplexities = "
              f"{pl['mean_of_line_ppl']:.2f})")
    if args.smoke:
        print("SMOKE RUN: tiny random model, the numbers mean nothing")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    run_cli(main, build_parser())
