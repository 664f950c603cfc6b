"""speed/kernels/: the Triton kernels (under Triton's interpreter) and the C++ kernels equal
dequantize-then-matmul and the model's own operations; the chains' links do what they should."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_CHECK = r"""
import torch, torch.nn as nn, torch.nn.functional as F
import part1_quantize_scratch as p1
torch.manual_seed(0)
from speed import kernels
worst, served = 0.0, []
for M in (1, 3, 7, 16, 33):                     # GEMV (<= 4 rows), then the tiled kernels (4-bit: to 16 rows)
    lin = nn.Linear(192, 80)                       # 80 outputs: not a multiple of the tile
    x = torch.randn(M, 192).half()
    mods = [p1.Int8Linear.from_float(lin).half()] + [p1.Linear4bit.from_float(lin, k).half() for k in ("int4", "nf4")]
    for m in mods:
        m.path = "fast"
        if isinstance(m, p1.Linear4bit):
            served.append((M, kernels.q4_linear(x, m) is not None))
        ref = F.linear(x.float(), m.dequantized_weight(torch.float16).float(), m.bias.float())
        if isinstance(m, p1.Int8Linear):           # the int8 scale is applied after the matmul
            ref = F.linear(x.float(), m.qweight.float()) * m.scale.float() + m.bias.float()
        y = m(x)
        assert y.dtype == torch.float16 and y.shape == (M, 80)
        worst = max(worst, ((y.float() - ref).abs().max() / ref.abs().max()).item())
assert all(ok == (M <= kernels.MM4_ROWS) for M, ok in served), served   # a kernel, not the reference, to 16 rows
print(worst)
"""


def test_triton_kernels_equal_dequantize_then_matmul():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 2e-3                  # fp16 output rounding


QZ_CHECK = r"""
import torch, torch.nn.functional as F
from calibrated import quantizer as qz
from speed import kernels
torch.manual_seed(0)
worst, served = 0.0, 0
for bits, group, k in ((4, 0, 192), (4, 64, 192), (3, 64, 256), (4, 32, 256), (4, 128, 256)):
    w, b = torch.randn(80, k), torch.randn(80)                    # 80 outputs: not a multiple of the tile;
    #                                                               192 inputs: not a multiple of its 128 columns
    grid = qz.Grid(bits, group)
    q, scale, zero = qz.round_to_nearest(w, grid)
    m = qz.QuantLinear.from_codes(q, scale, zero, b, grid, torch.float16)
    qz.set_path(m, "fast")
    for M in (1, 3, 7):                                           # the GEMV, then the reference (7 > GEMV_ROWS)
        x = torch.randn(M, k).half()
        ref = F.linear(x.float(), qz.dequantize(q, m.scale.float(), zero), b)
        served += kernels.qz_linear(x, m) is not None
        y = m(x)
        assert y.dtype == torch.float16 and y.shape == (M, 80)
        worst = max(worst, ((y.float() - ref).abs().max() / ref.abs().max()).item())
print(served)
print(worst)
"""


def test_the_calibrated_storages_gemv_equals_dequantize_then_matmul():
    """calibrated/quantizer.py's QuantLinear on its fast path: per channel, groups of 32, 64 and
    128, 3-bit codes in 4-bit containers; the kernel serves every decode shape (2 of 3 here)."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", QZ_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    served, worst = out.stdout.strip().splitlines()[-2:]
    assert int(served) == 5 * 2                                   # M = 1 and 3 of each grid
    assert float(worst) < 2e-3                                    # fp16 output rounding


