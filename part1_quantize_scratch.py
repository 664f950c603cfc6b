#!/usr/bin/env python3
"""Part 1: INT8 weight quantization from scratch, in plain torch, no quantization library.

Weights are really stored as int8 (or packed 4-bit) with their scales; activations
stay in the model's own dtype. The file reads top to bottom:
  1. primitives: quantize / dequantize a weight tensor (absmax per tensor, per
     output channel, asymmetric with a zero point, group-wise; 4-bit int4 and NF4);
  2. quantized modules: Int8Linear, Int8Embedding, Linear4bit;
  3. the swapper: which modules of which blocks get replaced;
  4. save / load as safetensors;
  5. the side-by-side benchmark (the fast kernels are in kernels.py);
  6. the CLI: quantize, evaluate through evaluate.py, write a results JSON.

    python part1_quantize_scratch.py --mode whole                      # gpt2, per-channel INT8
    python part1_quantize_scratch.py --mode selective --blocks 0,1 --components attn,ffn
    python part1_quantize_scratch.py --scheme per_tensor
    python part1_quantize_scratch.py --bits 4 --scheme nf4
    python part1_quantize_scratch.py --sensitivity                     # one block / component at a time
    python part1_quantize_scratch.py --bench --model DIR               # fp32 vs INT8 speed, side by side

Conventions: a linear weight W is (out, in) and y = x W^T + b. transformers'
Conv1D (GPT-2) stores its weight as (in, out) and computes y = x W + b; it is
transposed once, at quantization time. A per-output-channel scale is applied
after the matmul: y = (x q^T) * scale + b.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate as ev
import results
from speed import kernels
from study import registry

SCHEMES_8BIT = ("per_channel", "per_tensor", "asymmetric", "group")
SCHEMES_4BIT = ("int4", "nf4")
BLOCK_4BIT = 64                     # values per absmax block in 4-bit, as in bitsandbytes
GROUP_SIZE_DEFAULT = 128            # inputs per scale of the 'group' scheme
# The 16 NF4 levels of QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes' table):
# quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


# -----------------------------------------------------------------------------
# 1. Primitives. W is (out, in); every function returns int8 q plus what dequantizes it.

def _safe(scale: torch.Tensor) -> torch.Tensor:
    """A zero scale (an all-zero row) would divide by zero; any positive value decodes 0 to 0."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def quantize_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax over the whole tensor: one scale, q in [-127, 127]."""
    scale = _safe(w.abs().amax().float() / 127).reshape(1)                  # (1,)
    q = torch.clamp(torch.round(w.float() / scale), -127, 127).to(torch.int8)
    return q, scale


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax per output channel (row): scale (out,), q in [-127, 127]."""
    scale = _safe(w.abs().amax(dim=1).float() / 127)                         # (out,)
    q = torch.clamp(torch.round(w.float() / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def quantize_asymmetric(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (min/max) per output channel with an int8 zero point.
    The range always holds 0, so 0 is exact and the zero point fits in int8.
    w ~= (q - zero) * scale."""
    lo = w.amin(dim=1).float().clamp(max=0)                                  # (out,)
    hi = w.amax(dim=1).float().clamp(min=0)
    scale = _safe((hi - lo) / 255)
    zero = torch.clamp(torch.round(-lo / scale) - 128, -128, 127)            # (out,)
    q = torch.clamp(torch.round(w.float() / scale[:, None]) + zero[:, None], -128, 127).to(torch.int8)
    return q, scale, zero.to(torch.int8)


