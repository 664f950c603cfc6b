"""The CPU backend: the C++ kernels built on first use, and the chunked int8 path for many rows.
"""
from __future__ import annotations

import sys
import warnings

import torch

from speed.kernels.constants import CHUNK_ROWS
from speed.kernels.cpu_source import CPP_SOURCE

EMPTY, ONE = torch.empty(0), torch.ones(1)          # no bias; a scale of one
_kernel = None
_kernel_error: str | None = None


def cpu_kernel():
    """The compiled C++ kernels (int8 matmul, the fused step's operations), or None (with a
    warning, once) if they cannot be built."""
    global _kernel, _kernel_error
    if _kernel is None and _kernel_error is None:
        try:
            from torch.utils.cpp_extension import load_inline
            flags = ["-O3", "-fopenmp"] + (["-march=native"] if sys.platform == "linux" else [])
            _kernel = load_inline("qstudy_cpu", cpp_sources=CPP_SOURCE,
                                  functions=["int8_matmul", "fused_gemv", "argmax_head", "embed", "attention"],
                                  extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no ninja, ...: fall back, say so once
            _kernel_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            warnings.warn(f"int8 CPU kernel unavailable, using the chunked path ({_kernel_error})", stacklevel=2)
    return _kernel


def cpu_kernel_status() -> str | None:
    """'compiled', or why the kernel could not be built (for the bench's record)."""
    return "compiled" if cpu_kernel() else _kernel_error


def chunked_int8_linear(x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """Many rows: dequantize CHUNK_ROWS output rows at a time (the chunk stays in cache, so
    the scale costs nothing there) and let the GEMM add the bias."""
    n_out = q.shape[0]
    y = torch.empty(x2.shape[0], n_out, dtype=x2.dtype)
    for r in range(0, n_out, CHUNK_ROWS):
        rows = slice(r, r + CHUNK_ROWS)
        w = q[rows].to(x2.dtype)                                             # (C, in)
        if zero is not None:
            w -= zero[rows, None].to(x2.dtype)
        w *= scale[rows, None].to(x2.dtype) if scale.numel() > 1 else scale.to(x2.dtype)
        if bias is None:
            torch.mm(x2, w.t(), out=y[:, rows])
        else:
            torch.addmm(bias[rows], x2, w.t(), out=y[:, rows])
    return y
