"""Memory: the bytes the weights really occupy (by dtype, shared tensors once), on disk, and at peak.
"""
from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path
from typing import Callable

import torch

from study.cli import MiB

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
QUANT_STAT_NAMES = ("scale", "zero_point", "absmax", "SCB", "input_scale")   # input_scale: AWQ's, unfolded


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
        part = quantized_part(module, tname, t, role)
        if part is not None:
            out[part] += nbytes(t)
        else:
            out["full_precision"] += nbytes(t)
            is_norm = "norm" in type(module).__name__.lower() or re.search(r"(^|\.)(ln|norm)", mname)
            sub = ("norms" if is_norm else "biases" if tname == "bias"
                   else "output_layer" if module is out_layer
                   else "embeddings" if isinstance(module, torch.nn.Embedding) else "other")
            detail[sub] += nbytes(t)
    return {**out, "full_precision_detail": detail, "total": sum(out.values())}


def quantized_part(module: torch.nn.Module, tname: str, t: torch.Tensor, role: str) -> str | None:
    """Which part of a quantized layer a tensor is: 'scales_and_zero_points' (what dequantizes:
    scales, zero points, block absmax, bitsandbytes' statistics), 'quantized_weights' (integer
    codes), or None (a floating tensor kept as it was)."""
    if role == "quant_state" or (tname in QUANT_STAT_NAMES and _holds_int_weight(module)):
        return "scales_and_zero_points"
    if tname in QUANT_WEIGHT_NAMES and not t.is_floating_point():
        return "quantized_weights"
    return None


def logical_weights(module: torch.nn.Module) -> int:
    """How many weights a quantized module stands for: out x in of a linear (whatever its
    storage), vocabulary x width of an embedding."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features) * int(module.out_features)
    if hasattr(module, "num_embeddings"):
        return int(module.num_embeddings) * int(module.embedding_dim)
    if hasattr(module, "shape"):                                    # Part 1's Linear4bit
        return int(torch.Size(module.shape).numel())
    raise TypeError(f"cannot tell how many weights a {type(module).__name__} holds")


def bits_per_weight(model: torch.nn.Module, n_params: int) -> dict:
    """Bits per weight, counted from the bytes really stored:
    - quantized_layers: the codes, scales and zero points of every quantized layer x 8, over the
      weights those layers stand for (biases not included: they are not quantized);
    - model: every stored byte of the model x 8, over the model's own parameter count n_params
      (the unquantized model's, tied weights once)."""
    stored, weights = 0, 0
    counted = set()
    for mname, module, tname, t, role in _unique_tensors(model):
        if quantized_part(module, tname, t, role) is None:
            continue
        stored += nbytes(t)
        if mname not in counted:
            counted.add(mname)
            weights += logical_weights(module)
    return bits_record(stored, weights, tensor_bytes(model)["bytes"], n_params,
                       "bytes really stored x 8 / weights: codes, scales and zero points of the quantized "
                       "layers over their weights; every stored byte over the model's own parameter count")


def bits_record(stored: int, weights: int, total: int, n_params: int, definition: str) -> dict:
    """The record's bits_per_weight block (every writer's, torch or GGUF): the quantized layers'
    stored bytes over their weights, all stored bytes over the model's own parameter count."""
    return {"quantized_layers": {"stored_bytes": stored, "weights": weights,
                                 "bits_per_weight": 8 * stored / weights if weights else None},
            "model": {"stored_bytes": total, "params": n_params, "bits_per_weight": 8 * total / n_params},
            "quantized_share": weights / n_params, "definition": definition}


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
