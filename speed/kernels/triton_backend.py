"""The Triton backend: the launchers (autotuned on a GPU, one fixed tile under the interpreter),
and the int8 and 4-bit linear layers on them. Triton is imported once, here, guarded: without
it every Triton path returns None and the CPU and reference paths serve.
"""
from __future__ import annotations

import os

import torch

from speed.kernels.constants import GEMV_ROWS, TILE_CHOICES, split_of

try:                                                                   # the one guarded import
    import triton

    from speed.kernels.triton_src import _argmax_head, _fused_gemv, _int8_gemv, _int8_mm, _q4_gemv, _q4_mm, _qz_gemv
except Exception:                  # absent, or a broken install: the CPU and reference paths serve
    triton = None

def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_launchers = None


def triton_kernels() -> dict | None:
    """{'int8_mm', 'int8_gemv', 'q4_gemv', 'qz_gemv', ...}: launchers, made on first use; None without Triton."""
    global _launchers
    if triton is None:
        return None
    if _launchers is None:
        _launchers = _make_launchers()
    return _launchers


def _make_launchers() -> dict:
    mm_configs = [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w)
                  for bm, bn, bk, w in ((16, 32, 128, 4), (64, 64, 64, 4), (64, 128, 64, 8), (128, 128, 32, 8))]
    q4_mm_configs = [triton.Config({"BM": 16, "BN": bn, "BK": bk}, num_warps=w)     # BM 16: the batch, masked
                     for bn, bk, w in ((32, 128, 4), (64, 128, 4), (64, 256, 4), (128, 128, 4), (128, 256, 8))]
    gemv_configs = [triton.Config({"BN": bn, "BK": bk}, num_warps=w)
                    for bn, bk, w in ((2, 512, 2), (4, 256, 2), (4, 512, 4), (8, 256, 4), (8, 512, 4),
                                      (16, 256, 4), (16, 128, 4))]

    def launcher(kernel, configs, key, grid, fixed):
        """Autotuned on a GPU (first call per shape, before any CUDA graph capture);
        one fixed tile under the interpreter, which cannot time anything. tile=(BN, BK,
        num_warps) skips both: that tile (the fused step's, where the step tuner pinned one)."""
        if interpreting():
            tuned = None
        else:
            tuned = triton.autotune(configs=configs, key=key)(kernel)

        def launch(M, N, *args, tile=None, **kw):
            if tile is not None:                        # (BN, BK, warps), or with a split-K count last
                bn, bk, warps = tile[:3]
                meta = {"BN": bn, "BK": bk, **({"SPLIT": split_of(tile)} if len(tile) > 3 else {})}
                return kernel[grid({**kw, **meta}, M, N)](*args, **{**kw, **meta}, num_warps=warps)
            if tuned is None:
                return kernel[grid({**kw, **fixed}, M, N)](*args, **kw, **fixed)
            return tuned[lambda meta: grid(meta, M, N)](*args, **kw)
        return launch

    # Triton's autotuner times a kernel alone: the one-program-per-row-block tiles only (split-K tiles,
    # whose gain is in the chain of kernels, are for the step tuner, which pins them)
    tiles = lambda choices: [triton.Config({"BN": t[0], "BK": t[1]}, num_warps=t[2])  # noqa: E731
                             for t in choices if split_of(t) == 1]
    return {
        "fused_gemv": launcher(_fused_gemv, tiles(TILE_CHOICES["fused_gemv"]), ["N", "K", "LINEAR4", "PDL"],
                               lambda c, M, N: (triton.cdiv(N, c["BN"]) * c.get("SPLIT", 1),), {"BN": 8, "BK": 128}),
        "argmax_head": launcher(_argmax_head, tiles(TILE_CHOICES["argmax_head"]),     # M: the programs
                                ["N", "K", "P", "LINEAR4", "PDL"], lambda c, M, N: (M,), {"BN": 8, "BK": 128}),
        "int8_mm": launcher(_int8_mm, mm_configs, ["M", "N", "K"],
                            lambda c, M, N: (triton.cdiv(M, c["BM"]), triton.cdiv(N, c["BN"])),
                            {"BM": 16, "BN": 32, "BK": 64}),
        "int8_gemv": launcher(_int8_gemv, gemv_configs, ["N", "K"],
                              lambda c, M, N: (M, triton.cdiv(N, c["BN"])), {"BN": 8, "BK": 128}),
        "q4_mm": launcher(_q4_mm, q4_mm_configs, ["N", "K"],
                          lambda c, M, N: (triton.cdiv(M, c["BM"]), triton.cdiv(N, c["BN"])),
                          {"BM": 16, "BN": 32, "BK": 128}),
        "q4_gemv": launcher(_q4_gemv, gemv_configs, ["N", "K"],
                            lambda c, M, N: (M, triton.cdiv(N, c["BN"])), {"BN": 8, "BK": 128}),
        "qz_gemv": launcher(_qz_gemv, gemv_configs, ["N", "K", "G"],
                            lambda c, M, N: (M, triton.cdiv(N, c["BN"])), {"BN": 8, "BK": 128}),
    }


def triton_ok(x: torch.Tensor) -> bool:
    on_device = x.is_cuda or interpreting()
    return on_device and x.dtype in (torch.float16, torch.bfloat16) and triton_kernels() is not None


def triton_int8_linear(x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias) -> torch.Tensor:
    """(M, K) activations, (N, K) int8 weight, (N,) or (1,) scale -> (M, N), in one kernel."""
    M, K = x2.shape
    N = q.shape[0]
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    args = (x2.contiguous(), q, scale, bias if bias is not None else scale, y)
    flags = {"SCALE_PER_ROW": scale.numel() > 1, "HAS_BIAS": bias is not None}
    if M <= GEMV_ROWS:
        triton_kernels()["int8_gemv"](M, N, *args, N, K, **flags)
    else:
        triton_kernels()["int8_mm"](M, N, *args, M, N, K, **flags)
    return y


def triton_4bit_linear(x2: torch.Tensor, module) -> torch.Tensor:
    """(M, K) activations (M <= MM4_ROWS), a Linear4bit -> (M, N), in one kernel: a GEMV per row up to
    GEMV_ROWS rows, above that (a decode batch) a tile that decodes each weight tile once for all rows."""
    M, K = x2.shape
    N = module.shape[0]
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    bias = None if module.bias is None else module.bias.to(x2.dtype)
    args = (x2.contiguous(), module.packed, module.absmax, module.lut(), bias if bias is not None else x2, y)
    flags = {"BLOCK": module.block, "LINEAR": module.kind == "int4", "HAS_BIAS": bias is not None}
    if M <= GEMV_ROWS:
        triton_kernels()["q4_gemv"](M, N, *args, N, K, **flags)
    else:
        triton_kernels()["q4_mm"](M, N, *args, M, N, K, **flags)
    return y


def triton_qz_linear(x2: torch.Tensor, module) -> torch.Tensor:
    """(M, K) activations (M <= GEMV_ROWS), a calibrated QuantLinear -> (M, N), in one kernel
    (the AWQ input scale, where one is kept, applied to x2 by the caller)."""
    M, K = x2.shape
    N, groups = module.scale.shape
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    bias = None if module.bias is None else module.bias.to(x2.dtype)
    triton_kernels()["qz_gemv"](M, N, x2.contiguous(), module.packed, module.scale, module.zero_point,
                                bias if bias is not None else x2, y, N, K, G=K // groups, PER_ROW=groups == 1,
                                HAS_BIAS=bias is not None)
    return y
