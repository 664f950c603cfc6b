"""Part 1's kernels: the int8 and 4-bit matmuls that read quantized weights as they are.

part1_quantize_scratch.py's layers compute a reference (dequantize or cast, then
F.linear, the scale after the matmul) and call one function here first; each returns the
result, or None where it cannot serve these operands (then the reference runs):

    int8_linear(x2, q, scale, zero, bias)   y = (x q^T - sum(x) zero) * scale + bias
    q4_linear(x2, module)                   y = x W^T + bias, W in packed 4-bit blocks

Decoding multiplies one row of activations by every weight: the time is the time to read
the weights. Casting a whole int8 weight to float first writes and reads more bytes than
the float weight itself. So:
  - CPU, a few rows (decode): a small C++ kernel reads int8 and converts in registers,
    vectorized by the compiler, threaded with torch's pool; compiled on first use with
    torch's load_inline (about 30 s, cached by torch). Without a compiler: None.
  - CPU, many rows (prefill): dequantize CHUNK_ROWS output rows at a time (the chunk stays
    in cache) and let torch's GEMM do the rest, bias included.
  - CUDA, fp16/bf16 (or any device under TRITON_INTERPRET=1, how the tests check them):
    Triton kernels that read int8 (or packed 4-bit) weights and dequantize in registers,
    the scale (or per-block absmax) applied there too. Decode (at most GEMV_ROWS rows) is a
    GEMV: each program owns BN output features of one row and walks K in a few wide steps,
    multiplying elementwise and summing once. Many small programs keep every SM reading
    weights; a matmul tile would compute 16 rows to use one. Prefill (more rows, int8
    only) is a tiled tensor-core matmul; 4-bit prefill takes the reference (dequantize,
    then multiply: a fused 4-bit tile was slower there).
Triton is imported once, here; without it every Triton path returns None.
"""
from __future__ import annotations

import os
import sys
import warnings

import torch

KERNEL_ROWS = 4          # CPU: the C++ kernel for at most this many activation rows
CHUNK_ROWS = 256         # CPU: output rows dequantized at a time above KERNEL_ROWS
GEMV_ROWS = 4            # CUDA: the GEMV kernels for at most this many activation rows
GEMV_BLOCKS = (32, 64, 128)   # 4-bit block sizes the GEMV takes (each divides every BK below)

try:                                                                   # the one guarded import
    import triton
    import triton.language as tl
except Exception:                  # absent, or a broken install: the CPU and reference paths serve
    triton = None


# -----------------------------------------------------------------------------
# The operations

def int8_linear(x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                bias: torch.Tensor | None) -> torch.Tensor | None:
    """x2 (M, K) activations, q (N, K) int8, scale (N,) or (1,), zero (N,) int8 or None, bias
    (N,) in x2's dtype or None -> (M, N), or None where no kernel serves (group-wise scales,
    a dtype or device without one)."""
    if scale.dim() == 2:                                  # group-wise: the scale varies along K
        return None
    if zero is None and triton_ok(x2):
        return triton_int8_linear(x2, q, scale, bias)
    if x2.device.type != "cpu":
        return None
    if x2.shape[0] > KERNEL_ROWS:
        return chunked_int8_linear(x2, q, scale, zero, bias)
    kernel = cpu_kernel() if x2.dtype == torch.float32 else None
    if kernel is None:
        return None
    y = kernel.int8_matmul(x2.contiguous(), q)                          # (M, N), int8 read in-register
    if zero is not None:
        y = y - x2.sum(-1, keepdim=True) * zero.to(x2.dtype)
    y = y * scale.to(x2.dtype)
    return y if bias is None else y + bias


def q4_linear(x2: torch.Tensor, module) -> torch.Tensor | None:
    """x2 (M, K) activations, a Part 1 Linear4bit -> (M, N) by the fused GEMV, or None (more
    than GEMV_ROWS rows, a block size or device it does not take)."""
    if (x2.shape[0] > GEMV_ROWS or module.block not in GEMV_BLOCKS or module.shape[1] % module.block
            or not triton_ok(x2)):
        return None
    return triton_4bit_linear(x2, module)


# -----------------------------------------------------------------------------
# CPU

