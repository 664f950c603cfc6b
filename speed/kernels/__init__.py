"""The kernels' one interface: the int8 and 4-bit matmuls, and the fused decode step's operations.

part1_quantize_scratch.py's layers compute a reference (dequantize or cast, then
F.linear, the scale after the matmul) and call one function here first; each returns the
result, or None where it cannot serve these operands (then the reference runs):

    int8_linear(x2, q, scale, zero, bias)   y = (x q^T - sum(x) zero) * scale + bias
    q4_linear(x2, module)                   y = x W^T + bias, W in packed 4-bit blocks
    qz_linear(x2, module)                   y = x W^T + bias, W = (codes - zero) * scale per group
                                            (calibrated/quantizer.py's QuantLinear)

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
The fused decode step (speed.fused_step.FusedStep) calls fused_linear, decode_attention,
fused_embed and fused_argmax_head below: Triton kernels on CUDA (and under the
interpreter), the same operations in the C++ extension on a CPU, float32 and int8 rows;
chain_link is a kernel doing none of that work, for speed/fast_decode.py --anatomy's chains.
The backends live beside this file: cpu.py (its C++ in cpu_source.py), triton_backend.py (its
kernels in triton_src.py); the constants every caller shares in constants.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from speed.kernels.constants import (  # noqa: F401
    ACT_GELU_NEW,
    ACT_GELU_TANH,
    ACT_SILU_GATE,
    BARRIER_SPINS,
    CHUNK_ROWS,
    GEMV_BLOCKS,
    GEMV_ROWS,
    HEAD_PROGRAMS_PER_SM,
    KERNEL_ROWS,
    L2_ROWS,
    MM4_ROWS,
    NORM_LAYER,
    NORM_RMS,
    TILE_CHOICES,
    W_4BIT,
    W_DENSE,
    W_INT8,
    split_of,
)
from speed.kernels.cpu import EMPTY, ONE, chunked_int8_linear, cpu_kernel, cpu_kernel_status  # noqa: F401
from speed.kernels.triton_backend import (  # noqa: F401
    interpreting,
    triton,
    triton_4bit_linear,
    triton_int8_linear,
    triton_kernels,
    triton_ok,
    triton_qz_linear,
)

if triton is not None:
    from speed.kernels.triton_src import _argmax_emit, _barrier_chain, _chain_link, _decode_attention, _embed


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
        y = kernel.int8_matmul(x2.contiguous(), q, ONE, EMPTY)
        y = y - x2.sum(-1, keepdim=True) * zero.to(x2.dtype)
        y = y * scale.to(x2.dtype)
        return y if bias is None else y + bias
    return kernel.int8_matmul(x2.contiguous(), q, scale.float(), EMPTY if bias is None else bias.float())


def q4_linear(x2: torch.Tensor, module) -> torch.Tensor | None:
    """x2 (M, K) activations, a Part 1 Linear4bit -> (M, N) by its Triton kernel, or None (more
    than MM4_ROWS rows, a block size or device it does not take)."""
    if (x2.shape[0] > MM4_ROWS or module.block not in GEMV_BLOCKS or module.shape[1] % module.block
            or not triton_ok(x2)):
        return None
    return triton_4bit_linear(x2, module)


def qz_linear(x2: torch.Tensor, module) -> torch.Tensor | None:
    """x2 (M, K) activations, a calibrated QuantLinear -> (M, N) by its GEMV, or None (more than
    GEMV_ROWS rows, a group size it does not take, a dtype or device without Triton)."""
    groups = module.scale.shape[1]
    k = module.in_features
    if x2.shape[0] > GEMV_ROWS or k % 2 or (groups > 1 and k // groups not in GEMV_BLOCKS) or not triton_ok(x2):
        return None
    return triton_qz_linear(x2, module)


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
    return device.type == "cpu" and not interpreting()


def _or_empty(t: torch.Tensor | None) -> torch.Tensor:
    return EMPTY if t is None else t


def pdl_on(device: torch.device) -> bool:
    """Whether the fused step's kernels launch with programmatic dependent launch (PDL) on this
    device: a CUDA GPU of compute capability 9.0 or more (Hopper), not under the interpreter."""
    return device.type == "cuda" and not interpreting() and torch.cuda.get_device_capability(device)[0] >= 9


def _pdl(x: torch.Tensor, pdl: bool = True) -> dict:
    """The launch's PDL arguments: the constexpr and the launch option where pdl and the device
    allow it, else off."""
    return {"PDL": True, "launch_pdl": True} if pdl and pdl_on(x.device) else {"PDL": False}


def fused_linear(x: torch.Tensor, fw: FusedWeights, y: torch.Tensor, norm: tuple | None = None, act: int = 0,
                 res: torch.Tensor | None = None, l2_rows: int = 0, tiles: dict | None = None) -> None:
    """y (N,) = act(norm(x) W^T + bias) [+ res], x (K,), in one kernel; norm = (NORM_LAYER or
    NORM_RMS, weight, bias or None, eps). y may be res (the residual stream, in place).
    l2_rows > 0: the weights-from-L2 diagnostic (row r reads row r % l2_rows; not W's result).
    tiles: the pinned tiles, tile key (gemv_key) -> (BN, BK, num_warps); a key not there: the autotuner's."""
    kind, nw, nb, eps = norm or (0, x, None, 0.0)
    if fused_on_cpu(x.device):
        _no_l2_rows_on_cpu(l2_rows)
        cpu_kernel().fused_gemv(x, kind, nw, _or_empty(nb), eps, fw.w, fw.fmt, _or_empty(fw.scale),
                                _or_empty(fw.bias), act, _or_empty(res), y, fw.n)
        return
    tile = (tiles or {}).get(gemv_key(fw, kind, act, res))
    split = 1 if tile is None else split_of(tile)
    ws, cnt = split_buffers(x.device, split, fw.n, tile[0]) if split > 1 else (x, x)
    triton_kernels()["fused_gemv"](
        1, fw.n, x, nw, x if nb is None else nb, fw.w, x if fw.scale is None else fw.scale,
        x if fw.lut is None else fw.lut, x if fw.bias is None else fw.bias, x if res is None else res, y, ws, cnt,
        fw.n, fw.k, eps, NORM=kind, WFMT=fw.fmt, LINEAR4=fw.linear4, QB=fw.block,
        HAS_BIAS=fw.bias is not None, ACT=act, HAS_RES=res is not None,
        L2ROWS=l2_rows, KP=triton.next_power_of_2(fw.k), SPLIT=split, tile=tile, **_pdl(x))


_split = {}          # device -> (ws, cnt): the split-K GEMV's partial sums and counters, shared by every layer
_outgrown = []       # buffers replaced by larger ones: kept, since a captured graph may still read them


def split_buffers(device: torch.device, split: int, n: int, bn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K GEMV's buffers, at least (split, 2n) fp32 partial sums and one counter per row block
    (int32, zero: each launch's last program sets its counters back to zero). Shared by every layer:
    the fused step's kernels run one after another (with PDL, each writes them only after the kernel
    before has finished). Grown here, outside any CUDA graph capture: the step runs eagerly first."""
    ws, cnt = _split.get(device, (None, None))
    blocks = -(-n // bn)
    if ws is None or ws.numel() < split * 2 * n or cnt.numel() < blocks:
        size = max(split * 2 * n, 0 if ws is None else ws.numel())
        if ws is not None:
            _outgrown.append((ws, cnt))
        ws = torch.empty(size, dtype=torch.float32, device=device)
        cnt = torch.zeros(max(blocks, 0 if cnt is None else cnt.numel()), dtype=torch.int32, device=device)
        _split[device] = ws, cnt
    return ws, cnt


def _no_l2_rows_on_cpu(l2_rows: int) -> None:
    if l2_rows:
        raise ValueError("the weights-from-L2 diagnostic is for the Triton kernels on a GPU, not the C++ ones")


def gemv_key(fw: FusedWeights, norm_kind: int, act: int, res: torch.Tensor | None) -> tuple:
    """fused_linear's tile key (its tiles)."""
    return tile_key("fused_gemv", fw, norm_kind, act, res is not None)


def head_key(fw: FusedWeights, parts: int) -> tuple:
    """fused_argmax_head's tile key (its tiles), for a head of `parts` programs."""
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
                      l2_rows: int = 0, tiles: dict | None = None) -> None:
    """The greedy token from the final norm and the output layer, in two kernels: the first's
    programs (head_programs of them) leave the largest logit of their rows in pv, pi (fp32,
    int32); the second picks the token and does the step's bookkeeping (tokens[step], next,
    step, pos). l2_rows, tiles: as fused_linear's."""
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
        L2ROWS=l2_rows, KP=triton.next_power_of_2(fw.k), tile=(tiles or {}).get(head_key(fw, parts)),
        **_pdl(x))
    _argmax_emit[(1,)](pv, pi, parts, tokens, step, nxt, pos, BP=min(triton.next_power_of_2(parts), 8192),
                       num_warps=8, **_pdl(x))


