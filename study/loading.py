"""Loading a model and its tokenizer: a Hub id or a local folder, checked before the weights load.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

import results
from results import UserError
from study.cli import looks_like_path, one_line
from study.text import hub_commit

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


def model_context(config) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def param_count(model) -> int:
    """The parameters torch sees, tied ones once. On ev.skeleton() (before quantization) it is
    the model's own count; after a swap to quantized layers it is what the float layers keep."""
    return sum(p.numel() for p in model.parameters())


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
        "n_params": param_count(model),
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
    except pickle.UnpicklingError:              # torch.load(weights_only=True) refused a *.bin
        raise UserError(not_a_state_dict(model_id)) from None
    except (ValueError, RuntimeError) as e:     # e.g. weights that do not fit the config
        raise UserError(f"cannot load the weights of '{model_id}' ({one_line(e)})") from None
    if not device_map and "quantization_config" not in from_pretrained_kwargs:
        model.to(dev)
    model.eval()
    return model, tokenizer


def not_a_state_dict(model_id: str) -> str:
    """The one line for a pickled weights file that torch will not unpickle safely."""
    bins = ", ".join(p.name for p in sorted(Path(model_id).expanduser().glob("*.bin"))) or "its *.bin file"
    return (f"'{model_id}': {bins} is not a plain state dict (torch.load with weights_only=True refuses the "
            f"objects it holds, which could run code), so it was not loaded; re-save the model with "
            f"save_pretrained (safetensors)")


def input_device(model) -> torch.device:
    """Where inputs go: the first parameter's device (the embedding's, under a device_map);
    the CPU for a model that is not torch (bonus_gguf's llama.cpp model)."""
    if not hasattr(model, "parameters"):
        return torch.device("cpu")
    return next(model.parameters()).device
