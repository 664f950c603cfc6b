"""The results record: one home for what every run writes and every reader reads.

A results file is one JSON object (a `Record`), made by `new_record(kind, ...)` and written by
`write()` (atomically: a temporary file, fsync, rename; NaN and infinity refused). Its `kind`
says what it is, so readers never guess from which keys are present:

    eval          one method measured by evaluate.evaluate(): perplexity, memory, latency
    sensitivity   an eval record of the float model plus one perplexity per block / component
    bench         a side-by-side timing of several methods in one process (ratios)
    compare       NF4 against linear 4-bit on the same weights (Part 2's --compare)
    gguf-inspect  a GGUF file's header, metadata and tensor table
    gguf-push     what bonus_gguf.py pushed to the Hub, and where
    anatomy       the fused decode step's links, beside chains that do none of its work
                  (speed/fast_decode.py --anatomy)

Every record holds the model (`model.id`, and `model.random_weights` for a stand-in whose
weights are random, so that its perplexity means nothing), the dataset and its sha256 where
there is a text, every setting, the device, library versions and the time. `load_results()`
reads a folder and skips, with a warning that names the field, any file whose fields are not
what the readers take (RECORD_FIELDS), and any file of an older schema, which
scripts/upgrade_results.py brings up to date.

This module imports nothing from the project, and no torch (only the writers' functions that
read the device import it when called): every script and reader imports it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:                     # annotations only: the record's readers never import torch
    import torch

SCHEMA_VERSION = 3          # 3: method.identity (study/registry.py); 2: 'kind' and model.random_weights
KINDS = ("eval", "sensitivity", "bench", "compare", "gguf-inspect", "gguf-push", "anatomy", "samples", "batch")
IDENTIFIED_KINDS = ("eval", "sensitivity")     # records of one method: method.identity says what it is


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message, not a traceback."""


# -----------------------------------------------------------------------------
# Making and writing a record

class Record(dict):
    """A results record: the JSON object itself, plus `path`, the file it was written to
    (None until written). Every script's main() returns its Record(s)."""
    path: Path | None = None