def fused_embed(ids: torch.Tensor, pos: torch.Tensor, te, pe, x: torch.Tensor) -> None:
    """x (C,) = te[ids[0]] (+ pe[pos[0]]); te, pe: (table, scale or None), a scale meaning an
    int8 table with one scale per row (Part 1's Int8Embedding)."""
    (tw, tsc), (pw, psc) = te, pe if pe is not None else (x, None)
    if fused_on_cpu(x.device):
        cpu_kernel().embed(ids, pos, tw, _or_empty(tsc), EMPTY if pe is None else pw, _or_empty(psc), x)
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
        cos, sin = rotary or (EMPTY, EMPTY)
        cpu_kernel().attention(qkv, kc, vc, cos, sin, pos, out, heads, kv_heads, head_dim, sm_scale)
        return
    half = head_dim // 2
    cos, sin = rotary or (qkv, qkv)
    _decode_attention[(heads,)](qkv, kc, vc, cos, sin, pos, out, sm_scale, heads, kv_heads, kc.shape[-2],
                                HALF=half, HP=triton.next_power_of_2(half), ROTARY=rotary is not None,
                                BT=128 if kc.shape[-2] <= 128 else 256, num_warps=4 if kc.shape[-2] <= 128 else 8,
                                **_pdl(qkv))


