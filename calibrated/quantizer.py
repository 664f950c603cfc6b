"""The storage GPTQ, AWQ and round-to-nearest share: n-bit codes per group, a scale and a zero point.

A weight W is (out, in). The inputs of each row are cut into groups of `group_size` consecutive
columns (group_size 0: one group per row, "per output channel"); each group has its own
asymmetric min/max grid of 2**bits levels:

    q = clamp(round(w / scale) + zero, 0, 2**bits - 1),      w ~= (q - zero) * scale

The range always holds 0, so a zero weight stays exactly zero. Codes are stored two per byte
(3-bit codes sit in 4-bit containers, so they take as many bytes as 4-bit ones, and bits per
weight counts the bytes really stored), scales in the layer's dtype and zero points as one
uint8 each. QuantLinear holds that storage and computes y = x W_hat^T + b in x's dtype: by
default the reference (dequantize, then F.linear); on the path 'fast' (set_path), decoding's
few rows go through a Triton GEMV that reads the packed codes (speed.kernels.qz_linear).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BITS = (3, 4)                 # code widths this storage takes (both in 4-bit containers)
PER_CHANNEL = 0               # group_size 0: one scale and zero point per output channel
CONTAINER_BITS = 4            # bits one stored code occupies


@dataclass(frozen=True)
class Grid:
    """What one quantized weight looks like: code width and the inputs one scale covers."""
    bits: int
    group_size: int = 128     # PER_CHANNEL (0) for one group per row

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size == PER_CHANNEL else self.group_size

    def check(self, in_features: int, name: str = "a layer") -> None:
        if self.bits not in BITS:
            raise ValueError(f"{self.bits}-bit codes are not supported (choose {', '.join(map(str, BITS))})")
        if self.group_size < 0:
            raise ValueError(f"group size must be {PER_CHANNEL} (per channel) or positive, not {self.group_size}")
        if in_features % self.group_len(in_features):
            raise ValueError(f"group size {self.group_size} does not divide {name}'s {in_features} inputs")

    @property
    def tag(self) -> str:
        return f"w{self.bits}-" + ("pc" if self.group_size == PER_CHANNEL else f"g{self.group_size}")


# -----------------------------------------------------------------------------
# Primitives. w is (rows, k): one group per row of w.

def fit(w: torch.Tensor, maxq: int, clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max grid per row of w (rows, k), the range shrunk by clip (scalar or
    (rows,)): scale (rows,) and integer zero (rows,) in [0, maxq]."""
    w = w.float()
    lo = (w.amin(dim=1) * clip).clamp(max=0)
    hi = (w.amax(dim=1) * clip).clamp(min=0)
    scale = (hi - lo) / maxq
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)        # an all-zero row
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def encode(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Codes of w (rows, k) on the grid (scale, zero) given per row, as float."""
    return torch.clamp(torch.round(w.float() / scale[:, None]) + zero[:, None], 0, maxq)


def decode(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero[:, None]) * scale[:, None]


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """w rounded to its grid and decoded back, in float32."""
    return decode(encode(w, scale, zero, maxq), scale, zero)


def grouped(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(out, in) -> (out * G, g): one row per group."""
    out, inp = w.shape
    return w.reshape(out * (inp // grid.group_len(inp)), grid.group_len(inp))


def round_to_nearest(w: torch.Tensor, grid: Grid, clip: torch.Tensor | float = 1.0):
    """Plain round-to-nearest of W (out, in): codes (out, in), scale and zero (out, G)."""
    out, inp = w.shape
    g = grouped(w.float(), grid)                                          # (out*G, g)
    scale, zero = fit(g, grid.maxq, clip)
    q = encode(g, scale, zero, grid.maxq)
    return q.reshape(out, inp), scale.reshape(out, -1), zero.reshape(out, -1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes (out, in) with scale, zero (out, G) back to a float32 (out, in) weight."""
    out, inp = q.shape
    groups = scale.shape[1]
    w = (q.float().reshape(out, groups, -1) - zero.float()[..., None]) * scale.float()[..., None]
    return w.reshape(out, inp)


def pack(q: torch.Tensor) -> torch.Tensor:
    """Codes (out, in), each < 16, two per byte: column 2j in the high nibble, 2j+1 in the low."""
    q = q.to(torch.uint8)
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1))
    return (q[:, 0::2] << 4) | q[:, 1::2]                                # (out, ceil(in/2))


def unpack(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0x0F], dim=2).reshape(packed.shape[0], -1)[:, :in_features]


# -----------------------------------------------------------------------------
# The quantized module

class QuantLinear(nn.Module):
    """A linear layer stored as packed n-bit codes with a scale and zero point per group.

    y = (x * input_scale) W_hat^T + b, where W_hat = (q - zero) * scale, dequantized in x's
    dtype. input_scale is AWQ's per-input-channel factor where it could not be folded into the
    previous op (None otherwise, and for GPTQ and round-to-nearest)."""

    def __init__(self, packed, scale, zero_point, bias, grid: Grid, in_features: int,
                 input_scale: torch.Tensor | None = None, path: str = "naive"):
        super().__init__()
        self.grid, self.in_features, self.out_features, self.path = grid, in_features, packed.shape[0], path
        self.register_buffer("packed", packed.contiguous())                 # (out, in/2) uint8
        self.register_buffer("scale", scale.contiguous())                   # (out, G) the layer's dtype
        self.register_buffer("zero_point", zero_point.contiguous())         # (out, G) uint8
        self.register_buffer("input_scale", input_scale)                    # (in,) or None
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_codes(cls, q, scale, zero, bias, grid: Grid, dtype: torch.dtype,
                   input_scale: torch.Tensor | None = None) -> "QuantLinear":
        return cls(pack(q), scale.to(dtype), zero.to(torch.uint8), bias, grid, q.shape[1],
                   None if input_scale is None else input_scale.to(dtype))

    def codes(self) -> torch.Tensor:
        return unpack(self.packed, self.in_features)

    def dequantized_weight(self, dtype=None) -> torch.Tensor:
        return dequantize(self.codes(), self.scale, self.zero_point).to(dtype or self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale.to(x.dtype)
        if self.path == "fast":
            from speed import kernels
            y = kernels.qz_linear(x.reshape(-1, self.in_features), self)
            if y is not None:
                return y.reshape(*x.shape[:-1], self.out_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.grid.bits}, "
                f"group_size={self.grid.group_size or 'per channel'}, input_scale={self.input_scale is not None}")


def set_path(model: nn.Module, path: str) -> None:
    """'fast' (the GEMV for decoding's rows, where one serves) or 'naive' for every QuantLinear."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.path = path
