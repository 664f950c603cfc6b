"""The CPU kernels' C++ source: the int8 matmul and the fused decode step's operations.

One string, compiled by speed/kernels/cpu.py with torch's load_inline on first use (about 30 s,
cached by torch). It is kept in a .py module, as the submission format asks for .py files;
its functions are: int8_matmul, fused_gemv, argmax_head, embed, attention.
"""

CPP_SOURCE = r"""
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

// ---- The fused decode step on the CPU (speed.fused_step.FusedStep; one token, batch 1, float32):
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