def new_record(kind: str, method: str, settings: dict, model: dict, device: torch.device, *,
               dataset: dict | None = None, smoke: bool = False, identity: dict | None = None,
               **blocks) -> Record:
    """The common head of every record (schema, kind, method, model, dataset), then the
    kind's own blocks, then where, when and by which command it was made. identity: the
    method's entry in study/registry.py (registry.identity()), which every record of a
    measured method (eval, sensitivity) carries as method.identity."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind '{kind}' (one of {', '.join(KINDS)})")
    if kind in IDENTIFIED_KINDS and identity is None:
        raise ValueError(f"a record of kind '{kind}' carries its method's registry identity")
    head = {"name": method, "settings": settings, **({"identity": identity} if identity else {})}
    rec = Record(schema_version=SCHEMA_VERSION, kind=kind, method=head,
                 model={"random_weights": False, **portable_model(model)})
    if dataset is not None:
        rec["dataset"] = dataset
    rec.update(blocks)
    rec.update(provenance(device))
    rec.update(smoke_fields(smoke))
    return rec


def portable_model(model: dict) -> dict:
    """The model block with no path of the machine that ran it: a local folder is named by its
    folder name, and its content by model.sha256 (the sha256 of its files); a Hub id stays."""
    path = Path(str(model["id"])).expanduser()
    if not path.exists():
        return model
    out = {**model, "id": path.resolve().name, "local": True}
    out.setdefault("sha256", model_identity(str(path))["sha256"] if path.is_dir() else None)
    return out


def portable_command(argv: list[str]) -> str:
    """The command line, with every path in it cut to its last name: a results file must not
    carry the folders of the machine that made it."""
    def cut(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if value and ("/" in value or value.startswith("~")) and (Path(value).expanduser().exists()
                                                                  or value.startswith(("/", "~", "."))):
            value = Path(value.rstrip("/")).name or value
        return f"{flag}{eq}{value}"
    return " ".join(shlex.quote(cut(a)) for a in argv)


def write(record: dict, path: str | os.PathLike) -> Record:
    """Write a record atomically and return it as a Record that knows its path."""
    rec = record if isinstance(record, Record) else Record(record)
    rec.path = write_json_atomic(path, rec)
    return rec


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    import torch  # the writers' side only: readers of records never need torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def environment(device: torch.device) -> dict:
    import torch
    return {"device": str(device), "device_name": device_name(device),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: package_version(p) for p in
                         ("torch", "transformers", "bitsandbytes", "accelerate", "datasets",
                          "huggingface_hub", "safetensors", "llama_cpp_python", "gguf")}}


# The command line a record names: this process's own (sys.argv), or, inside
# recorded_command(argv), the command that a caller runs in-process (scripts/standin_study.py
# calls each script's main() with the keywords of one command line).
_COMMAND: ContextVar[list[str] | None] = ContextVar("recorded_command", default=None)


@contextmanager
def recorded_command(argv: list[str]):
    """Within this block, records name argv (script first) as the command that made them."""
    token = _COMMAND.set(list(argv))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def provenance(device: torch.device) -> dict:
    """Where, when and by which command a result was made."""
    argv = _COMMAND.get() or sys.argv
    return {"environment": environment(device),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": portable_command([Path(argv[0]).name, *argv[1:]])}


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write JSON so that a reader never sees half a file: temp file, fsync, rename.
    A non-finite number raises ValueError before anything is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False)  # NaN is not JSON
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


_IDENTITY_CACHE: dict[tuple, dict] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 16 MiB pieces (a 28 GB GGUF never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def model_identity(model_id: str) -> dict:
    """What a model is, independent of where it lies: for a local folder the sha256 of its
    files' names and contents (so two folders of one name but different weights differ,
    and one model copied elsewhere is the same); for a Hub id, the id. Cached per process
    by the files' sizes and modification times."""
    path = Path(model_id).expanduser()
    if not path.is_dir():
        return {"kind": "hub", "name": model_id.replace("/", "-"), "sha256": None,
                "key": hashlib.sha256(model_id.encode()).hexdigest()}
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    stamp = (str(path.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _IDENTITY_CACHE:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
        digest = h.hexdigest()
        _IDENTITY_CACHE[stamp] = {"kind": "local", "name": path.resolve().name, "sha256": digest, "key": digest}
    return _IDENTITY_CACHE[stamp]


def result_path(results_dir: str | os.PathLike, method: str, model_id: str, parts: list[str], key: dict,
                smoke: bool = False) -> Path:
    """results/<method>__<model>__<parts...>__<hash>.json. The readable parts say what a run
    is; the hash, of the model's identity (its files' content, or its Hub id) and of every
    setting in key, makes two different runs never share a name: a second model in a folder
    of the same name, another text file of the same name, another device or setting."""
    ident = model_identity(model_id)
    blob = json.dumps({"method": method, "model": ident["key"], **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    name = "__".join([slug(method), slug(ident["name"]), *map(slug, parts), digest])
    return Path(results_dir) / ("smoke" if smoke else "") / f"{name}.json"


def smoke_fields(smoke: bool) -> dict:
    out = {"smoke": smoke}
    if smoke:
        out["note"] = "SMOKE RUN on a tiny random model: the numbers mean nothing"
    return out


# -----------------------------------------------------------------------------
# Reading

def kind_of(rec: dict) -> str | None:
    """A record's kind (one of KINDS), or None."""
    return rec.get("kind") if rec.get("kind") in KINDS else None


def random_weights(rec: dict) -> bool:
    """Whether the model's weights are random (its perplexity means nothing)."""
    return bool((rec.get("model") or {}).get("random_weights"))


# What differs between two runs of one command on one machine: when, where and by which command
# line it ran (a rerun sends its files elsewhere), what it timed, and the memory peaks (the
# process's RSS moves with the allocator's state). A rerun is compared with these left out
# (scripts/compare_results.py); every other field is the result, and must come back the same. A
# key named here is volatile wherever it stands, with everything under it; so is a key that
# starts or ends as VOLATILE_PREFIXES / VOLATILE_SUFFIXES say (a timing, or a ratio of timings:
# 'vs_fp32', 'decode_ratio', 'x_floor'). fused_tiles and layer_ratio are chosen or measured by
# timing too; int8_targets are the CPU bench's ratios; 'us' a profiled link's time.
VOLATILE_KEYS = ("timestamp", "environment", "command", "latency", "seconds", "peak_bytes", "peak_mib",
                 "fused_tiles", "layer_ratio", "speedup_over_generate", "int8_targets", "x_floor", "us",
                 "weight_bytes_share")
VOLATILE_PREFIXES = ("vs_", "l2_vs_")
VOLATILE_SUFFIXES = ("_ms", "_ms_per_token", "_ratio", "_us", "_us_per_token", "_bytes_per_s")


def is_volatile(path: tuple[str, ...]) -> bool:
    """Whether the field at this key path (its keys from the record's top) is volatile."""
    return any(k in VOLATILE_KEYS or k.startswith(VOLATILE_PREFIXES) or k.endswith(VOLATILE_SUFFIXES)
               for k in path)


# What the readers (figures, report, tables) take from a record, block by block: a block
# that is present must have these fields of these kinds, or the whole file is skipped with
# a warning, so that no reader meets a string, a null or a zero where it divides by a number.
# '*' is every item of a list or every value of a dict; a kind ending in '?' may be null or absent.
RECORD_FIELDS = {
    "method": [("name", "text")],
    "model": [("id", "text"), ("stand_in", "text?")],
    "dataset": [("id", "text")],
    "environment": [("device_name", "text")],
    "perplexity": [("ppl", "positive"), ("max_length", "count"), ("stride", "count"),
                   ("n_tokens_scored", "count")],
    "memory": [("weights_mib", "size"), ("disk_mib", "size?"), ("peak_mib", "size?")],
    "per_line_perplexity": [("mean_of_line_ppl", "positive?"), ("n_lines", "size")],
    "latency": [(f"{part}.{q}", "positive") for part in ("prefill", "decode.ms_per_token")
                for q in ("median", "p10", "p90")],
    "bench": [("table", "table"), ("repeats", "count"), ("prefill_tokens", "count"), ("new_tokens", "count"),
              ("baseline", "text?")] +
             [(f"table.*.{k}", "positive") for k in ("prefill_ms.median", "prefill_ms.p10", "prefill_ms.p90",
                                                     "decode_ms_per_token.median", "decode_ms_per_token.p10",
                                                     "decode_ms_per_token.p90", "prefill_ratio", "decode_ratio")] +
             [("table.*.weights_mib", "size?")],
    "sensitivity": [("baseline_ppl", "positive"), ("block", "rows"), ("component", "rows"),
                    ("block.*.block", "text"), ("block.*.delta_pct", "number"),
                    ("component.*.component", "text"), ("component.*.delta_pct", "number")],
    "compare": [("kinds.*", "text"), ("block_size", "count"), ("mean_rel_mse.*", "size"),
                ("layers.*.layer", "text"), ("histogram.layer", "text"), ("histogram.bins", "count"),
                ("histogram.counts.*", "size"), ("histogram.range.*", "number"), ("histogram.block_size", "count"),
                ("histogram.levels.nf4.*", "number"), ("histogram.levels.uniform16.*", "number"),
                ("histogram.code_entropy_bits.*", "size"), ("cross_check.max_rel_diff", "size")],
    "anatomy": [("links", "count"), ("repeats", "count"), ("baseline", "text"), ("steps", "table"),
                ("chains", "table"), ("steps.*.step_ms.median", "positive"),
                ("steps.*.l2_step_ms.median", "positive"), ("steps.*.vs_baseline", "positive"),
                ("steps.*.floor_ms", "positive?"), ("steps.*.lowest_ratio", "positive?"),
                ("steps.*.links.*.adds_us", "number?"), ("chains.*.step_ms.median", "positive")],
    "samples": [("prompts", "rows"), ("prompts.*", "text"), ("completions", "table"), ("completions.*.*", "text"),
                ("leading_tokens_equal.*.*", "size")],
    "gguf_inspection": [("file", "text"), ("file_bytes", "size"), ("tensor_bytes", "size"),
                        ("tensors.*.name", "text"), ("tensors.*.type", "text"), ("tensors.*.bytes", "size"),
                        ("bytes_by_type.*", "size"), ("header.version", "size")],
}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


FIELD_WORDS = {"text": "a string", "number": "a finite number", "positive": "a positive number",
              "size": "a number >= 0", "count": "an integer >= 1", "table": "a non-empty object",
              "rows": "a non-empty list"}
FIELD_KINDS = {
    "text": lambda x: isinstance(x, str),
    "number": _is_number,
    "positive": lambda x: _is_number(x) and x > 0,
    "size": lambda x: _is_number(x) and x >= 0,
    "count": lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1,
    "table": lambda x: isinstance(x, dict) and len(x) > 0,
    "rows": lambda x: isinstance(x, list) and len(x) > 0,
}


def _field_values(obj, parts: list[str], path: str):
    """Every value at a dotted path ('*' fans out); raises ValueError naming what is missing."""
    if not parts:
        yield path, obj
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(obj, (dict, list)):
            raise ValueError(f"{path} is not a list or an object")
        for i, v in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
            yield from _field_values(v, rest, f"{path}.{i}")
    elif not isinstance(obj, dict) or head not in obj:
        yield f"{path}.{head}", _Missing
    else:
        yield from _field_values(obj[head], rest, f"{path}.{head}")


class _Missing:
    pass


def record_problem(rec) -> str | None:
    """Why a parsed results file cannot be read by the figures and the report, or None."""
    if not isinstance(rec, dict) or not FIELD_KINDS["size"](rec.get("schema_version")):
        return "not a results file (no schema_version)"
    if rec["schema_version"] < SCHEMA_VERSION:
        return (f"schema {rec['schema_version']}, older than this code's {SCHEMA_VERSION}: "
                "python scripts/upgrade_results.py brings it up to date")
    if rec["schema_version"] > SCHEMA_VERSION:
        return (f"schema {rec['schema_version']}, written by a newer version of this code "
                f"(this one reads {SCHEMA_VERSION})")
    if rec.get("kind") not in KINDS:
        return f"kind should be one of {', '.join(KINDS)}, not {json.dumps(rec.get('kind'))[:40]}"
    if "method" not in rec and rec["kind"] != "gguf-inspect":
        return "no method block"
    for block, fields in RECORD_FIELDS.items():
        if block not in rec:
            continue
        for dotted, kind in fields:
            optional = kind.endswith("?")
            check = FIELD_KINDS[kind.rstrip("?")]
            try:
                for path, value in _field_values(rec[block], dotted.split("."), block):
                    if value is _Missing or value is None:
                        if optional:
                            continue
                    elif check(value):
                        continue
                    shown = "missing" if value is _Missing else json.dumps(value)[:40]
                    words = FIELD_WORDS[kind.rstrip("?")] + (" or null" if optional else "")
                    return f"{path} should be {words}, not {shown}"
            except ValueError as e:
                return str(e)
    return None


def load_results(folder: str | Path) -> list[Record]:
    """Every readable results file of a folder (not its subfolders), each a Record with
    `_file` set to its name; the others are skipped with a warning."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"results folder '{folder}' is a file, not a folder")
    if not folder.is_dir():
        raise UserError(f"results folder '{folder}' does not exist (run the study first: make study)")
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            problem = record_problem(rec)
            if problem:
                raise ValueError(problem)
            rec = Record(rec)
            rec.path, rec["_file"] = path, path.name
            records.append(rec)
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping {path.name}: {e}", stacklevel=2)
    if not records:
        raise UserError(f"no results JSON in '{folder}'")
    return records
