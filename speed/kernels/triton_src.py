"""The Triton kernels: int8 and 4-bit GEMM and GEMV, and the fused decode step's kernels.

Definitions only (each @triton.jit); speed/kernels/triton_backend.py makes their launchers,
and imports this module only where Triton imports.
"""
import triton
import triton.language as tl


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

@triton.jit
def _qz_gemv(x_ptr, p_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, N, K, G: tl.constexpr, PER_ROW: tl.constexpr,
             HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # The calibrated storage (calibrated/quantizer.py: GPTQ, AWQ, round-to-nearest): codes c in
    # [0, 15] two per byte (column 2j high nibble), and per group of G inputs of a row a scale s
    # and an integer zero point z, w = (c - z) s. Per group: y += s (sum_k x_k c_k - z sum_k x_k),
    # so the codes are multiplied as they are and the zero point costs one product a group.
    # PER_ROW: one group per row (G = K), summed over the whole row; else BK is a multiple of G.
    m = tl.program_id(0)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rh = tl.arange(0, BK // 2)
    rk = tl.arange(0, BK)
    if PER_ROW:
        acc = tl.zeros((BN,), dtype=tl.float32)
        xsum = tl.zeros((BK,), dtype=tl.float32)
    else:
        rg = tl.arange(0, BK // G)
        acc = tl.zeros((BN, BK // G), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kh = k0 // 2 + rh
        byte = tl.load(p_ptr + rn[:, None] * (K // 2) + kh[None, :],
                       mask=(rn[:, None] < N) & (kh[None, :] < K // 2), other=0).to(tl.int32)  # (BN, BK/2)
        c = tl.reshape(tl.join(byte >> 4, byte & 15), (BN, BK)).to(tl.float32)
        kk = k0 + rk
        x = tl.load(x_ptr + m * K + kk, mask=kk < K, other=0.0).to(tl.float32)  # (BK,)
        if PER_ROW:
            acc += tl.sum(c * x[None, :], axis=1)
            xsum += x
        else:
            part = tl.sum(tl.reshape(c * x[None, :], (BN, BK // G, G)), axis=2)  # (BN, BK/G)
            xg = tl.sum(tl.reshape(x, (BK // G, G)), axis=1)                     # (BK/G,)
            kg = k0 // G + rg
            gm = (rn[:, None] < N) & (kg[None, :] < K // G)
            sc = tl.load(s_ptr + rn[:, None] * (K // G) + kg[None, :], mask=gm, other=0.0).to(tl.float32)
            zp = tl.load(z_ptr + rn[:, None] * (K // G) + kg[None, :], mask=gm, other=0).to(tl.float32)
            acc += sc * (part - zp * xg[None, :])
    if PER_ROW:
        sc = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        zp = tl.load(z_ptr + rn, mask=rn < N, other=0).to(tl.float32)
        y = sc * (acc - zp * tl.sum(xsum, axis=0))
    else:
        y = tl.sum(acc, axis=1)                                                # (BN,)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * N + rn, y.to(y_ptr.dtype.element_ty), mask=rn < N)

# -------------------------------------------------------------------------
# The fused decode step (speed.fused_step.FusedStep): one token, batch 1. A block is five
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
def _q4_mm(x_ptr, p_ptr, absmax_ptr, lut_ptr, bias_ptr, y_ptr, M, N, K, BLOCK: tl.constexpr,
           LINEAR: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # y (M, N) = x (M, K) @ W^T + bias, W a packed 4-bit weight (N, K) as _q4_gemv reads it: a few
    # activation rows (a decode batch) at once, each weight tile dequantized once for all of them
    # (a GEMV per row would read and decode it M times), then one tensor-core dot in x's dtype.
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K),
                    other=0.0)                                                   # (BM, BK)
        w = _w_tile(p_ptr, absmax_ptr, lut_ptr, rn, rn < N, k0, K, 2, LINEAR, BLOCK, 0, BN, BK)   # (BN, BK) fp32
        acc += tl.dot(x, tl.trans(w.to(x.dtype)))                              # W rounded to x's dtype, as
    if HAS_BIAS:                                                                # the reference dequantizes it
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))

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
def _gemv_out(acc_y, acc_u, sc, bi, sc2, bi2, x_ptr, r_ptr, y_ptr, rn, nm, ACT: tl.constexpr,
              HAS_RES: tl.constexpr):
    # _fused_gemv's epilogue: the row sums (BN,) scaled, biased, activated, added to the residual, stored
    y = _rnd(acc_y * sc + bi, x_ptr)                                           # (BN,)
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
        u = _rnd(acc_u * sc2 + bi2, x_ptr)
        y = _rnd(_rnd(y / (1.0 + tl.exp(-y)), x_ptr) * u, x_ptr)
    if HAS_RES:
        y = _rnd(tl.load(r_ptr + rn, mask=nm, other=0.0).to(tl.float32) + y, x_ptr)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=nm)

@triton.jit
def _fused_gemv(x_ptr, nw_ptr, nb_ptr, w_ptr, s_ptr, lut_ptr, b_ptr, r_ptr, y_ptr, ws_ptr, cnt_ptr,
                N, K, eps, NORM: tl.constexpr, WFMT: tl.constexpr, LINEAR4: tl.constexpr, QB: tl.constexpr,
                HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                PDL: tl.constexpr, L2ROWS: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                SPLIT: tl.constexpr):
    # y (N,) = act(norm(x) W^T * scale + bias) [+ r], x (K,): this program's BN outputs.
    # KP: a power of two >= K (the norm's statistics read x in one load).
    # NORM 0 none, 1 LayerNorm (nw, nb), 2 RMSNorm (nw); WFMT 0 dense, 1 int8, 2 4-bit;
    # ACT 0 none, 1 GPT-2's gelu_new, 2 gelu tanh (one rounding), 3 silu(gate) * up, the
    # weight holding gate's N rows then up's N rows.
    # SPLIT > 1 (split-K): SPLIT programs share a block of BN rows, each summing its own run of
    # whole BK tiles of K, so each has fewer dependent loads in flight one after another; each
    # stores its row sums in ws (SPLIT, 2N) fp32, and the last of them to finish (a counter per
    # row block in cnt, acquire-release) adds the parts in a fixed order, applies the epilogue and
    # sets the counter back to 0 for the next launch.
    pid = tl.program_id(0)
    rb, part = pid // SPLIT, pid % SPLIT
    ks = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK                                   # columns per part: whole tiles
    k_lo = part * ks
    k_hi = tl.minimum(K, k_lo + ks)
    rn = rb * BN + tl.arange(0, BN)
    nm = rn < N
    # the first tile of weights reads nothing an earlier kernel writes: with PDL it loads
    # while the kernel before is still finishing; then wait for it, and let the next launch
    # (so do the norm's weights for that tile, the per-row scale and the bias: parameters too)
    w = _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, k_lo, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
    g, b = _norm_tile(nw_ptr, nb_ptr, k_lo, K, NORM, BK)
    sc, bi = _row_terms(s_ptr, b_ptr, rn, nm, WFMT, HAS_BIAS)
    sc2, bi2 = sc, bi
    if ACT == 3:
        w2 = _w_tile(w_ptr, s_ptr, lut_ptr, rn + N, nm, k_lo, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK)
        sc2, bi2 = _row_terms(s_ptr, b_ptr, rn + N, nm, WFMT, HAS_BIAS)
    _pdl_start(PDL)
    mean, rstd = _norm_stats(x_ptr, K, eps, NORM, KP)
    x = _x_tile(x_ptr, g, b, k_lo, K, mean, rstd, NORM, BK)
    acc = w * x[None, :]                                                        # (BN, BK)
    acc2 = acc
    if ACT == 3:
        acc2 = w2 * x[None, :]
    for k0 in range(k_lo + BK, k_hi, BK):
        g, b = _norm_tile(nw_ptr, nb_ptr, k0, K, NORM, BK)
        x = _x_tile(x_ptr, g, b, k0, K, mean, rstd, NORM, BK)
        acc += _w_tile(w_ptr, s_ptr, lut_ptr, rn, nm, k0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK) * x[None, :]
        if ACT == 3:
            acc2 += _w_tile(w_ptr, s_ptr, lut_ptr, rn + N, nm, k0, K, WFMT, LINEAR4, QB, L2ROWS, BN, BK) * x[None, :]
    acc_y, acc_u = tl.sum(acc, 1), tl.sum(acc2, 1)                             # (BN,) each
    if SPLIT == 1:
        _gemv_out(acc_y, acc_u, sc, bi, sc2, bi2, x_ptr, r_ptr, y_ptr, rn, nm, ACT, HAS_RES)
    else:
        tl.store(ws_ptr + part * 2 * N + rn, acc_y, mask=nm)
        if ACT == 3:
            tl.store(ws_ptr + part * 2 * N + N + rn, acc_u, mask=nm)
        tl.debug_barrier()                          # every thread's part stored before the release below
        done = tl.atomic_add(cnt_ptr + rb, 1, sem="acq_rel")
        if done == SPLIT - 1:                       # the last part of this row block: the others are visible
            acc_y = tl.zeros((BN,), dtype=tl.float32)
            acc_u = acc_y
            for p in tl.static_range(SPLIT):
                acc_y += tl.load(ws_ptr + p * 2 * N + rn, mask=nm, other=0.0, cache_modifier=".cg")
                if ACT == 3:
                    acc_u += tl.load(ws_ptr + p * 2 * N + N + rn, mask=nm, other=0.0, cache_modifier=".cg")
            _gemv_out(acc_y, acc_u, sc, bi, sc2, bi2, x_ptr, r_ptr, y_ptr, rn, nm, ACT, HAS_RES)
            tl.atomic_xchg(cnt_ptr + rb, 0)

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
    denom = m * 0.0 + 1.0                          # the softmax's running sum (flash attention's l)
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
        denom = denom * alpha + tl.sum(p, 0)
        a1 = a1 * alpha + tl.sum(p[:, None] * vt1.to(tl.float32), 0)
        a2 = a2 * alpha + tl.sum(p[:, None] * vt2.to(tl.float32), 0)
        m = m_new
    tl.store(out_ptr + h * D + d, (a1 / denom).to(out_ptr.dtype.element_ty), mask=dm)
    tl.store(out_ptr + h * D + HALF + d, (a2 / denom).to(out_ptr.dtype.element_ty), mask=dm)

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