FUSED_OPS_CHECK = r"""
import torch
import json
import os
from speed import kernels as k
from transformers.activations import NewGELUActivation
TRITON = os.environ.get("TRITON_INTERPRET") == "1"
F = torch.nn.functional
torch.manual_seed(0)
K, N = 96, 40
x, res = torch.randn(K), torch.randn(N)
nw, nb, b = torch.rand(K) + 0.5, torch.randn(K), torch.randn(N)
q = torch.randint(-128, 128, (N, K), dtype=torch.int8)      # the whole int8 range, -128 too
s = torch.rand(N) / 100
fw = k.FusedWeights(k.W_INT8, q, N, K, scale=s, bias=b)
h = F.layer_norm(x, (K,), nw, nb, 1e-5)
want = res + NewGELUActivation()((h @ q.float().t()) * s + b)
# the default tile, then tiles pinned as decoder.tune_tiles pins them: three tiles along K
# and a last block of rows half full; two tiles along K, the second half masked; under Triton,
# split-K too: K in 2 parts (2 tiles and 1), in 3 (1 tile each), in 4 (the last part past K: empty)
splits = ((16, 32, 4, 2), (16, 32, 4, 3), (8, 32, 2, 4)) if TRITON else ()
for tile in (None, (16, 32, 4), (16, 64, 2), *splits):
    tiles = {k.gemv_key(fw, k.NORM_LAYER, k.ACT_GELU_NEW, res): tile} if tile else None
    y = res.clone()
    k.fused_linear(x, fw, y, (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, y, tiles=tiles)
    assert (y - want).abs().max() < 1e-5 * want.abs().max(), f"LayerNorm + int8 + gelu_new + residual, {tile}"
K2 = 90                                          # a row length that no power-of-2 tile divides
q2, nw2 = torch.randint(-128, 128, (N, K2), dtype=torch.int8), torch.rand(K2) + 0.5
y = torch.empty(N)
k.fused_linear(x[:K2], k.FusedWeights(k.W_INT8, q2, N, K2, scale=s), y, (k.NORM_RMS, nw2, None, 1e-6))
want2 = (nw2 * (x[:K2] * torch.rsqrt(x[:K2].pow(2).mean() + 1e-6))) @ q2.float().t() * s
assert (y - want2).abs().max() < 1e-5 * want2.abs().max(), "RMSNorm + int8, K not a multiple of 4"
if TRITON:                                       # the weights-from-L2 diagnostic: row r reads row r % 4
    y = res.clone()
    k.fused_linear(x, fw, y, (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, y, l2_rows=4)
    want4 = res + NewGELUActivation()((h @ q[torch.arange(N) % 4].float().t()) * s + b)
    assert (y - want4).abs().max() < 1e-5 * want4.abs().max(), "weights from L2"
else:
    try:
        k.fused_linear(x, fw, res.clone(), (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, res, l2_rows=4)
        raise SystemExit("the C++ kernels ran the weights-from-L2 diagnostic")
    except ValueError:
        pass
if TRITON:                                       # the pinned tile is the one launched: one Triton cannot make
    try:
        k.fused_linear(x, fw, res.clone(), (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, res,
                       tiles={k.gemv_key(fw, k.NORM_LAYER, k.ACT_GELU_NEW, res): (16, 48, 4)})
        raise SystemExit("a pinned tile of 48 columns ran: the pin was not used")
    except Exception as e:
        assert "power of 2" in str(e) or "arange" in str(e), e

w = torch.randn(2 * N, K)
h = nw * (x * torch.rsqrt(x.pow(2).mean() + 1e-6))
g, u = (h @ w.t()).split(N)
want = F.silu(g) * u
fwg = k.FusedWeights(k.W_DENSE, w, N, K)
for tile in (None, *(((16, 32, 4, 3), (8, 64, 2, 2)) if TRITON else ())):   # split-K: both halves' parts
    y = torch.empty(N)
    tiles = {k.gemv_key(fwg, k.NORM_RMS, k.ACT_SILU_GATE, None): tile} if tile else None
    for _ in range(2):                           # twice: the last part set the counters back to zero
        k.fused_linear(x, fwg, y, (k.NORM_RMS, nw, None, 1e-6), k.ACT_SILU_GATE, tiles=tiles)
        assert (y - want).abs().max() < 1e-5 * want.abs().max(), f"RMSNorm + gate/up + silu, {tile}"
if TRITON:
    assert not k.split_buffers(x.device, 2, N, 8)[1].any(), "every split-K counter back to zero"

H, HKV, D = 4, 2, 8
for T, pos in ((10, 6), (300, 290)):             # one tile of the cache, and two (positions past 256)
    kc, vc = torch.randn(HKV, T, D), torch.randn(HKV, T, D)
    qkv, cos, sin = torch.randn((H + 2 * HKV) * D), torch.randn(T, D), torch.randn(T, D)
    kc0, out = kc.clone(), torch.empty(H * D)
    k.decode_attention(qkv, kc, vc, torch.tensor([pos]), out, H, HKV, D, D ** -0.5, (cos, sin))
    half = lambda t: torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1)
    rot = lambda t: t * cos[pos] + half(t) * sin[pos]
    qh, kh, vh = qkv.split([H * D, HKV * D, HKV * D])
    assert torch.allclose(kc[:, pos], rot(kh.view(HKV, D)), atol=1e-6), "k written at pos, rotated"
    assert torch.equal(vc[:, pos], vh.view(HKV, D)) and torch.equal(kc[:, :pos], kc0[:, :pos]), "v at pos"
    keys = kc[:, :pos + 1].repeat_interleave(H // HKV, 0)
    values = vc[:, :pos + 1].repeat_interleave(H // HKV, 0)
    want = F.scaled_dot_product_attention(rot(qh.view(H, 1, D)), keys, values)
    assert torch.allclose(out, want.reshape(-1), atol=1e-5), f"attention, {T} positions"

V = 50
parts = k.head_programs(x.device, V)       # under the interpreter 4 programs of 2 blocks (BN 8) each
for win, twin, tile in ((37, 45, None), (37, 12, None), (37, 38, (4, 32, 2)), (37, 45, (4, 32, 2)),
                        (37, 12, (4, 32, 2))):
    # the largest logit twice, in one program's run and in two; then with a pinned tile of 4
    # rows x 32 columns (4 programs of 4 blocks each): in one block, two blocks, two programs
    wv = torch.randn(V, K)
    tiles = {k.head_key(k.FusedWeights(k.W_DENSE, wv, V, K), parts): tile} if tile else None
    wv[win] = 4 * wv[win].abs() * torch.sign(F.layer_norm(x, (K,), nw, nb, 1e-5))
    wv[twin] = wv[win]
    tokens, step, nxt, p = torch.zeros(3, dtype=torch.long), torch.tensor([1]), \
        torch.zeros(1, 1, dtype=torch.long), torch.tensor([5])
    k.fused_argmax_head(x, k.FusedWeights(k.W_DENSE, wv, V, K), (k.NORM_LAYER, nw, nb, 1e-5),
                        torch.empty(parts), torch.empty(parts, dtype=torch.int32), tokens, step, nxt, p,
                        tiles=tiles)
    first = min(win, twin)
    assert tokens.tolist() == [0, first, 0] and step.item() == 2 and nxt.item() == first and p.item() == 6, \
        f"head: {tokens.tolist()}, want {first} (the first of two equal logits), tile {tile}"
print("OK")
"""


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_fused_step_operations_equal_the_models_ops(backend):
    """Each operation of the fused step (C++ on a CPU; Triton, under its interpreter) against
    the same computation in torch ops: LayerNorm + int8 GEMV + bias + gelu_new + residual;
    RMSNorm + a float gate/up GEMV + silu(g) * u; attention over a cache of one tile and of
    two, with rotary and grouped-query heads, k and v written at pos; the argmax head and its
    bookkeeping."""
    if backend == "triton":
        pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TRITON_INTERPRET", None)
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, "-c", FUSED_OPS_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-2000:]