def chain_link(x: torch.Tensor, y: torch.Tensor, programs: int, read: bool = True, pdl: bool = True) -> None:
    """One link of speed.anatomy.chain_graph's chain on x, y (K + 1,) float32: `programs`
    programs wait for the link before (with PDL where pdl and the fused step has it); read=True: each
    reads all of x and y = x + 1, y[K] = sum(x[:K]); read=False: nothing else (an empty link)."""
    K = x.numel() - 1
    bs = triton.next_power_of_2(triton.cdiv(K, programs))
    _chain_link[(programs,)](x, y, K, READ=read, KP=triton.next_power_of_2(K), BS=bs, num_warps=4, **_pdl(x, pdl))




def barrier_chain(x: torch.Tensor, cnt: torch.Tensor, links: int, programs: int) -> None:
    """`links` links of chain_link's read work in ONE kernel of `programs` programs, a grid
    barrier between links: x (2, K + 1) float32, link i reads x[i % 2] and writes x[(i + 1) % 2];
    cnt (3,) int32 zeros, left zero unless a barrier timed out (cnt[2] = 1). `programs` must all
    be resident at once: at most one per SM on a GPU; 1 under the interpreter, which runs
    programs one after another."""
    K = x.shape[1] - 1
    _barrier_chain[(programs,)](x, cnt, K, links, SPINS=BARRIER_SPINS, KP=triton.next_power_of_2(K),
                                BS=triton.next_power_of_2(triton.cdiv(K, programs)), num_warps=4)