_KERNEL_SRC = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
// y (M, N) = x (M, K) @ q^T, q (N, K) int8, x float32, all contiguous.
torch::Tensor int8_matmul(torch::Tensor x, torch::Tensor q) {
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && x.size(1) == q.size(1), "int8_matmul: bad operands");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * 4, rows = std::min<int64_t>(4, N - n);
      const int8_t* q0 = qp + n * K;
      const int8_t* q1 = q0 + (rows > 1 ? K : 0);
      const int8_t* q2 = q0 + (rows > 2 ? 2 * K : 0);
      const int8_t* q3 = q0 + (rows > 3 ? 3 * K : 0);
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        #pragma omp simd reduction(+:a0, a1, a2, a3)
        for (int64_t i = 0; i < K; ++i) {
          const float v = xr[i];
          a0 += v * (float)q0[i]; a1 += v * (float)q1[i];
          a2 += v * (float)q2[i]; a3 += v * (float)q3[i];
        }
        float* yr = yp + m * N + n;
        const float acc[4] = {a0, a1, a2, a3};
        for (int64_t r = 0; r < rows; ++r) yr[r] = acc[r];
      }
    }
  });
  return y;
}
"""
_kernel = None
_kernel_error: str | None = None


def cpu_kernel():
    """The compiled int8 kernel, or None (with a warning, once) if it cannot be built."""
    global _kernel, _kernel_error
    if _kernel is None and _kernel_error is None:
        try:
            from torch.utils.cpp_extension import load_inline
            flags = ["-O3", "-fopenmp-simd"] + (["-march=native"] if sys.platform == "linux" else [])
            _kernel = load_inline("qstudy_int8_matmul", cpp_sources=_KERNEL_SRC, functions=["int8_matmul"],
                                  extra_cflags=flags, verbose=False)
        except Exception as e:  # no compiler, no ninja, ...: fall back, say so once
            _kernel_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            warnings.warn(f"int8 CPU kernel unavailable, using the chunked path ({_kernel_error})")
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


# -----------------------------------------------------------------------------
# CUDA (Triton)

if triton is not None:
    @triton.jit
    def _int8_mm(x_ptr, q_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, SCALE_PER_ROW: tl.constexpr,
                HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # y (M, N) = (x (M, K) @ q (N, K)^T) * scale (N,) + bias (N,); all contiguous
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + rk
            a = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K),
                        other=0.0)                                               # (BM, BK)
            b = tl.load(q_ptr + rn[None, :] * K + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K),
                        other=0)                                                 # (BK, BN) int8
            acc += tl.dot(a, b.to(a.dtype))
        if SCALE_PER_ROW:
            acc = acc * tl.load(scale_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        else:
            acc = acc * tl.load(scale_ptr).to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _int8_gemv(x_ptr, q_ptr, scale_ptr, bias_ptr, y_ptr, N, K, SCALE_PER_ROW: tl.constexpr,
                  HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # y[m, n] = sum_k x[m, k] q[n, k] * scale[n] + bias[n], m = program_id(0)
        m = tl.program_id(0)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BN, BK), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + rk
            x = tl.load(x_ptr + m * K + kk, mask=kk < K, other=0.0).to(tl.float32)     # (BK,)
            q = tl.load(q_ptr + rn[:, None] * K + kk[None, :], mask=(rn[:, None] < N) & (kk[None, :] < K),
                        other=0)                                                      # (BN, BK) int8
            acc += q.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)                                                       # (BN,)
        if SCALE_PER_ROW:
            y = y * tl.load(scale_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        else:
            y = y * tl.load(scale_ptr).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * N + rn, y.to(y_ptr.dtype.element_ty), mask=rn < N)

    @triton.jit
    def _q4_gemv(x_ptr, p_ptr, absmax_ptr, lut_ptr, bias_ptr, y_ptr, N, K, BLOCK: tl.constexpr,
                LINEAR: tl.constexpr, HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # y[m, n] = sum_k x[m, k] lut[code[n, k]] absmax[n, k // BLOCK] + bias[n], m = program_id(0).
        # A row of K weights is K/2 bytes; byte j holds column 2j (high nibble) and 2j+1 (low),
        # as pack_4bit writes them. K is a multiple of BLOCK and BK of BLOCK (the caller checks),
        # so each step covers BK // BLOCK whole absmax blocks.
        m = tl.program_id(0)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rh = tl.arange(0, BK // 2)
        rk = tl.arange(0, BK)
        rb = tl.arange(0, BK // BLOCK)
        v0, v1, v2, v3 = tl.load(lut_ptr + 0), tl.load(lut_ptr + 1), tl.load(lut_ptr + 2), tl.load(lut_ptr + 3)
        v4, v5, v6, v7 = tl.load(lut_ptr + 4), tl.load(lut_ptr + 5), tl.load(lut_ptr + 6), tl.load(lut_ptr + 7)
        v8, v9, v10, v11 = tl.load(lut_ptr + 8), tl.load(lut_ptr + 9), tl.load(lut_ptr + 10), tl.load(lut_ptr + 11)
        v12, v13, v14, v15 = (tl.load(lut_ptr + 12), tl.load(lut_ptr + 13), tl.load(lut_ptr + 14),
                              tl.load(lut_ptr + 15))
        acc = tl.zeros((BN, BK // BLOCK), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kh = k0 // 2 + rh                                                      # byte index in the row
            byte = tl.load(p_ptr + rn[:, None] * (K // 2) + kh[None, :],
                           mask=(rn[:, None] < N) & (kh[None, :] < K // 2), other=0).to(tl.int32)  # (BN, BK/2)
            c = tl.reshape(tl.join(byte >> 4, byte & 15), (BN, BK))               # codes of columns k0..k0+BK
            if LINEAR:                                                             # int4: c - 8, /7 per block
                w = (c - 8).to(tl.float32)
            else:
                # lut[c] as a select tree on c's bits: registers only. (Measured on the H100 at
                # GPT-2's shapes: a gather from the table, or from a 256-entry table of byte
                # pairs, or a tree over packed fp16 pairs was no faster.)
                b0, b1, b2, b3 = (c & 1) != 0, (c & 2) != 0, (c & 4) != 0, (c & 8) != 0
                lo = tl.where(b2, tl.where(b1, tl.where(b0, v7, v6), tl.where(b0, v5, v4)),
                              tl.where(b1, tl.where(b0, v3, v2), tl.where(b0, v1, v0)))
                hi = tl.where(b2, tl.where(b1, tl.where(b0, v15, v14), tl.where(b0, v13, v12)),
                              tl.where(b1, tl.where(b0, v11, v10), tl.where(b0, v9, v8)))
                w = tl.where(b3, hi, lo)                                           # (BN, BK)
            kk = k0 + rk
            x = tl.load(x_ptr + m * K + kk, mask=kk < K, other=0.0).to(tl.float32)  # (BK,)
            part = tl.sum(tl.reshape(w * x[None, :], (BN, BK // BLOCK, BLOCK)), axis=2)  # (BN, BK/BLOCK)
            kb = k0 // BLOCK + rb
            am = tl.load(absmax_ptr + rn[:, None] * (K // BLOCK) + kb[None, :],
                         mask=(rn[:, None] < N) & (kb[None, :] < K // BLOCK), other=0.0)
            am = am.to(tl.float32)
            if LINEAR:
                am = am / 7
            acc += part * am                                                       # absmax once per block
        y = tl.sum(acc, axis=1)                                                    # (BN,)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * N + rn, y.to(y_ptr.dtype.element_ty), mask=rn < N)



def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_launchers = None


def triton_kernels() -> dict | None:
    """{'int8_mm', 'int8_gemv', 'q4_gemv'}: launchers, made on first use; None without Triton."""
    global _launchers
    if triton is None:
        return None
    if _launchers is None:
        _launchers = _make_launchers()
    return _launchers


def _make_launchers() -> dict:
    mm_configs = [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w)
                  for bm, bn, bk, w in ((16, 32, 128, 4), (64, 64, 64, 4), (64, 128, 64, 8), (128, 128, 32, 8))]
    gemv_configs = [triton.Config({"BN": bn, "BK": bk}, num_warps=w)
                    for bn, bk, w in ((2, 512, 2), (4, 256, 2), (4, 512, 4), (8, 256, 4), (8, 512, 4),
                                      (16, 256, 4), (16, 128, 4))]

    def launcher(kernel, configs, key, grid, fixed):
        """Autotuned on a GPU (first call per shape, before any CUDA graph capture);
        one fixed tile under the interpreter, which cannot time anything."""
        if _interpreting():
            return lambda M, N, *args, **kw: kernel[grid(fixed, M, N)](*args, **kw, **fixed)
        tuned = triton.autotune(configs=configs, key=key)(kernel)
        return lambda M, N, *args, **kw: tuned[lambda meta: grid(meta, M, N)](*args, **kw)

    return {
        "int8_mm": launcher(_int8_mm, mm_configs, ["M", "N", "K"],
                            lambda c, M, N: (triton.cdiv(M, c["BM"]), triton.cdiv(N, c["BN"])),
                            {"BM": 16, "BN": 32, "BK": 64}),
        "int8_gemv": launcher(_int8_gemv, gemv_configs, ["N", "K"],
                              lambda c, M, N: (M, triton.cdiv(N, c["BN"])), {"BN": 8, "BK": 128}),
        "q4_gemv": launcher(_q4_gemv, gemv_configs, ["N", "K"],
                            lambda c, M, N: (M, triton.cdiv(N, c["BN"])), {"BN": 8, "BK": 128}),
    }


def triton_ok(x: torch.Tensor) -> bool:
    on_device = x.is_cuda or _interpreting()
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
    """(M, K) activations (M <= GEMV_ROWS), a Linear4bit -> (M, N), in one kernel."""
    M, K = x2.shape
    N = module.shape[0]
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    bias = None if module.bias is None else module.bias.to(x2.dtype)
    triton_kernels()["q4_gemv"](M, N, x2.contiguous(), module.packed, module.absmax, module.lut(),
                                bias if bias is not None else x2, y, N, K, BLOCK=module.block,
                                LINEAR=module.kind == "int4", HAS_BIAS=bias is not None)
    return y