CHAIN_CHECK = r"""
import torch
from speed import kernels as k
K = 50
x = torch.zeros(2, K + 1)
for i in range(5):                       # link i reads x[i % 2], writes x[(i + 1) % 2]
    k.chain_link(x[i % 2], x[(i + 1) % 2], programs=7)
print("RESULT", x[1, :K].unique().tolist(), x[1, K].item())
k.chain_link(x[1], x[0], programs=7, read=False)
print("RESULT", x[0, :K].unique().tolist(), x[0, K].item())
"""


def test_a_chain_link_reads_what_the_link_before_wrote():
    """The anatomy's vector chain is a floor only if each link really reads the whole vector the
    link before wrote: after five links from zeros every element is 5, and the sum slot holds
    the sum of the fourth link's output (4 x 50); an empty link writes nothing."""
    assert interpreted(CHAIN_CHECK) == ["RESULT [5.0] 200.0", "RESULT [4.0] 150.0"]


def interpreted(check: str) -> list[str]:
    """The RESULT lines that a check script prints, run with Triton's interpreter on the CPU."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return [x for x in out.stdout.splitlines() if x.startswith("RESULT")]


BARRIER_CHECK = r"""
import torch
from speed import kernels as k
K = 50
x = torch.zeros(2, K + 1)
cnt = torch.zeros(3, dtype=torch.int32)
k.barrier_chain(x, cnt, 5, programs=1)   # link i reads x[i % 2], writes x[(i + 1) % 2]
print("RESULT", x[1, :K].unique().tolist(), x[1, K].item(), cnt.tolist())
k.barrier_chain(x, cnt, 4, programs=1)   # again, from where the first launch left x
print("RESULT", x[1, :K].unique().tolist(), x[0, :K].unique().tolist(), x[0, K].item(), cnt.tolist())
"""


def test_the_grid_barrier_chain_does_the_vector_chains_work_in_one_kernel_and_resets_its_counter():
    """The grid-barrier chain bounds a step written as one persistent kernel only if each of its
    links does a vector link's work: from zeros, five links leave every element 5 and the sum
    slot 4 x 50, as five chain_link calls do; the arrival and departure counters are zero again
    after each launch (a second launch would otherwise pass its barriers at once), and no
    barrier timed out. Under the interpreter programs run one after another, so one program:
    the barriers' waits are exercised on the GPU, where anatomy checks the chain's values."""
    assert interpreted(BARRIER_CHECK) == ["RESULT [5.0] 200.0 [0, 0, 0]", "RESULT [7.0] [8.0] 350.0 [0, 0, 0]"]
