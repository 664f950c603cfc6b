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
The fused decode step (fast_decode.FusedStep) calls fused_linear, decode_attention,
fused_embed and fused_argmax_head below: Triton kernels on CUDA (and under the
interpreter), the same operations in the C++ extension on a CPU, float32 and int8 rows;
chain_link is a kernel doing none of that work, for fast_decode --anatomy's chains.
Triton is imported once, here; without it every Triton path returns None.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import torch

KERNEL_ROWS = 4          # CPU: the C++ kernel for at most this many activation rows
CHUNK_ROWS = 256         # CPU: output rows dequantized at a time above KERNEL_ROWS
GEMV_ROWS = 4            # CUDA: the GEMV kernels for at most this many activation rows
GEMV_BLOCKS = (32, 64, 128)   # 4-bit block sizes the GEMVs take (each divides every BK below, fused too)

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
    if zero is not None:                                  # (x q^T - sum(x) zero) * scale + bias
        y = kernel.int8_matmul(x2.contiguous(), q, _ONE, _EMPTY)
        y = y - x2.sum(-1, keepdim=True) * zero.to(x2.dtype)
        y = y * scale.to(x2.dtype)
        return y if bias is None else y + bias
    return kernel.int8_matmul(x2.contiguous(), q, scale.float(), _EMPTY if bias is None else bias.float())


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
#include <algorithm>
#include <cmath>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
// One row of weights w (K int8 or float32) against x (K float32): int8 -> float in registers,
// K/16 (AVX-512) or K/8 (AVX2) fused multiply-adds into four (two) accumulators, one sum at the
// end; the row stream prefetched PREFETCH bytes ahead.
static constexpr int64_t PREFETCH = 4096;
#if defined(__AVX512F__)
static inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
static inline __m512 load16(const int8_t* q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)q)));
}
#elif defined(__AVX2__)
static inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
static inline __m256 load8(const int8_t* q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)q)));
}
#endif
template <typename W>
static inline float dot(const float* x, const W* w, int64_t K) {
  int64_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (; i + 64 <= K; i += 64) {
    _mm_prefetch((const char*)(w + i) + PREFETCH, _MM_HINT_T0);
    a0 = _mm512_fmadd_ps(load16(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(load16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    a2 = _mm512_fmadd_ps(load16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
    a3 = _mm512_fmadd_ps(load16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; i + 16 <= K; i += 16) {
    a0 = _mm256_fmadd_ps(load8(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(load8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
  }
  __m256 a = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
  for (; i < K; ++i) s += x[i] * (float)w[i];
  return s;
}
// y (M, N) = (x (M, K) @ q^T) * scale + bias: q (N, K) int8; x, scale (N or 1), bias (N or
// empty) float32, all contiguous. Threads split the rows of q; each row is read once.
torch::Tensor int8_matmul(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor bias) {
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && x.size(1) == q.size(1), "int8_matmul: bad operands");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(scale.numel() == N || scale.numel() == 1, "int8_matmul: bad scale");
  TORCH_CHECK(bias.numel() == N || bias.numel() == 0, "int8_matmul: bad bias");
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t ds = scale.numel() == 1 ? 0 : 1;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m)
        yp[m * N + n] = dot(xp + m * K, qp + n * K, K) * sp[n * ds] + (bp ? bp[n] : 0.f);
  });
  return y;
}

// ---- The fused decode step on the CPU (fast_decode.FusedStep; one token, batch 1, float32):
// the same five calls a block as the Triton kernels, each a parallel loop over output rows.
static const float* fptr(const torch::Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
// A weight as the fused GEMV reads it: fmt 0 float32 (rows, K), fmt 1 int8 (rows, K) with a
// scale per row applied after the sum.
struct Rows {
  int64_t fmt, K;
  const float* wf;
  const int8_t* wq;
  const float* scale;
  const float* bias;
  Rows(const torch::Tensor& w, int64_t fmt_, const torch::Tensor& scale_, const torch::Tensor& bias_)
      : fmt(fmt_), K(w.size(1)), wf(nullptr), wq(nullptr), scale(fptr(scale_)), bias(fptr(bias_)) {
    TORCH_CHECK(w.is_contiguous() && w.dim() == 2, "fused step: the weight must be contiguous (rows, K)");
    if (fmt == 1) wq = w.data_ptr<int8_t>(); else wf = w.data_ptr<float>();
  }
  inline float operator()(const float* x, int64_t n) const {
    float v = fmt == 1 ? dot(x, wq + n * K, K) * scale[n] : dot(x, wf + n * K, K);
    return bias ? v + bias[n] : v;
  }
};
// x (K,) through the model's norm (1 LayerNorm, 2 RMSNorm, 0 none), into buf.
static const float* normed(const torch::Tensor& x, int64_t kind, const torch::Tensor& nw, const torch::Tensor& nb,
                           double eps, std::vector<float>& buf) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == torch::kFloat32, "fused step: x must be float32");
  const float* xp = x.data_ptr<float>();
  const int64_t K = x.numel();
  if (kind == 0) return xp;
  buf.resize(K);
  const float* w = nw.data_ptr<float>();
  if (kind == 1) {                                  // (x - mean) / sqrt(var + eps) * w + b
    const float* b = fptr(nb);
    double mean = 0, var = 0;
    for (int64_t k = 0; k < K; ++k) mean += xp[k];
    mean /= K;
    for (int64_t k = 0; k < K; ++k) var += (xp[k] - mean) * (xp[k] - mean);
    const float rstd = (float)(1.0 / std::sqrt(var / K + eps));
    for (int64_t k = 0; k < K; ++k) buf[k] = (float)(xp[k] - mean) * rstd * w[k] + (b ? b[k] : 0.f);
  } else {                                          // w * (x / sqrt(mean(x^2) + eps))
    double ss = 0;
    for (int64_t k = 0; k < K; ++k) ss += (double)xp[k] * xp[k];
    const float r = 1.f / std::sqrt((float)(ss / K) + (float)eps);
    for (int64_t k = 0; k < K; ++k) buf[k] = w[k] * (xp[k] * r);
  }
  return buf.data();
}
static inline float gelu_new(float x) {            // GPT-2's gelu_new, op by op as the model writes it
  return (0.5f * x) * (1.f + std::tanh(0.7978845608028654f * (x + 0.044715f * (x * x * x))));
}
// y (N,) = act(norm(x) W^T + bias) [+ res]; act 1 gelu_new, 2 gelu (tanh), 3 silu(gate) * up
// with W the gate's N rows then the up's N rows. y may be res (the residual stream, in place).
void fused_gemv(torch::Tensor x, int64_t norm, torch::Tensor nw, torch::Tensor nb, double eps, torch::Tensor w,
                int64_t fmt, torch::Tensor scale, torch::Tensor bias, int64_t act, torch::Tensor res,
                torch::Tensor y, int64_t N) {
  thread_local std::vector<float> buf;
  const float* xn = normed(x, norm, nw, nb, eps, buf);
  TORCH_CHECK(w.size(1) == x.numel() && w.size(0) == (act == 3 ? 2 * N : N) && y.numel() == N,
              "fused_gemv: bad shapes");
  const Rows W(w, fmt, scale, bias);
  const float* rp = fptr(res);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float v = W(xn, n);
      if (act == 3) {
        const float u = W(xn, n + N);
        v = v / (1.f + std::exp(-v)) * u;
      } else if (act == 1 || act == 2) {
        v = gelu_new(v);
      }
      yp[n] = rp ? rp[n] + v : v;
    }
  });
}
// The greedy token from the final norm and the output layer (first index on ties), and the
// step's bookkeeping: tokens[step] = it, next = it, step += 1, pos += 1.
void argmax_head(torch::Tensor x, int64_t norm, torch::Tensor nw, torch::Tensor nb, double eps, torch::Tensor w,
                 int64_t fmt, torch::Tensor scale, torch::Tensor bias, torch::Tensor tokens, torch::Tensor step,
                 torch::Tensor next, torch::Tensor pos, int64_t N) {
  thread_local std::vector<float> buf, logits;
  const float* xn = normed(x, norm, nw, nb, eps, buf);
  const Rows W(w, fmt, scale, bias);
  logits.resize(N);
  float* lp = logits.data();
  at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) lp[n] = W(xn, n);
  });
  int64_t best = 0;
  for (int64_t n = 1; n < N; ++n) if (lp[n] > lp[best]) best = n;
  int64_t* s = step.data_ptr<int64_t>();
  tokens.data_ptr<int64_t>()[*s] = best;
  *s += 1;
  next.data_ptr<int64_t>()[0] = best;
  pos.data_ptr<int64_t>()[0] += 1;
}
// x (C,) = te[id] (+ pe[pos]); an int8 table (ts not empty) is a row times its scale.
void embed(torch::Tensor ids, torch::Tensor pos, torch::Tensor te, torch::Tensor ts, torch::Tensor pe,
           torch::Tensor ps, torch::Tensor x) {
  const int64_t C = x.numel(), tok = ids.data_ptr<int64_t>()[0], p = pos.data_ptr<int64_t>()[0];
  float* xp = x.data_ptr<float>();
  auto row = [&](const torch::Tensor& t, const torch::Tensor& sc, int64_t r, int64_t c) {
    return sc.numel() ? (float)t.data_ptr<int8_t>()[r * C + c] * sc.data_ptr<float>()[r]
                      : t.data_ptr<float>()[r * C + c];
  };
  for (int64_t c = 0; c < C; ++c) xp[c] = row(te, ts, tok, c) + (pe.numel() ? row(pe, ps, p, c) : 0.f);
}
// One token's attention over the static cache: qkv (H*D + 2*HKV*D,) of the token at pos; kc,
// vc (HKV, T, D) hold positions < pos and get the token's k, v at pos; rotary (Llama): cos,
// sin (T, D) on q and k. Softmax over positions 0..pos. -> out (H*D,).
static inline void rotate(const float* a, const float* c, const float* s, int64_t D, float* o) {
  const int64_t h = D / 2;
  for (int64_t d = 0; d < h; ++d) o[d] = a[d] * c[d] + (-a[d + h]) * s[d];
  for (int64_t d = h; d < D; ++d) o[d] = a[d] * c[d] + a[d - h] * s[d];
}
void attention(torch::Tensor qkv, torch::Tensor kc, torch::Tensor vc, torch::Tensor cos, torch::Tensor sin,
               torch::Tensor pos, torch::Tensor out, int64_t H, int64_t HKV, int64_t D, double sm_scale) {
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), "attention: the cache must be contiguous");
  const int64_t T = kc.size(1), p = pos.data_ptr<int64_t>()[0], G = H / HKV;
  TORCH_CHECK(p < T, "attention: the cache is full");
  const float* qp = qkv.data_ptr<float>();
  float *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>(), *op = out.data_ptr<float>();
  const float* cp = cos.numel() ? cos.data_ptr<float>() + p * D : nullptr;
  const float* sp = cos.numel() ? sin.data_ptr<float>() + p * D : nullptr;
  for (int64_t g = 0; g < HKV; ++g) {
    const float* k = qp + H * D + g * D;
    float* kdst = kp + (g * T + p) * D;
    if (cp) rotate(k, cp, sp, D, kdst); else std::copy(k, k + D, kdst);
    const float* v = qp + (H + HKV) * D + g * D;
    std::copy(v, v + D, vp + (g * T + p) * D);
  }
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    thread_local std::vector<float> q, sc, acc;      // each thread's, kept from call to call
    q.resize(D);
    sc.resize(p + 1);
    acc.resize(D);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t g = h / G;
      if (cp) rotate(qp + h * D, cp, sp, D, q.data()); else std::copy(qp + h * D, qp + (h + 1) * D, q.begin());
      float m = -INFINITY;
      for (int64_t t = 0; t <= p; ++t) {
        sc[t] = dot(q.data(), kp + (g * T + t) * D, D) * (float)sm_scale;
        m = std::max(m, sc[t]);
      }
      float sum = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t <= p; ++t) {
        const float e = std::exp(sc[t] - m);
        sum += e;
        const float* v = vp + (g * T + t) * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += e * v[d];
      }
      for (int64_t d = 0; d < D; ++d) op[h * D + d] = acc[d] / sum;
    }
  });
}
"""
_EMPTY, _ONE = torch.empty(0), torch.ones(1)          # no bias; a scale of one
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
            _kernel = load_inline("qstudy_cpu", cpp_sources=_KERNEL_SRC,
                                  functions=["int8_matmul", "fused_gemv", "argmax_head", "embed", "attention"],
                                  extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
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
    def _lut16(c, lut_ptr):
        # lut[c] for 4-bit codes c, as a select tree on c's bits: registers only. (Measured on
        # the H100 at GPT-2's shapes: a gather from the table, or from a 256-entry table of
        # byte pairs, or a tree over packed fp16 pairs was no faster.)
        v0, v1, v2, v3 = tl.load(lut_ptr + 0), tl.load(lut_ptr + 1), tl.load(lut_ptr + 2), tl.load(lut_ptr + 3)
        v4, v5, v6, v7 = tl.load(lut_ptr + 4), tl.load(lut_ptr + 5), tl.load(lut_ptr + 6), tl.load(lut_ptr + 7)
        v8, v9, v10, v11 = tl.load(lut_ptr + 8), tl.load(lut_ptr + 9), tl.load(lut_ptr + 10), tl.load(lut_ptr + 11)
        v12, v13, v14, v15 = (tl.load(lut_ptr + 12), tl.load(lut_ptr + 13), tl.load(lut_ptr + 14),
                              tl.load(lut_ptr + 15))
        b0, b1, b2, b3 = (c & 1) != 0, (c & 2) != 0, (c & 4) != 0, (c & 8) != 0
        lo = tl.where(b2, tl.where(b1, tl.where(b0, v7, v6), tl.where(b0, v5, v4)),
                      tl.where(b1, tl.where(b0, v3, v2), tl.where(b0, v1, v0)))
        hi = tl.where(b2, tl.where(b1, tl.where(b0, v15, v14), tl.where(b0, v13, v12)),
                      tl.where(b1, tl.where(b0, v11, v10), tl.where(b0, v9, v8)))
        return tl.where(b3, hi, lo)

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
        acc = tl.zeros((BN, BK // BLOCK), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kh = k0 // 2 + rh                                                      # byte index in the row
            byte = tl.load(p_ptr + rn[:, None] * (K // 2) + kh[None, :],
                           mask=(rn[:, None] < N) & (kh[None, :] < K // 2), other=0).to(tl.int32)  # (BN, BK/2)
            c = tl.reshape(tl.join(byte >> 4, byte & 15), (BN, BK))               # codes of columns k0..k0+BK
            if LINEAR:                                                             # int4: c - 8, /7 per block
                w = (c - 8).to(tl.float32)
            else:
                w = _lut16(c, lut_ptr)                                             # (BN, BK)
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

    # -------------------------------------------------------------------------
    # The fused decode step (fast_decode.FusedStep): one token, batch 1. A block is five
    # kernels: norm + QKV GEMV, attention over the static cache, out-projection GEMV + residual,
    # norm + up GEMV + activation, down GEMV + residual. Where the model rounds to its 16-bit
    # dtype (a norm's output, a layer's output, each op of GPT-2's gelu_new, a residual add),
    # these kernels round too, so they compute what the model's modules compute.

    @triton.jit
    def _pdl_start(PDL: tl.constexpr):
        # launched with programmatic dependent launch (PDL): wait until the kernel before has
        # finished and its writes are visible, then let the next kernel launch (it prefetches
        # what it can, then waits here too). Every fused-step kernel does this before it reads
        # or writes activations, so the step keeps stream order.
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _rnd(v, like_ptr):
        # round fp32 to the activations' dtype and back: where the model's op would round
        return v.to(like_ptr.dtype.element_ty).to(tl.float32)

    @triton.jit
    def _tanh(z):
        return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)

    @triton.jit
    def _w_tile(w_ptr, s_ptr, lut_ptr, rows, rmask, k0, K, WFMT: tl.constexpr, LINEAR4: tl.constexpr,
                QB: tl.constexpr, L2ROWS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # rows (BN,) x columns k0..k0+BK of a weight, as fp32: dense (N, K) in any float dtype;
        # int8 (N, K) (its per-row scale comes after the sum); packed 4-bit (N*K/2 bytes, as
        # part1.pack_4bit writes them) times its absmax per block of QB along K.
        # L2ROWS > 0, a diagnostic (fast_decode's weights-from-L2 step): row r reads row
        # r % L2ROWS, so the weights stay in L2 and the step's time is all but its HBM bytes
        if L2ROWS != 0:
            rows = rows % L2ROWS
        rk = k0 + tl.arange(0, BK)
        if WFMT == 2:
            kh = k0 // 2 + tl.arange(0, BK // 2)
            byte = tl.load(w_ptr + rows[:, None] * (K // 2) + kh[None, :],
                           mask=rmask[:, None] & (kh[None, :] < K // 2), other=0).to(tl.int32)
            c = tl.reshape(tl.join(byte >> 4, byte & 15), (BN, BK))
            if LINEAR4:
                v = (c - 8).to(tl.float32) / 7.0
            else:
                v = _lut16(c, lut_ptr)
            kb = k0 // QB + tl.arange(0, BK // QB)
            am = tl.load(s_ptr + rows[:, None] * (K // QB) + kb[None, :],
                         mask=rmask[:, None] & (kb[None, :] < K // QB), other=0.0).to(tl.float32)
            w = tl.reshape(tl.reshape(v, (BN, BK // QB, QB)) * am[:, :, None], (BN, BK))
        else:
            w = tl.load(w_ptr + rows[:, None] * K + rk[None, :], mask=rmask[:, None] & (rk[None, :] < K),
                        other=0).to(tl.float32)
        return w

    @triton.jit
    def _norm_tile(nw_ptr, nb_ptr, k0, K, NORM: tl.constexpr, BK: tl.constexpr):
        # columns k0..k0+BK of the norm's weight and bias (LayerNorm; RMSNorm has no bias), fp32
        kk = k0 + tl.arange(0, BK)
        g = kk * 0.0
        b = g
        if NORM != 0:
            g = tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        if NORM == 1:
            b = tl.load(nb_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        return g, b

    @triton.jit
    def _x_tile(x_ptr, g, b, k0, K, mean, rstd, NORM: tl.constexpr, BK: tl.constexpr):
        # columns k0..k0+BK of the GEMV's input: x, or x through the model's norm (g, b from
        # _norm_tile), rounded as the model rounds (LayerNorm: (x - mean) * rstd * g + b;
        # RMSNorm: g * (x * rstd))
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        if NORM == 1:
            x = _rnd((x - mean) * rstd * g + b, x_ptr)
        if NORM == 2:
            x = _rnd(g * _rnd(x * rstd, x_ptr), x_ptr)
        return x

    @triton.jit
    def _norm_stats(x_ptr, K, eps, NORM: tl.constexpr, KP: tl.constexpr):
        # the norm's statistics of x (K,), in fp32 from one load: LayerNorm's mean and 1/std,
        # RMSNorm's 1/rms (mean 0); (0, 1) without a norm. KP: a power of two >= K.
        mean = 0.0
        rstd = 1.0
        if NORM != 0:
            rr = tl.arange(0, KP)
            xs = tl.load(x_ptr + rr, mask=rr < K, other=0.0).to(tl.float32)
            if NORM == 1:
                mean = tl.sum(xs, 0) / K
            dx = tl.where(rr < K, xs - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(dx * dx, 0) / K + eps)
        return mean, rstd

    @triton.jit
    def _row_terms(s_ptr, b_ptr, rows, rmask, WFMT: tl.constexpr, HAS_BIAS: tl.constexpr):
        # the per-row scale (int8; 1 otherwise) and the bias (0 without) of rows (BN,), fp32
        sc = rows * 0.0 + 1.0
        bi = rows * 0.0
        if WFMT == 1:
            sc = tl.load(s_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bi = tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        return sc, bi

    @triton.jit
    def _fused_gemv(x_ptr, nw_ptr, nb_ptr, w_ptr, s_ptr, lut_ptr, b_ptr, r_ptr, y_ptr,
                    N, K, eps, NORM: tl.constexpr, WFMT: tl.constexpr, LINEAR4: tl.constexpr, QB: tl.constexpr,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                    PDL: tl.constexpr, L2ROWS: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # y (N,) = act(norm(x) W^T * scale + bias) [+ r], x (K,): this program's BN outputs.
        # KP: a power of two >= K (the norm's statistics read x in one load).
        # NORM 0 none, 1 LayerNorm (nw, nb), 2 RMSNorm (nw); WFMT 0 dense, 1 int8, 2 4-bit;
        # ACT 0 none, 1 GPT-2's gelu_new, 2 gelu tanh (one rounding), 3 silu(gate) * up, the
        # weight holding gate's N rows then up's N rows.
        pid = tl.program_id(0)
        rn = pid * BN + tl.arange(0, BN)
        nm = rn < N
        # the first tile of weights reads nothing an earlier kernel writes: with PDL it loads
        # while the kernel before is still finishing; then wait for it, and let the next launch
        # (so do the norm's weights for that tile, the per-row scale and the bias: parameters too)
        w = _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, 0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
        g, b = _norm_tile(nw_ptr, nb_ptr, 0, K, NORM, BK)
        sc, bi = _row_terms(s_ptr, b_ptr, rn, nm, WFMT, HAS_BIAS)
        if ACT == 3:
            w2 = _w_tile(w_ptr, s_ptr, lut_ptr, rn + N, nm, 0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
            sc2, bi2 = _row_terms(s_ptr, b_ptr, rn + N, nm, WFMT, HAS_BIAS)
        _pdl_start(PDL)
        mean, rstd = _norm_stats(x_ptr, K, eps, NORM, KP)
        x = _x_tile(x_ptr, g, b, 0, K, mean, rstd, NORM, BK)
        acc = w * x[None, :]                                                        # (BN, BK)
        if ACT == 3:
            acc2 = w2 * x[None, :]
        for k0 in range(BK, K, BK):
            g, b = _norm_tile(nw_ptr, nb_ptr, k0, K, NORM, BK)
            x = _x_tile(x_ptr, g, b, k0, K, mean, rstd, NORM, BK)
            acc += _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, k0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK) * x[None, :]
            if ACT == 3:
                acc2 += _w_tile(w_ptr, s_ptr, lut_ptr, rn + N, nm, k0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK) * x[None, :]
        y = _rnd(tl.sum(acc, 1) * sc + bi, x_ptr)                                  # (BN,)
        if ACT == 1:                                    # 0.5 x (1 + tanh(c (x + 0.044715 x^3))), op by op
            t = _rnd(y * y * y, x_ptr)
            t = _rnd(0.044715 * t, x_ptr)
            t = _rnd(y + t, x_ptr)
            t = _rnd(0.7978845608028654 * t, x_ptr)
            t = _rnd(_tanh(t), x_ptr)
            t = _rnd(1.0 + t, x_ptr)
            y = _rnd(_rnd(0.5 * y, x_ptr) * t, x_ptr)
        if ACT == 2:
            y = _rnd(0.5 * y * (1.0 + _tanh(0.7978845608028654 * (y + 0.044715 * y * y * y))), x_ptr)
        if ACT == 3:
            u = _rnd(tl.sum(acc2, 1) * sc2 + bi2, x_ptr)
            y = _rnd(_rnd(y / (1.0 + tl.exp(-y)), x_ptr) * u, x_ptr)
        if HAS_RES:
            y = _rnd(tl.load(r_ptr + rn, mask=nm, other=0.0).to(tl.float32) + y, x_ptr)
        tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=nm)

    @triton.jit
    def _head_rows(w, sc, bi, x0, x_ptr, nw_ptr, nb_ptr, w_ptr, s_ptr, lut_ptr, rn, nm, K, mean, rstd,
                   NORM: tl.constexpr, WFMT: tl.constexpr, LINEAR4: tl.constexpr, QB: tl.constexpr,
                   L2ROWS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # the logits of rows rn (BN,), -inf where masked: w, sc, bi their first weight tile,
        # scale and bias, x0 the first tile of the normed input; the other tiles load here
        acc = w * x0[None, :]                                                       # (BN, BK)
        for k0 in range(BK, K, BK):
            g, b = _norm_tile(nw_ptr, nb_ptr, k0, K, NORM, BK)
            x = _x_tile(x_ptr, g, b, k0, K, mean, rstd, NORM, BK)
            acc += _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, k0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK) * x[None, :]
        return tl.where(nm, _rnd(tl.sum(acc, 1) * sc + bi, x_ptr), float("-inf"))

    @triton.jit
    def _argmax_head(x_ptr, nw_ptr, nb_ptr, w_ptr, s_ptr, lut_ptr, b_ptr, pv_ptr, pi_ptr, N, K, P, eps,
                     NORM: tl.constexpr, WFMT: tl.constexpr, LINEAR4: tl.constexpr, QB: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PDL: tl.constexpr, L2ROWS: tl.constexpr, KP: tl.constexpr,
                     BN: tl.constexpr, BK: tl.constexpr):
        # The output layer's logits (N of them, x (K,) through the final norm) in P programs:
        # each takes a contiguous run of rows, BN at a time, and leaves the largest logit of
        # its run and its index (the first on ties) in pv[pid], pi[pid], for _argmax_emit. A
        # program computes the norm's statistics once for all its rows (one program per BN
        # rows would compute them 50,000 / BN times a step) and, with PDL, loads its first
        # tile of weights before the wait, as _fused_gemv does.
        pid = tl.program_id(0)
        per = tl.cdiv(tl.cdiv(N, BN), P) * BN                               # rows a program takes
        r_lo = pid * per
        r_hi = tl.minimum(r_lo + per, N)
        rn = r_lo + tl.arange(0, BN)
        nm = rn < r_hi
        w = _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, 0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
        g, b = _norm_tile(nw_ptr, nb_ptr, 0, K, NORM, BK)
        sc, bi = _row_terms(s_ptr, b_ptr, rn, nm, WFMT, HAS_BIAS)
        _pdl_start(PDL)
        mean, rstd = _norm_stats(x_ptr, K, eps, NORM, KP)
        x0 = _x_tile(x_ptr, g, b, 0, K, mean, rstd, NORM, BK)
        v = _head_rows(w, sc, bi, x0, x_ptr, nw_ptr, nb_ptr, w_ptr, s_ptr, lut_ptr, rn, nm, K, mean, rstd,
                       NORM, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
        best_v = tl.max(v, 0)
        best_i = r_lo + tl.argmax(v, 0, tie_break_left=True)
        for r0 in range(r_lo + BN, r_hi, BN):
            rn = r0 + tl.arange(0, BN)
            nm = rn < r_hi
            w = _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, 0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
            sc, bi = _row_terms(s_ptr, b_ptr, rn, nm, WFMT, HAS_BIAS)
            v = _head_rows(w, sc, bi, x0, x_ptr, nw_ptr, nb_ptr, w_ptr, s_ptr, lut_ptr, rn, nm, K, mean, rstd,
                           NORM, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
            m = tl.max(v, 0)
            best_i = tl.where(m > best_v, r0 + tl.argmax(v, 0, tie_break_left=True), best_i)
            best_v = tl.maximum(m, best_v)
        tl.store(pv_ptr + pid, best_v)
        tl.store(pi_ptr + pid, best_i)

    @triton.jit
    def _argmax_emit(pv_ptr, pi_ptr, P, tokens_ptr, step_ptr, next_ptr, pos_ptr, PDL: tl.constexpr,
                     BP: tl.constexpr):
        # The token: the largest of the P programs' maxima (first index on ties: program p's
        # rows all come before program p+1's), then the step's bookkeeping on the device:
        # tokens[step] = it, next = it, step += 1, pos += 1.
        _pdl_start(PDL)
        rp = tl.arange(0, BP)
        v = tl.load(pv_ptr + rp, mask=rp < P, other=float("-inf"))
        best_v = tl.max(v, 0)
        best_i = tl.load(pi_ptr + tl.argmax(v, 0, tie_break_left=True))
        for p0 in range(BP, P, BP):
            v = tl.load(pv_ptr + p0 + rp, mask=p0 + rp < P, other=float("-inf"))
            m = tl.max(v, 0)
            i = tl.load(pi_ptr + p0 + tl.argmax(v, 0, tie_break_left=True))
            best_i = tl.where(m > best_v, i, best_i)
            best_v = tl.maximum(m, best_v)
        step = tl.load(step_ptr)
        tok = best_i.to(tl.int64)
        tl.store(tokens_ptr + step, tok)
        tl.store(step_ptr, step + 1)
        tl.store(next_ptr, tok)
        tl.store(pos_ptr, tl.load(pos_ptr) + 1)

    @triton.jit
    def _embed(ids_ptr, pos_ptr, te_ptr, ts_ptr, pe_ptr, ps_ptr, x_ptr, C, TE_INT8: tl.constexpr,
               HAS_PE: tl.constexpr, PE_INT8: tl.constexpr, PDL: tl.constexpr, BC: tl.constexpr):
        # x (C,) = te[id] (+ pe[pos]); an int8 table's row times its scale, rounded as the model does
        _pdl_start(PDL)
        tok = tl.load(ids_ptr)
        pos = tl.load(pos_ptr)
        for c0 in range(0, C, BC):
            c = c0 + tl.arange(0, BC)
            cm = c < C
            e = tl.load(te_ptr + tok * C + c, mask=cm, other=0).to(tl.float32)
            if TE_INT8:
                e = _rnd(e * tl.load(ts_ptr + tok).to(tl.float32), x_ptr)
            if HAS_PE:
                p = tl.load(pe_ptr + pos * C + c, mask=cm, other=0).to(tl.float32)
                if PE_INT8:
                    p = _rnd(p * tl.load(ps_ptr + pos).to(tl.float32), x_ptr)
                e = _rnd(e + p, x_ptr)
            tl.store(x_ptr + c, e.to(x_ptr.dtype.element_ty), mask=cm)

    @triton.jit
    def _rotate(a1, a2, c1, c2, s1, s2, like_ptr):
        # the model's apply_rotary_pos_emb on the two halves of a head: a*cos + rotate_half(a)*sin
        r1 = _rnd(_rnd(a1 * c1, like_ptr) + _rnd(-a2 * s1, like_ptr), like_ptr)
        r2 = _rnd(_rnd(a2 * c2, like_ptr) + _rnd(a1 * s2, like_ptr), like_ptr)
        return r1, r2

    @triton.jit
    def _kv_tile(kc_ptr, vc_ptr, base, t0, pos, rt, d, dm, D, HALF: tl.constexpr):
        # positions t0..t0+BT (those below pos) of one kv head's cache, each half of D, as stored
        t = t0 + rt
        off = base + t[:, None] * D + d[None, :]
        msk = (t < pos)[:, None] & dm[None, :]
        return (tl.load(kc_ptr + off, mask=msk, other=0.0), tl.load(kc_ptr + off + HALF, mask=msk, other=0.0),
                tl.load(vc_ptr + off, mask=msk, other=0.0), tl.load(vc_ptr + off + HALF, mask=msk, other=0.0))

    @triton.jit
    def _decode_attention(qkv_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pos_ptr, out_ptr, sm_scale, H, HKV, T,
                          HALF: tl.constexpr, HP: tl.constexpr, ROTARY: tl.constexpr, PDL: tl.constexpr,
                          BT: tl.constexpr):
        # One query head per program. qkv (H*D + 2*HKV*D,) holds q, k, v of the new token at
        # position pos; the cache (HKV, T, D) holds positions 0..pos-1. Rotary (Llama) on q and
        # k from the model's cos/sin table (T, D); k, v written to the cache at pos (by the
        # group's first head); softmax over positions 0..pos only, online, in fp32.
        # pos, the cache's first BT positions and cos/sin were written by earlier steps: they
        # load before the PDL wait, while the QKV GEMV before this kernel is still running.
        h = tl.program_id(0)
        D = 2 * HALF
        kvh = h // (H // HKV)
        pos = tl.load(pos_ptr)
        d = tl.arange(0, HP)
        dm = d < HALF
        base = kvh * T * D
        rt = tl.arange(0, BT)
        kt1, kt2, vt1, vt2 = _kv_tile(kc_ptr, vc_ptr, base, 0, pos, rt, d, dm, D, HALF)
        if ROTARY:
            c1 = tl.load(cos_ptr + pos * D + d, mask=dm, other=0.0).to(tl.float32)
            c2 = tl.load(cos_ptr + pos * D + HALF + d, mask=dm, other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + pos * D + d, mask=dm, other=0.0).to(tl.float32)
            s2 = tl.load(sin_ptr + pos * D + HALF + d, mask=dm, other=0.0).to(tl.float32)
        _pdl_start(PDL)
        q1 = tl.load(qkv_ptr + h * D + d, mask=dm, other=0.0).to(tl.float32)
        q2 = tl.load(qkv_ptr + h * D + HALF + d, mask=dm, other=0.0).to(tl.float32)
        kb = H * D + kvh * D
        vb = (H + HKV) * D + kvh * D
        k1 = tl.load(qkv_ptr + kb + d, mask=dm, other=0.0).to(tl.float32)
        k2 = tl.load(qkv_ptr + kb + HALF + d, mask=dm, other=0.0).to(tl.float32)
        v1 = tl.load(qkv_ptr + vb + d, mask=dm, other=0.0).to(tl.float32)
        v2 = tl.load(qkv_ptr + vb + HALF + d, mask=dm, other=0.0).to(tl.float32)
        if ROTARY:
            q1, q2 = _rotate(q1, q2, c1, c2, s1, s2, qkv_ptr)
            k1, k2 = _rotate(k1, k2, c1, c2, s1, s2, qkv_ptr)
        if h % (H // HKV) == 0:
            tl.store(kc_ptr + base + pos * D + d, k1.to(kc_ptr.dtype.element_ty), mask=dm)
            tl.store(kc_ptr + base + pos * D + HALF + d, k2.to(kc_ptr.dtype.element_ty), mask=dm)
            tl.store(vc_ptr + base + pos * D + d, v1.to(vc_ptr.dtype.element_ty), mask=dm)
            tl.store(vc_ptr + base + pos * D + HALF + d, v2.to(vc_ptr.dtype.element_ty), mask=dm)
        m = (tl.sum(q1 * k1, 0) + tl.sum(q2 * k2, 0)) * sm_scale           # the new token's score
        l = m * 0.0 + 1.0
        a1 = v1
        a2 = v2
        for t0 in range(0, pos, BT):                    # the first tile is in registers already
            if t0 > 0:
                kt1, kt2, vt1, vt2 = _kv_tile(kc_ptr, vc_ptr, base, t0, pos, rt, d, dm, D, HALF)
            tm = t0 + rt < pos
            s = (tl.sum(kt1.to(tl.float32) * q1[None, :], 1) + tl.sum(kt2.to(tl.float32) * q2[None, :], 1))
            s = tl.where(tm, s * sm_scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            l = l * alpha + tl.sum(p, 0)
            a1 = a1 * alpha + tl.sum(p[:, None] * vt1.to(tl.float32), 0)
            a2 = a2 * alpha + tl.sum(p[:, None] * vt2.to(tl.float32), 0)
            m = m_new
        tl.store(out_ptr + h * D + d, (a1 / l).to(out_ptr.dtype.element_ty), mask=dm)
        tl.store(out_ptr + h * D + HALF + d, (a2 / l).to(out_ptr.dtype.element_ty), mask=dm)

    @triton.jit
    def _chain_link(x_ptr, y_ptr, K, READ: tl.constexpr, PDL: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr):
        # One link of a chain that does none of a step's work (fast_decode --anatomy's floor):
        # wait for the link before, as every fused-step kernel does; READ: then every program
        # reads the whole vector x (K,) that the link before wrote, as a GEMV's programs read
        # their input, and writes its BS elements of y = x + 1, program 0 also y[K] = sum(x)
        # (so the read is used, and a test can check it). x and y hold K + 1 elements.
        _pdl_start(PDL)
        if READ:
            rr = tl.arange(0, KP)
            s = tl.sum(tl.load(x_ptr + rr, mask=rr < K, other=0.0), 0)
            o = tl.program_id(0) * BS + tl.arange(0, BS)
            tl.store(y_ptr + o, tl.load(x_ptr + o, mask=o < K, other=0.0) + 1.0, mask=o < K)
            tl.store(y_ptr + K, s, mask=tl.program_id(0) == 0)

    @triton.jit
    def _grid_sync(cnt_ptr, target, SPINS: tl.constexpr):
        # A software grid barrier: this program arrives (release: its threads' writes before the
        # arrival are seen by a program that sees it), then waits (acquire) until the counter
        # holds `target` arrivals. Every program of the grid must be resident at once (a
        # persistent kernel: one program per SM). A wait longer than SPINS polls gives up and
        # sets cnt[2], so a grid that was not all resident shows as an error, not a hang.
        tl.debug_barrier()
        tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
        polls = 0
        while (seen < target) & (polls < SPINS):
            seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
            polls += 1
        if seen < target:
            tl.atomic_xchg(cnt_ptr + 2, 1)
        tl.debug_barrier()

    @triton.jit
    def _barrier_chain(x_ptr, cnt_ptr, K, LINKS, SPINS: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr):
        # LINKS links of the vector chain (_chain_link's READ work) in one persistent kernel, a
        # grid barrier between links in place of a kernel boundary (fast_decode --anatomy's
        # 'grid-barrier' chain: what a step as one kernel with this barrier would pay per
        # dependency). x holds two vectors of K + 1: link i reads x[i % 2] and writes
        # x[(i + 1) % 2]. cnt (3,) int32:
        # arrivals, departures, the timed-out flag; zero before the first launch, and left zero
        # (but the flag) by the last program out.
        P = tl.num_programs(0)
        pid = tl.program_id(0)
        rr = tl.arange(0, KP)
        o = pid * BS + tl.arange(0, BS)
        for i in range(LINKS):
            src = x_ptr + (i % 2) * (K + 1)
            dst = x_ptr + ((i + 1) % 2) * (K + 1)
            s = tl.sum(tl.load(src + rr, mask=rr < K, other=0.0, cache_modifier=".cg"), 0)
            tl.store(dst + o, tl.load(src + o, mask=o < K, other=0.0, cache_modifier=".cg") + 1.0, mask=o < K)
            tl.store(dst + K, s, mask=pid == 0)
            _grid_sync(cnt_ptr, (i + 1) * P, SPINS)
        # every program that counts itself out here has left its last wait: the last resets
        if tl.atomic_add(cnt_ptr + 1, 1, sem="acq_rel", scope="gpu") == P - 1:
            tl.atomic_xchg(cnt_ptr, 0)
            tl.atomic_xchg(cnt_ptr + 1, 0)


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
        one fixed tile under the interpreter, which cannot time anything. tile=(BN, BK,
        num_warps) skips both: that tile (the fused step's, where the step tuner pinned one)."""
        if _interpreting():
            tuned = None
        else:
            tuned = triton.autotune(configs=configs, key=key)(kernel)

        def launch(M, N, *args, tile=None, **kw):
            if tile is not None:
                bn, bk, warps = tile
                return kernel[grid({"BN": bn, "BK": bk}, M, N)](*args, **kw, BN=bn, BK=bk, num_warps=warps)
            if tuned is None:
                return kernel[grid(fixed, M, N)](*args, **kw, **fixed)
            return tuned[lambda meta: grid(meta, M, N)](*args, **kw)
        return launch

    tiles = lambda choices: [triton.Config({"BN": bn, "BK": bk}, num_warps=w) for bn, bk, w in choices]  # noqa: E731
    return {
        "fused_gemv": launcher(_fused_gemv, tiles(TILE_CHOICES["fused_gemv"]), ["N", "K", "LINEAR4", "PDL"],
                               lambda c, M, N: (triton.cdiv(N, c["BN"]),), {"BN": 8, "BK": 128}),
        "argmax_head": launcher(_argmax_head, tiles(TILE_CHOICES["argmax_head"]),     # M: the programs
                                ["N", "K", "P", "LINEAR4", "PDL"], lambda c, M, N: (M,), {"BN": 8, "BK": 128}),
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


# -----------------------------------------------------------------------------
# The fused decode step's operations (fast_decode.FusedStep calls these; one token, batch 1)

NORM_LAYER, NORM_RMS = 1, 2                              # _fused_gemv's NORM
ACT_GELU_NEW, ACT_GELU_TANH, ACT_SILU_GATE = 1, 2, 3     # _fused_gemv's ACT
W_DENSE, W_INT8, W_4BIT = 0, 1, 2                        # _fused_gemv's WFMT
HEAD_PROGRAMS_PER_SM = 8                                 # the argmax head's programs on a GPU, per SM

# The tiles (BN rows, BK columns, warps) the fused step's two weight-reading kernels may use:
# Triton's autotuner picks one per shape by timing the kernel alone; fast_decode.tune_tiles
# picks one per tile key (tile_key) by timing the whole decode step, and pins it in PINNED.
# BK >= 128 keeps whole 4-bit blocks; the larger head tiles keep as many bytes in flight for
# one-byte weights as the smaller ones do for two-byte weights.
TILE_CHOICES = {
    "fused_gemv": ((1, 1024, 4), (2, 1024, 4), (4, 1024, 8), (1, 2048, 4), (2, 2048, 8), (1, 4096, 8), (2, 512, 4),
                   (4, 256, 4), (4, 512, 4), (8, 128, 4), (8, 256, 4), (8, 512, 8), (16, 128, 4), (32, 128, 8)),
    "argmax_head": ((4, 256, 2), (8, 256, 4), (16, 256, 4), (32, 256, 8), (8, 512, 4), (16, 512, 8), (4, 1024, 4),
                    (8, 1024, 8), (16, 128, 4), (32, 128, 4), (32, 512, 8), (64, 256, 8), (64, 128, 4)),
}
PINNED: dict = {}                                        # tile_key -> (BN, BK, num_warps)
L2_ROWS = 4          # the weights-from-L2 diagnostic: each weight read from its first L2_ROWS rows


def tile_key(kernel: str, fw: "FusedWeights", *variant) -> tuple:
    """What a pinned tile is for: the kernel, the weight's shape and format, and the rest of
    the launch that changes the compiled kernel (norm, activation, residual; the head's
    programs)."""
    return (kernel, fw.n, fw.k, fw.fmt, fw.linear4, *variant)


@dataclass
class FusedWeights:
    """One linear layer, or the stacked rows of several (Llama's q, k, v; gate then up), as
    the fused GEMV reads it. fmt W_DENSE: w (rows, K) in any float dtype; W_INT8: w (rows, K)
    int8 and scale (rows,); W_4BIT: w the packed codes (rows*K/2,) uint8, scale the absmax
    per block of `block` along K, lut the 16 code values. n: output features (of each
    half, for gate/up)."""
    fmt: int
    w: torch.Tensor
    n: int
    k: int
    scale: torch.Tensor | None = None
    lut: torch.Tensor | None = None
    block: int = 64
    linear4: bool = False
    bias: torch.Tensor | None = None


def fused_on_cpu(device: torch.device) -> bool:
    """Whether the fused step's operations run as the C++ kernels here (a CPU, not Triton's
    interpreter, which the tests use to run the CUDA kernels on a CPU)."""
    return device.type == "cpu" and not _interpreting()


def _or_empty(t: torch.Tensor | None) -> torch.Tensor:
    return _EMPTY if t is None else t


PDL = True        # the fused step's kernels with programmatic dependent launch where the GPU has it


def pdl_on(device: torch.device) -> bool:
    """Whether the fused step's kernels launch with PDL on this device: a CUDA GPU of compute
    capability 9.0 or more (Hopper), not under the interpreter, and PDL not switched off."""
    return (PDL and device.type == "cuda" and not _interpreting()
            and torch.cuda.get_device_capability(device)[0] >= 9)


def _pdl(x: torch.Tensor) -> dict:
    """The launch's PDL arguments: the constexpr and the launch option, or off."""
    return {"PDL": True, "launch_pdl": True} if pdl_on(x.device) else {"PDL": False}


def fused_linear(x: torch.Tensor, fw: FusedWeights, y: torch.Tensor, norm: tuple | None = None, act: int = 0,
                 res: torch.Tensor | None = None, l2_rows: int = 0) -> None:
    """y (N,) = act(norm(x) W^T + bias) [+ res], x (K,), in one kernel; norm = (NORM_LAYER or
    NORM_RMS, weight, bias or None, eps). y may be res (the residual stream, in place).
    l2_rows > 0: the weights-from-L2 diagnostic (row r reads row r % l2_rows; not W's result)."""
    kind, nw, nb, eps = norm or (0, x, None, 0.0)
    if fused_on_cpu(x.device):
        _no_l2_rows_on_cpu(l2_rows)
        cpu_kernel().fused_gemv(x, kind, nw, _or_empty(nb), eps, fw.w, fw.fmt, _or_empty(fw.scale),
                                _or_empty(fw.bias), act, _or_empty(res), y, fw.n)
        return
    triton_kernels()["fused_gemv"](
        1, fw.n, x, nw, x if nb is None else nb, fw.w, x if fw.scale is None else fw.scale,
        x if fw.lut is None else fw.lut, x if fw.bias is None else fw.bias, x if res is None else res, y,
        fw.n, fw.k, eps, NORM=kind, WFMT=fw.fmt, LINEAR4=fw.linear4, QB=fw.block,
        HAS_BIAS=fw.bias is not None, ACT=act, HAS_RES=res is not None,
        L2ROWS=l2_rows, KP=triton.next_power_of_2(fw.k), tile=PINNED.get(gemv_key(fw, kind, act, res)),
        **_pdl(x))


def _no_l2_rows_on_cpu(l2_rows: int) -> None:
    if l2_rows:
        raise ValueError("the weights-from-L2 diagnostic is for the Triton kernels on a GPU, not the C++ ones")


def gemv_key(fw: FusedWeights, norm_kind: int, act: int, res: torch.Tensor | None) -> tuple:
    """fused_linear's tile key (PINNED)."""
    return tile_key("fused_gemv", fw, norm_kind, act, res is not None)


def head_key(fw: FusedWeights, parts: int) -> tuple:
    """fused_argmax_head's tile key (PINNED), for a head of `parts` programs."""
    return tile_key("argmax_head", fw, parts)


def head_programs(device: torch.device, n: int) -> int:
    """How many programs the argmax head runs, so how many partial maxima (pv, pi) it leaves,
    for an output layer of n rows: HEAD_PROGRAMS_PER_SM per SM on a GPU, each looping over
    its rows; 4 under the interpreter (so a test sees programs of several blocks); 1 on a CPU
    (its C++ kernel needs none)."""
    if device.type == "cuda":
        return min(n, HEAD_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count)
    return 1 if fused_on_cpu(device) else min(n, 4)


def fused_argmax_head(x: torch.Tensor, fw: FusedWeights, norm: tuple, pv: torch.Tensor, pi: torch.Tensor,
                      tokens: torch.Tensor, step: torch.Tensor, nxt: torch.Tensor, pos: torch.Tensor,
                      l2_rows: int = 0) -> None:
    """The greedy token from the final norm and the output layer, in two kernels: the first's
    programs (head_programs of them) leave the largest logit of their rows in pv, pi (fp32,
    int32); the second picks the token and does the step's bookkeeping (tokens[step], next,
    step, pos). l2_rows: as fused_linear's."""
    kind, nw, nb, eps = norm
    if fused_on_cpu(x.device):
        _no_l2_rows_on_cpu(l2_rows)
        cpu_kernel().argmax_head(x, kind, nw, _or_empty(nb), eps, fw.w, fw.fmt, _or_empty(fw.scale),
                                 _or_empty(fw.bias), tokens, step, nxt, pos, fw.n)
        return
    parts = pv.numel()
    triton_kernels()["argmax_head"](
        parts, fw.n, x, nw, x if nb is None else nb, fw.w, x if fw.scale is None else fw.scale,
        x if fw.lut is None else fw.lut, x if fw.bias is None else fw.bias, pv, pi, fw.n, fw.k, parts, eps,
        NORM=kind, WFMT=fw.fmt, LINEAR4=fw.linear4, QB=fw.block, HAS_BIAS=fw.bias is not None,
        L2ROWS=l2_rows, KP=triton.next_power_of_2(fw.k), tile=PINNED.get(head_key(fw, parts)),
        **_pdl(x))
    _argmax_emit[(1,)](pv, pi, parts, tokens, step, nxt, pos, BP=min(triton.next_power_of_2(parts), 8192),
                       num_warps=8, **_pdl(x))


def fused_embed(ids: torch.Tensor, pos: torch.Tensor, te, pe, x: torch.Tensor) -> None:
    """x (C,) = te[ids[0]] (+ pe[pos[0]]); te, pe: (table, scale or None), a scale meaning an
    int8 table with one scale per row (Part 1's Int8Embedding)."""
    (tw, tsc), (pw, psc) = te, pe if pe is not None else (x, None)
    if fused_on_cpu(x.device):
        cpu_kernel().embed(ids, pos, tw, _or_empty(tsc), _EMPTY if pe is None else pw, _or_empty(psc), x)
        return
    C = x.numel()
    _embed[(1,)](ids, pos, tw, x if tsc is None else tsc, pw, x if psc is None else psc, x, C,
                 TE_INT8=tsc is not None, HAS_PE=pe is not None, PE_INT8=psc is not None,
                 BC=min(triton.next_power_of_2(C), 1024), num_warps=4, **_pdl(x))


def decode_attention(qkv: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, pos: torch.Tensor, out: torch.Tensor,
                     heads: int, kv_heads: int, head_dim: int, sm_scale: float, rotary: tuple | None = None) -> None:
    """One token's attention over a static cache: qkv (heads*D + 2*kv_heads*D,), kc, vc
    (kv_heads, T, D) holding positions < pos, written at pos here; rotary = (cos, sin), each
    (T, D), for Llama. -> out (heads*D,)."""
    if fused_on_cpu(qkv.device):
        cos, sin = rotary or (_EMPTY, _EMPTY)
        cpu_kernel().attention(qkv, kc, vc, cos, sin, pos, out, heads, kv_heads, head_dim, sm_scale)
        return
    half = head_dim // 2
    cos, sin = rotary or (qkv, qkv)
    _decode_attention[(heads,)](qkv, kc, vc, cos, sin, pos, out, sm_scale, heads, kv_heads, kc.shape[-2],
                                HALF=half, HP=triton.next_power_of_2(half), ROTARY=rotary is not None,
                                BT=128 if kc.shape[-2] <= 128 else 256, num_warps=4 if kc.shape[-2] <= 128 else 8,
                                **_pdl(qkv))


def chain_link(x: torch.Tensor, y: torch.Tensor, programs: int, read: bool = True) -> None:
    """One link of fast_decode.chain_graph's chain on x, y (K + 1,) float32: `programs`
    programs wait for the link before (with PDL where the fused step has it); read=True: each
    reads all of x and y = x + 1, y[K] = sum(x[:K]); read=False: nothing else (an empty link)."""
    K = x.numel() - 1
    bs = triton.next_power_of_2(triton.cdiv(K, programs))
    _chain_link[(programs,)](x, y, K, READ=read, KP=triton.next_power_of_2(K), BS=bs, num_warps=4, **_pdl(x))


BARRIER_SPINS = 1 << 22          # a grid barrier's polls before it gives up (seconds; never, when all fit)


def barrier_chain(x: torch.Tensor, cnt: torch.Tensor, links: int, programs: int) -> None:
    """`links` links of chain_link's read work in ONE kernel of `programs` programs, a grid
    barrier between links: x (2, K + 1) float32, link i reads x[i % 2] and writes x[(i + 1) % 2];
    cnt (3,) int32 zeros, left zero unless a barrier timed out (cnt[2] = 1). `programs` must all
    be resident at once: at most one per SM on a GPU; 1 under the interpreter, which runs
    programs one after another."""
    K = x.shape[1] - 1
    _barrier_chain[(programs,)](x, cnt, K, links, SPINS=BARRIER_SPINS, KP=triton.next_power_of_2(K),
                                BS=triton.next_power_of_2(triton.cdiv(K, programs)), num_warps=4)