def quantize_group(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax per group of group_size consecutive inputs of each row:
    scale (out, in // group_size)."""
    out, inp = w.shape
    if inp % group_size:
        raise ev.UserError(f"group size {group_size} does not divide the input size {inp}")
    g = w.float().reshape(out, inp // group_size, group_size)               # (out, G, g)
    scale = _safe(g.abs().amax(dim=2) / 127)                                 # (out, G)
    q = torch.clamp(torch.round(g / scale[..., None]), -127, 127).to(torch.int8)
    return q.reshape(out, inp), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of the four int8 schemes; the shape of scale says which one."""
    qf = q.float()
    if zero is not None:
        qf = qf - zero.float()[:, None]
    if scale.dim() == 2:                                                     # group-wise
        out, groups = scale.shape
        return (qf.reshape(out, groups, -1) * scale[..., None]).reshape(q.shape).to(dtype)
    return (qf * (scale[:, None] if scale.numel() > 1 else scale)).to(dtype)


def quantize_4bit(w: torch.Tensor, kind: str, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise 4-bit over the flattened weight: one absmax per `block` values.
    int4: 15 evenly spaced levels, q = round(w / absmax * 7) in [-7, 7].
    nf4: the nearest of the 16 NF4 levels to w / absmax (ties to the lower level).
    Returns (packed uint8 of numel/2 bytes, absmax (numel/block,))."""
    flat = w.float().reshape(-1)
    if flat.numel() % block:
        raise ev.UserError(f"4-bit block size {block} does not divide {flat.numel()} weights")
    blocks = flat.reshape(-1, block)                                         # (nb, block)
    absmax = _safe(blocks.abs().amax(dim=1))                                 # (nb,)
    x = blocks / absmax[:, None]                                             # in [-1, 1]
    if kind == "int4":
        codes = int4_codes(x)                                                # 1..15
    elif kind == "nf4":
        codes = nf4_codes(x)                                                 # 0..15
    else:
        raise ValueError(f"unknown 4-bit kind '{kind}'")
    return pack_4bit(codes.reshape(-1).to(torch.uint8)), absmax


def int4_codes(x: torch.Tensor) -> torch.Tensor:
    """Linear 4-bit codes of x in [-1, 1]: 15 evenly spaced levels, code 8 is zero."""
    return torch.round(x * 7).clamp(-7, 7) + 8


def nf4_codes(x: torch.Tensor) -> torch.Tensor:
    """The nearest NF4 level of each x in [-1, 1], found against the midpoints between
    levels; a value exactly on a midpoint takes the lower level, as bitsandbytes does
    (so the two agree bit for bit, ties included)."""
    levels = torch.tensor(NF4_LEVELS, device=x.device)
    return torch.bucketize(x.contiguous(), (levels[1:] + levels[:-1]) / 2)


_NF4_TABLES: dict = {}


def nf4_table(device) -> torch.Tensor:
    """NF4_LEVELS as a float32 tensor on device, made once per device (so that a forward
    pass copies nothing from the host, which CUDA graph capture forbids)."""
    key = str(device)
    if key not in _NF4_TABLES:
        _NF4_TABLES[key] = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)
    return _NF4_TABLES[key]


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: element 2i in the high nibble, 2i+1 in the low one."""
    pairs = codes.reshape(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, kind: str, shape,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    codes = unpack_4bit(packed).long()
    if kind == "int4":
        values = (codes - 8).float() / 7
    else:
        values = nf4_table(packed.device)[codes]
    block = codes.numel() // absmax.numel()
    return (values.reshape(-1, block) * absmax[:, None].float()).reshape(shape).to(dtype)


# -----------------------------------------------------------------------------
# 2. Quantized modules

def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an nn.Linear or a transformers Conv1D (stored (in, out))."""
    from transformers.pytorch_utils import Conv1D
    if isinstance(module, Conv1D):
        return module.weight.detach().t().contiguous()
    return module.weight.detach()


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 (out, in) plus scales (and zero points).

    per_channel / per_tensor:  y = (x q^T) * scale + b
    asymmetric:                y = (x q^T - sum(x) * zero) * scale + b
    group:                     y = x (dequantized W)^T + b   (scales vary along the input)
    The matmul runs in x's dtype. forward() tries kernels.int8_linear() (on a CPU the C++
    kernel for a few rows, chunked casts for many; on CUDA in fp16/bf16 a fused Triton
    kernel) and computes reference() where it returns None. This module's `path`, 'fast'
    (default) or 'naive' (reference only), picks whether the kernel is tried.
    """

    def __init__(self, qweight, scale, zero, bias, scheme: str, path: str = "fast"):
        super().__init__()
        self.scheme, self.path = scheme, path                                # path: this module's own
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight.contiguous())               # (out, in) int8
        self.register_buffer("scale", scale)                                # (out,), (1,) or (out, G)
        self.register_buffer("zero_point", zero)                            # (out,) int8 or None
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, module: nn.Module, scheme: str = "per_channel", group_size: int = GROUP_SIZE_DEFAULT):
        w = linear_weight(module)
        zero = None
        if scheme == "per_channel":
            q, scale = quantize_per_channel(w)
        elif scheme == "per_tensor":
            q, scale = quantize_per_tensor(w)
        elif scheme == "asymmetric":
            q, scale, zero = quantize_asymmetric(w)
        elif scheme == "group":
            q, scale = quantize_group(w, group_size)
        else:
            raise ev.UserError(f"unknown 8-bit scheme '{scheme}' (choose {', '.join(SCHEMES_8BIT)})")
        dtype = w.dtype
        return cls(q, scale.to(dtype), zero, module.bias, scheme)

    def dequantized_weight(self, dtype=None) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scale.float(), self.zero_point,
                               dtype or self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)                                 # (M, in)
        y = kernels.int8_linear(x2, self.qweight, self.scale, self.zero_point, self._bias(x)) \
            if self.path == "fast" else None
        if y is None:
            y = self.reference(x2)
        return y.reshape(*x.shape[:-1], self.out_features)

    def reference(self, x2: torch.Tensor) -> torch.Tensor:
        """What the layer computes, plainly: cast the int8 weight to x's dtype, multiply, then
        the per-channel scale (after the matmul), the zero point's correction, the bias. A
        group-wise scale varies along the input, so that scheme dequantizes first."""
        if self.scheme == "group":
            return F.linear(x2, self.dequantized_weight(x2.dtype), self._bias(x2))
        y = F.linear(x2, self.qweight.to(x2.dtype))                          # (M, out)
        if self.zero_point is not None:
            y = y - x2.sum(-1, keepdim=True) * self.zero_point.to(x2.dtype)
        y = y * self.scale.to(x2.dtype)
        return y if self.bias is None else y + self.bias.to(x2.dtype)

    def _bias(self, x):
        return None if self.bias is None else self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scheme={self.scheme}, path={self.path}"


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one absmax scale per row (token).
    Its tensors can be shared with a tied output layer (GPT-2's lm_head). A scaled embedding
    (Gemma's: rows times sqrt(d) on the way in, not on the way out) keeps its embed_scale."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, embed_scale: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("qweight", qweight)                            # (V, d) int8
        self.register_buffer("scale", scale)                                # (V,)
        self.register_buffer("embed_scale", embed_scale, persistent=False)  # () or None
        self.num_embeddings, self.embedding_dim = qweight.shape

    @classmethod
    def from_float(cls, module: nn.Embedding):
        q, scale = quantize_per_channel(module.weight.detach())
        embed_scale = getattr(module, "embed_scale", None)
        return cls(q, scale.to(module.weight.dtype),
                   None if embed_scale is None else torch.as_tensor(embed_scale).detach().clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight).to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)
        return rows if self.embed_scale is None else rows * self.embed_scale.to(rows.dtype)

    def tied_linear(self) -> Int8Linear:
        """An output layer that reads the same int8 table: logits = (h q^T) * scale."""
        return Int8Linear(self.qweight, self.scale, None, None, "per_channel")


class Linear4bit(nn.Module):
    """A linear layer with a block-wise 4-bit weight (int4 or NF4), two codes per byte,
    one absmax per block of 64. The reference dequantizes to x's dtype, then F.linear;
    with path 'fast' (default 'naive') forward() first tries kernels.q4_linear(), a fused
    Triton GEMV on CUDA in fp16/bf16 for up to kernels.GEMV_ROWS rows (decode), a tile that
    decodes each weight tile once for all rows up to kernels.MM4_ROWS (a decode batch)."""

    def __init__(self, packed, absmax, bias, kind: str, shape, block: int, path: str = "naive"):
        super().__init__()
        self.kind, self.shape, self.block, self.path = kind, tuple(shape), block, path
        self.register_buffer("packed", packed)                              # (out*in/2,) uint8
        self.register_buffer("absmax", absmax)                              # (out*in/block,)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, module: nn.Module, kind: str = "nf4", block: int = 64):
        w = linear_weight(module)
        packed, absmax = quantize_4bit(w, kind, block)
        return cls(packed, absmax.to(w.dtype), module.bias, kind, w.shape, block)

    def dequantized_weight(self, dtype=None) -> torch.Tensor:
        return dequantize_4bit(self.packed, self.absmax, self.kind, self.shape, dtype or self.absmax.dtype)

    def lut(self) -> torch.Tensor:
        """The 16 code values (fp32), on the weight's device."""
        if getattr(self, "_lut", None) is None or self._lut.device != self.packed.device:
            codes = torch.arange(16, dtype=torch.float32)
            self._lut = ((codes - 8) / 7).to(self.packed.device) if self.kind == "int4" else \
                nf4_table(self.packed.device)
        return self._lut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.shape[1])                                    # (M, in)
        y = kernels.q4_linear(x2, self) if self.path == "fast" else None
        if y is None:                                                        # the reference
            y = F.linear(x2, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return y.reshape(*x.shape[:-1], self.shape[0])

    def extra_repr(self) -> str:
        return f"in={self.shape[1]}, out={self.shape[0]}, kind={self.kind}, block={self.block}"



QUANT_MODULES = (Int8Linear, Int8Embedding, Linear4bit)


# -----------------------------------------------------------------------------
# 3. The swapper

# Fine components, recognised by the layer's name inside its block, for GPT-2,
# Llama/Mistral/Qwen, OPT, GPT-NeoX, Falcon and similar families.
COMPONENT_PATTERNS = {
    "qkv": (r"(attn|attention)\w*\."
            r"(c_attn|q_proj|k_proj|v_proj|qkv_proj|query_key_value|query|key|value|wq|wk|wv|Wqkv)$"),
    "attn_out": r"(attn|attention)\w*\.(c_proj|o_proj|out_proj|dense|wo|output\.dense)$",
    "ffn_up": r"(mlp|ffn|feed_forward)\w*\.(c_fc|up_proj|gate_proj|gate_up_proj|fc1|w1|w3|dense_h_to_4h|fc_in)$",
    "ffn_down": r"(mlp|ffn|feed_forward)\w*\.(c_proj|down_proj|fc2|w2|dense_4h_to_h|fc_out)$",
}
COMPONENT_GROUPS = {"attn": ("qkv", "attn_out"), "ffn": ("ffn_up", "ffn_down")}
COMPONENTS = tuple(COMPONENT_PATTERNS)


def is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D
    return isinstance(module, (nn.Linear, Conv1D))


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: transformer.h (GPT-2), model.layers (Llama), ...
    Taken as the largest ModuleList whose items hold linear layers."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and \
                any(is_linear(m) for m in module[0].modules()):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ev.UserError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best


def parse_blocks(spec: str | None, n_blocks: int | None) -> list[int] | None:
    """'0,1' or '0-3' or '0-3,8' -> sorted block indices; 'all' or None -> every block.
    With n_blocks None only the syntax is checked (before the model's config is read)."""
    if spec is None or spec.strip().lower() == "all":
        return None if n_blocks is None else list(range(n_blocks))
    out = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part, flags=re.ASCII)
        if not m:
            raise ev.UserError(f"malformed --blocks '{spec}': use e.g. 0,1 or 0-3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise ev.UserError(f"malformed --blocks range '{part}': start after end")
        if n_blocks is not None and hi >= n_blocks:
            raise ev.UserError(f"--blocks {part}: the model has {n_blocks} blocks (0-{n_blocks - 1})")
        if n_blocks is not None:                     # syntax only until the block count is known
            out.update(range(lo, hi + 1))
    return sorted(out) if n_blocks is not None else None


def parse_components(spec: str | None) -> list[str]:
    """'attn,ffn' or fine names (qkv, attn_out, ffn_up, ffn_down); None or 'all' -> all."""
    if spec is None or spec.strip().lower() == "all":
        return list(COMPONENTS)
    names = [s.strip() for s in spec.split(",")]
    if not all(names):
        raise ev.UserError(f"malformed --components '{spec}': use e.g. attn,ffn or qkv,ffn_down")
    out = []
    for name in names:
        expanded = COMPONENT_GROUPS.get(name, (name,))
        for c in expanded:
            if c not in COMPONENT_PATTERNS:
                raise ev.UserError(f"unknown component '{name}' (choose attn, ffn, {', '.join(COMPONENTS)})")
            if c not in out:
                out.append(c)
    return out


def component_of(name_in_block: str) -> str | None:
    for comp, pattern in COMPONENT_PATTERNS.items():
        if re.search(pattern, name_in_block):
            return comp
    return None


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def make_quantized(module: nn.Module, bits: int, scheme: str, group_size: int) -> nn.Module:
    if bits == 8:
        return Int8Linear.from_float(module, scheme, group_size)
    return Linear4bit.from_float(module, scheme, BLOCK_4BIT)


def check_settings(bits: int, scheme: str, mode: str) -> None:
    if bits not in (4, 8):
        raise ev.UserError(f"--bits must be 8 or 4, not {bits}")
    choices = SCHEMES_8BIT if bits == 8 else SCHEMES_4BIT
    if scheme not in choices:
        raise ev.UserError(f"unknown {bits}-bit scheme '{scheme}' (choose {', '.join(choices)})")
    if mode not in ("whole", "selective"):
        raise ev.UserError(f"unknown mode '{mode}' (whole or selective)")


def select_targets(model: nn.Module, mode: str = "whole", bits: int = 8, blocks: list[int] | None = None,
                   components: list[str] | None = None) -> dict:
    """Which modules quantize_model() swaps, by full name; touches no weight, so it also
    runs on ev.skeleton() (the model on the meta device) to check settings before loading.
    blocks / components: lists (parse_blocks / parse_components make them from the CLI's
    text), None for all; used only in selective mode."""
    blocks_name, block_list = decoder_blocks(model)
    n = len(block_list)
    chosen_blocks = sorted(set(blocks)) if mode == "selective" and blocks is not None else list(range(n))
    if chosen_blocks and not 0 <= chosen_blocks[-1] < n or chosen_blocks and chosen_blocks[0] < 0:
        raise ev.UserError(f"--blocks {chosen_blocks[-1]}: the model has {n} blocks (0-{n - 1})")
    chosen_comps = list(components) if mode == "selective" and components is not None else list(COMPONENTS)
    for c in chosen_comps:
        if c not in COMPONENT_PATTERNS:
            raise ev.UserError(f"unknown component '{c}' (choose {', '.join(COMPONENTS)})")
    targets = []                                                             # full module names
    for i in chosen_blocks:
        for name, module in block_list[i].named_modules():
            if is_linear(module) and (mode == "whole" or component_of(name) in chosen_comps):
                targets.append(f"{blocks_name}.{i}.{name}")
    in_blocks = set(targets)
    embeddings = []
    if mode == "whole" and bits == 8:
        targets += [n for n, m in model.named_modules() if is_linear(m) and n not in in_blocks
                    and not n.startswith(f"{blocks_name}.")]
        embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not targets:
        raise ev.UserError("nothing to quantize: no linear layer matches the chosen blocks and components")
    return {"blocks": chosen_blocks, "components": chosen_comps, "n_blocks": len(block_list),
            "targets": targets, "embeddings": embeddings}


def check_quantizable(model: nn.Module, mode: str = "whole", bits: int = 8, scheme: str = "per_channel",
                      group_size: int = GROUP_SIZE_DEFAULT, blocks: list[int] | None = None,
                      components: list[str] | None = None) -> dict:
    """Every check quantize_model() would make, on the layers' shapes only: run it on
    ev.skeleton(model_id) and a bad setting fails before the weights load."""
    check_settings(bits, scheme, mode)
    if group_size < 1:
        raise ev.UserError(f"--group-size must be at least 1 (got {group_size})")
    chosen = select_targets(model, mode, bits, blocks, components)
    for name in chosen["targets"]:
        out_f, in_f = linear_weight(model.get_submodule(name)).shape
        if bits == 8 and scheme == "group" and in_f % group_size:
            raise ev.UserError(f"--group-size {group_size} does not divide {name}'s {in_f} inputs")
        if bits == 4 and (out_f * in_f) % BLOCK_4BIT:
            raise ev.UserError(f"4-bit blocks of {BLOCK_4BIT} do not divide {name}'s {out_f * in_f} weights")
    return chosen


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "whole", bits: int = 8, scheme: str = "per_channel",
                   group_size: int = GROUP_SIZE_DEFAULT, blocks: list[int] | None = None,
                   components: list[str] | None = None) -> dict:
    """Swap the chosen layers of model for quantized ones, in place; returns the spec.

    whole, 8-bit: every nn.Linear / Conv1D, and the embeddings (per row); a tied
      output layer reads the quantized embedding table, so no fp copy is left.
    whole, 4-bit: every linear layer inside the decoder blocks (like bitsandbytes,
      which keeps the embeddings and the output layer in full precision).
    selective: only the named components of the named blocks.
    """
    chosen = check_quantizable(model, mode, bits, scheme, group_size, blocks, components)
    targets, embeddings = chosen["targets"], chosen["embeddings"]
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight
    out_name = next((n for n, m in model.named_modules() if m is out_emb), None)
    in_name = next((n for n, m in model.named_modules() if m is in_emb), None)

    for name in embeddings:
        set_module(model, name, Int8Embedding.from_float(model.get_submodule(name)))
    for name in targets:
        if tied and name == out_name and in_name in embeddings:
            set_module(model, name, model.get_submodule(in_name).tied_linear())
        else:
            set_module(model, name, make_quantized(model.get_submodule(name), bits, scheme, group_size))
    return {"mode": mode, "bits": bits, "scheme": scheme,
            "group_size": group_size if scheme == "group" else None,
            "block_size": BLOCK_4BIT if bits == 4 else None,
            "blocks": chosen["blocks"], "components": chosen["components"], "n_blocks": chosen["n_blocks"],
            "quantized_modules": targets + embeddings,
            "tied_output": bool(tied and out_name in targets and in_name in embeddings)}


# -----------------------------------------------------------------------------
# 4. Save and load (safetensors: int8 / packed weights, scales, and the spec)

def save_quantized(model: nn.Module, folder: str | Path, spec: dict, tokenizer=None) -> Path:
    """model.safetensors with every tensor once (a tied output layer is not stored
    twice), the scheme in its metadata, and the model's config beside it."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, {}
    for name, t in model.state_dict().items():
        key = ev.storage_key(t)
        if key in seen:
            continue  # the same storage under another name: re-tied on load
        seen[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    save_file(tensors, str(folder / "model.safetensors"),
              metadata={"format": "pt", "quant_spec": json.dumps(spec)})
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder / "model.safetensors"


@torch.no_grad()
def load_quantized(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict]:
    """Rebuild the float model from its config, swap in the same quantized modules,
    then load the saved int8 / packed tensors into them."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = Path(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        spec = json.loads(f.metadata()["quant_spec"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    quantize_model(model, spec["mode"], spec["bits"], spec["scheme"], spec["group_size"] or GROUP_SIZE_DEFAULT,
                   spec["blocks"], spec["components"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    stored = {state[k].untyped_storage().data_ptr() for k in tensors}
    untied = [k for k in missing if state[k].untyped_storage().data_ptr() not in stored]
    if unexpected or untied:  # a name not stored must be a tied copy of a stored tensor
        raise ValueError(f"{folder} does not match its spec: unexpected {unexpected[:3]}, missing {untied[:3]}")
    return model.eval(), spec


# -----------------------------------------------------------------------------
# 5. Speed: the side-by-side benchmark (the kernels are in kernels.py)

def set_path(model: nn.Module, path: str) -> None:
    """'fast' or 'naive' for every quantized linear (4-bit layers default to 'naive')."""
    for m in model.modules():
        if isinstance(m, (Int8Linear, Linear4bit)):
            m.path = path


@torch.no_grad()
def bench(model, tokenizer, ids: torch.Tensor, cfg: ev.EvalConfig, spec_kwargs: dict,
          progress: bool = True) -> dict:
    """fp32, INT8 naive and INT8 fast, timed side by side (round-robin) in one process."""
    int8 = copy.deepcopy(model)
    quantize_model(int8, **spec_kwargs)
    dev = ev.input_device(model)
    ev.check_timing_lengths(model, cfg.prefill_tokens, cfg.prompt_tokens, cfg.new_tokens, cfg.repeats)
    prefill_ids, prompt = ev.timing_inputs(ids, cfg.prefill_tokens, cfg.prompt_tokens, dev)
    methods = {}
    for name, m, path in (("fp32", model, "naive"), ("int8-naive", int8, "naive"), ("int8-fast", int8, "fast")):
        methods[name] = {**ev.hf_calls(m, tokenizer, prefill_ids, prompt, cfg.new_tokens,
                                       setup=lambda m=m, path=path: set_path(m, path)),
                         "weights_mib": ev.tensor_bytes(m)["mib"]}
    result = ev.side_by_side(methods, dev, cfg.new_tokens, cfg.repeats, cfg.warmup, "fp32", progress)
    return {**result, "prefill_tokens": cfg.prefill_tokens, "prompt_tokens": cfg.prompt_tokens,
            "new_tokens": cfg.new_tokens, "decode_definition": ev.DECODE_DEFINITION,
            "threads": torch.get_num_threads(), "kernel": kernels.cpu_kernel_status(),
            "kernel_rows": kernels.KERNEL_ROWS, "chunk_rows": kernels.CHUNK_ROWS}


# -----------------------------------------------------------------------------
# 6. CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="part1_quantize_scratch.py", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("quantization")
    g.add_argument("--mode", default="whole", choices=("whole", "selective"),
                   help="whole model, or only --blocks x --components (default: whole)")
    g.add_argument("--bits", type=int, default=8, choices=(8, 4), help="8 or 4 (default: 8)")
    g.add_argument("--scheme", default=None,
                   help="8-bit: per_channel (default), per_tensor, asymmetric, group; "
                        "4-bit: int4 or nf4 (default nf4), block-wise, 64 per block")
    g.add_argument("--group-size", type=int, default=GROUP_SIZE_DEFAULT,
                   help=f"inputs per group for --scheme group (default: {GROUP_SIZE_DEFAULT})")
    g.add_argument("--blocks", default=None, help="selective: decoder blocks, e.g. 0,1 or 0-3 (default: all)")
    g.add_argument("--components", default=None,
                   help="selective: attn, ffn, or the finer qkv, attn_out, ffn_up, ffn_down, "
                        "comma-separated (default: all)")
    g = p.add_argument_group("what to run")
    g.add_argument("--sensitivity", action="store_true",
                   help="quantize one block at a time, then one component type at a time, and record "
                        "each perplexity change (no latency)")
    g.add_argument("--bench", action="store_true",
                   help="time fp32, INT8 naive and INT8 fast side by side (prefill and decode) and print ratios")
    g.add_argument("--save", default=None, help="also save the quantized model (safetensors) to this folder")
    ev.add_quantizer_args(p, g)
    return p


def method_identity(spec: dict) -> dict:
    """The registry's identity of a quantize_model() spec (its name is the results' method name)."""
    group = spec["scheme"] == "group"
    selective = spec["mode"] == "selective"
    return registry.identity(f"scratch-int{spec['bits']}-{'group' if group else spec['scheme']}",
                             group_size=spec["group_size"] if group else None,
                             blocks=spec["blocks"] if selective else None,
                             components=spec["components"] if selective else None)


def sensitivity_scan(model, ids: torch.Tensor, cfg: ev.EvalConfig, base_ppl: float, spec_kwargs: dict,
                progress: bool = True) -> dict:
    """Perplexity with one block quantized at a time, then one component type at a
    time (in every block), each against the unquantized base_ppl."""
    _, blocks = decoder_blocks(model)
    runs = [("block", str(i), dict(blocks=[i])) for i in range(len(blocks))]
    runs += [("component", c, dict(components=[c])) for c in COMPONENTS]
    from tqdm.auto import tqdm
    out = {"baseline_ppl": base_ppl, "block": [], "component": []}
    for kind, label, sel in tqdm(runs, desc="sensitivity", file=sys.stderr, disable=not progress):
        m = copy.deepcopy(model)
        spec = quantize_model(m, **{**spec_kwargs, "mode": "selective", **sel})
        ppl = ev.perplexity(m, ids, cfg.max_length, cfg.stride, progress=False)["ppl"]
        out[kind].append({kind: label, "ppl": ppl, "delta_pct": 100 * (ppl / base_ppl - 1),
                          "n_modules": len(spec["quantized_modules"])})
        del m
    return out


def main(*, mode: str = "whole", bits: int = 8, scheme: str | None = None, group_size: int = 128,
         blocks: str | None = None, components: str | None = None, sensitivity: bool = False, bench: bool = False,
         save: str | None = None, skip_kld: bool = False, run: ev.RunOptions = ev.RUN) -> results.Record:
    """Quantize, evaluate through evaluate.py, write the results JSON; returns the record
    (its .path is the file written). The keywords are this script's own flags, run the shared
    ones (model, text, measuring, output: evaluate.RunOptions)."""
    args = ev.with_defaults(build_parser(), dict(locals()))
    import tempfile
    with tempfile.TemporaryDirectory(prefix="qstudy-smoke-") as workdir:
        if args.smoke:
            ev.smoke_setup(args, workdir)
        scheme = args.scheme or ("per_channel" if args.bits == 8 else "nf4")
        check_settings(args.bits, scheme, args.mode)                         # fail before loading
        if args.mode == "whole" and (args.blocks or args.components):
            raise ev.UserError("--blocks and --components need --mode selective")
        if args.bench and args.sensitivity:
            raise ev.UserError("--bench and --sensitivity are two runs: give one of them")
        if args.bench and (args.bits != 8 or args.mode != "whole" or args.skip_latency):
            raise ev.UserError("--bench times fp32 against whole-model INT8 (naive and fast): it takes no "
                               "--bits 4, --mode selective or --skip-latency")
        if args.sensitivity and (args.mode != "whole" or args.blocks or args.components):
            raise ev.UserError("--sensitivity quantizes one block, then one component type, at a time by itself: "
                               "it takes no --mode selective, --blocks or --components")
        if args.group_size != GROUP_SIZE_DEFAULT and scheme != "group":
            raise ev.UserError(f"--group-size goes with --scheme group (the scheme here is {scheme})")
        if args.save is not None and (args.bench or args.sensitivity):
            raise ev.UserError("--save saves a quantized model: it goes with a plain run, not --bench or --sensitivity")
        if args.group_size < 1:
            raise ev.UserError(f"--group-size must be at least 1 (got {args.group_size})")
        parse_blocks(args.blocks, None)
        parse_components(args.components)
        if args.save is not None:
            ev.check_new_folder(args.save, "--save", args.model)
            ev.check_out_outside_save(args.out, args.save)
        if args.sensitivity:
            args.skip_latency = True                                         # it times nothing
        cfg, source = ev.prepare(args)
        skeleton = ev.skeleton(args.model)                                  # shapes only, no weights
        spec_kwargs = dict(mode=args.mode, bits=args.bits, scheme=scheme, group_size=args.group_size,
                           blocks=parse_blocks(args.blocks, len(decoder_blocks(skeleton)[1]))
                           if args.blocks else None,
                           components=parse_components(args.components) if args.components else None)
        check_quantizable(skeleton, **spec_kwargs)
        model, tokenizer = ev.load_model(args.model, args.dtype, args.device, args.device_map)
        progress = not args.quiet
        dev = ev.input_device(model).type
        common = dict(model_id=args.model, stand_in=args.stand_in, random_weights=args.random_weights,
                      smoke=args.smoke, progress=progress)
        if args.bench:
            return run_bench(model, tokenizer, source, cfg, args, spec_kwargs)
        if args.sensitivity:
            cfg = replace(cfg, skip_latency=True, skip_disk=True, per_line=0)
            identity = registry.identity(f"scratch-int{args.bits}-{'group' if scheme == 'group' else scheme}",
                                         group_size=spec_kwargs["group_size"] if scheme == "group" else None)
            name = f"{identity['name']}-sensitivity"
            out = Path(args.out) if args.out else ev.run_path(args.results_dir, name, args.model, source, cfg,
                                                              args.smoke, dev, spec_kwargs)
            record = ev.evaluate(model, tokenizer, source, cfg, method=name, kind="sensitivity", identity=identity,
                                 settings={**spec_kwargs, "mode": "sensitivity"}, **common)
            ids = ev.tokenize(tokenizer, source.text, cfg.max_tokens)
            record["sensitivity"] = sens = sensitivity_scan(model, ids, cfg, record["perplexity"]["ppl"],
                                                       spec_kwargs, progress)
            record = results.write(record, out)
            for kind in ("block", "component"):
                for row in sens[kind]:
                    print(f"{kind} {row[kind]:>10}: ppl {row['ppl']:.4f} ({row['delta_pct']:+.3f}%)")
            print(f"wrote {out}")
            return record
        reference = None if args.skip_kld else copy.deepcopy(model)      # for the KL divergence
        spec = quantize_model(model, **spec_kwargs)
        identity = method_identity(spec)
        name = identity["name"]
        out = Path(args.out) if args.out else ev.run_path(args.results_dir, name, args.model, source, cfg,
                                                          args.smoke, dev, spec)
        record = ev.evaluate(model, tokenizer, source, cfg, method=name, identity=identity, settings=spec,
                             out_path=out,
                             save=lambda d: save_quantized(model, d, spec),
                             extra={"quantization": ev.memory_breakdown(model)}, reference=reference,
                             n_params=ev.param_count(skeleton), **common)
        if args.save:
            save_quantized(model, args.save, spec, tokenizer)
    print(ev.summary_line(record))
    q = record["quantization"]
    print(f"  bytes: quantized weights {q['quantized_weights'] / ev.MiB:.2f} MiB, scales "
          f"{q['scales_and_zero_points'] / ev.MiB:.2f} MiB, full precision {q['full_precision'] / ev.MiB:.2f} MiB "
          "(" + ", ".join(f"{k} {v} B" for k, v in q["full_precision_detail"].items()) + ")")
    print(f"wrote {out}")
    return record


def run_bench(model, tokenizer, source, cfg, args, spec_kwargs) -> results.Record:
    dev = ev.input_device(model)
    ids = ev.tokenize(tokenizer, source.text, cfg.max_tokens or ev.TIMING_TEXT_TOKENS)
    result = bench(model, tokenizer, ids, cfg, spec_kwargs, progress=not args.quiet)
    return ev.save_side_by_side("scratch-int8-bench", dict(spec_kwargs), ev.describe_model(args.model, model),
                                source, result, args, dev)

if __name__ == "__main__":
    ev.run_cli(main, build_parser())
