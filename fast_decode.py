#!/usr/bin/env python3
"""GPU speed without the overhead: a static-KV-cache, CUDA-graph decode path for GPT-2 and
Llama, and the side-by-side benchmark that measures every method both ways on one GPU.

    python fast_decode.py --model DIR --text-file FILE            # the bench (CUDA needed)
    python fast_decode.py --methods fp16,scratch-int8-fast        # a subset
    python fast_decode.py --device cpu --model DIR --text-file FILE   # the CPU bench, llama.cpp beside
    python fast_decode.py --anatomy --model DIR --text-file FILE      # what bounds the fused step (CUDA)
    python fast_decode.py --help

Why: at GPT-2's size, Hugging Face generate spends a decoded token on Python and kernel
launches, not on reading the weights (on an H100 those take under 0.1 ms), so fewer
weight bytes cannot show. The fast path removes the overhead:
  - a static KV cache, preallocated for prompt + new tokens, written in place;
  - each step (the prompt pass, one decode step, the 1x512 prefill) captured once as a
    CUDA graph and replayed: one launch per step, no Python between kernels; the decode
    step also takes the argmax and feeds it back on the device, so 128 tokens are 128
    replays and one copy back;
  - Part 1's int8 and 4-bit layers run fused Triton kernels (a GEMV at decode that
    dequantizes in registers), set with part1.set_path(model, "fast").
The fused step goes further: one decode step as five kernels a block (FusedStep, section 2),
Triton on CUDA and C++ on a CPU, where the per-token Python of the static path is most of
a step (on 2 cores: about 45 small ops a block; the fused step makes five calls).
--anatomy times that step beside chains of as many links doing none of its work (separate
kernels, and one persistent kernel with grid barriers), and profiles each kernel (section
4c): what a step of that many dependent links can take.
It computes what the model computes, in the same order per token: each block's modules are
called as they are (quantized or not), only attention reads the static cache. Greedy
tokens are checked against the same model's generate() in every run, each Part 1 layer
against dequantize-then-matmul, and each linear layer is timed alone at one token.

Assumptions: batch 1, and a GPT-2 (model_type gpt2: wte/wpe, blocks of ln_1, attn.c_attn,
attn.c_proj, ln_2, mlp, then ln_f and lm_head) or a Llama (model_type llama: embed_tokens,
blocks of input_layernorm, self_attn.q/k/v/o_proj with rotary and grouped-query heads,
post_attention_layernorm, mlp, then norm and lm_head). A method whose layers cannot be
captured (LLM.int8() has data-dependent shapes) runs the same static-cache path without
a graph, and the results say so.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import evaluate as ev
import kernels
import results

# Peak memory bandwidth from NVIDIA's spec sheets, matched against the device name (first
# match wins): the floor of a decode step is weight bytes / this. Unknown GPUs get no floor.
HBM_PEAK_BYTES_PER_S = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))


def hbm_bytes_per_s(device_name: str) -> float | None:
    return next((bw for key, bw in HBM_PEAK_BYTES_PER_S if key in device_name), None)


def bench_bandwidth(record: dict) -> float | None:
    """The peak bandwidth (bytes/s) of the GPU that a bench record ran on: the table above,
    matched against the recorded device name; else what the bench recorded. (Benches made
    before the table assumed an H100's 3.35 TB/s whatever the GPU.)"""
    name = (record.get("environment") or {}).get("device_name") or ""
    bw = hbm_bytes_per_s(name) or record["bench"].get("hbm_bytes_per_s")
    return float(bw) if bw else None


NOT_CAPTURABLE = {"bnb-int8": "LLM.int8() splits outlier columns by value (data-dependent shapes): not capturable"}
FAST_PATH = "static KV cache, one CUDA graph per step (prompt pass, decode step, prefill), argmax on the device"
FUSED_PATH = ("the fast path with the decode step as FusedStep's Triton kernels: per block norm+QKV GEMV, "
              "attention over the filled cache, out-projection GEMV+residual, norm+up GEMV+activation, "
              "down GEMV+residual; final norm+output layer+argmax (a few programs per SM, each looping over its "
              "rows), then one kernel picks the token; one CUDA graph; on Hopper with programmatic dependent "
              "launch (each kernel loads what earlier kernels cannot change, its first weight tile with the "
              "norm's weights, the int8 scales and the bias, or the filled cache, while the kernel before finishes)")
# The peers: the same job done by others' recipes, in the same round-robin run.
COMPILE_MODE = "max-autotune-no-cudagraphs"       # the mode of gpt-fast's decode step; the graph is ours
PEERS = {"torchao-int8wo": "torchao int8 weight-only (Int8WeightOnlyConfig) on every linear layer (GPT-2's Conv1D "
                           "made nn.Linear first), the static-cache decode step under torch.compile(mode="
                           f"'{COMPILE_MODE}'), replayed from one CUDA graph",
         "hf-static-compile": "fp16, transformers generate() with cache_implementation='static', which compiles "
                              "the forward (torch.compile, mode 'reduce-overhead': CUDA graphs)"}
METHODS = ("fp32", "fp16", "bnb-int8", "bnb-nf4", "scratch-int8-naive", "scratch-int8-fast",
           "scratch-int4-fast", "scratch-nf4-fast") + tuple(PEERS)


# -----------------------------------------------------------------------------
# 1. The static-cache models: the model's own modules, attention over a preallocated cache

class StaticCache:
    """K and V for max_len positions of every block, batch 1, written in place."""

    def __init__(self, model, blocks, kv_heads: int, head_dim: int, norm: torch.nn.Module, max_len: int):
        self.model, self.blocks, self.max_len = model, list(blocks), max_len
        self.dtype = norm.weight.dtype                          # norms keep the compute dtype everywhere
        self.device = norm.weight.device
        shape = (len(self.blocks), 1, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)     # (L, 1, Hkv, T, D)
        self.v = torch.zeros_like(self.k)
        self.t = torch.arange(max_len, device=self.device)

    def attend(self, i: int, q, k, v, pos, mask, groups: int = 1) -> torch.Tensor:
        """Write block i's k, v (1, Hkv, S, D) at pos; q (1, H, S, D) -> (1, S, H*D)."""
        self.k[i].index_copy_(2, pos, k)
        self.v[i].index_copy_(2, pos, v)
        keys, values = self.k[i], self.v[i]                                   # (1, Hkv, T, D)
        if groups > 1:                                   # grouped-query attention: as the model's repeat_kv
            keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)   # (1, H, S, D)
        return a.transpose(1, 2).reshape(1, q.shape[2], -1)


class StaticGPT2(StaticCache):
    """A GPT2LMHeadModel: wte + wpe, blocks of ln_1, attn.c_attn, attn.c_proj, ln_2, mlp; ln_f, lm_head."""

    def __init__(self, model, max_len: int):
        tr, c = model.transformer, model.config
        self.n_head, self.d = c.n_head, c.n_embd
        super().__init__(model, tr.h, c.n_head, c.n_embd // c.n_head, tr.ln_f, max_len)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (1, S) at positions pos (S,) -> logits (1, S, V); writes K, V at pos."""
        tr, H = self.model.transformer, self.n_head
        x = (tr.wte(ids) + tr.wpe(pos)[None]).to(self.dtype)                 # (1, S, C)
        mask = self.t[None, :] <= pos[:, None]                               # (S, T): causal, cache-wide
        for i, blk in enumerate(self.blocks):
            qkv = blk.attn.c_attn(blk.ln_1(x))                               # (1, S, 3C)
            q, k, v = (t.view(1, -1, H, self.d // H).transpose(1, 2) for t in qkv.split(self.d, dim=-1))
            x = x + blk.attn.c_proj(self.attend(i, q, k, v, pos, mask))
            x = x + blk.mlp(blk.ln_2(x))
        return self.model.lm_head(tr.ln_f(x))


class StaticLlama(StaticCache):
    """A LlamaForCausalLM: embed_tokens, blocks of input_layernorm, self_attn (q/k/v/o_proj,
    rotary on q and k, grouped-query), post_attention_layernorm, mlp; norm, lm_head. The
    rotary cos/sin come from the model's own rotary_emb, once for every cache position."""

    def __init__(self, model, max_len: int):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        m, c = model.model, model.config
        self.n_head, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        super().__init__(model, m.layers, self.kv_heads, self.head_dim, m.norm, max_len)
        self.rotate = apply_rotary_pos_emb
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)        # rotary_emb reads dtype, device
        self.cos, self.sin = m.rotary_emb(probe, self.t[None])               # (1, T, D) each

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (1, S) at positions pos (S,) -> logits (1, S, V); writes K, V at pos."""
        m, D = self.model.model, self.head_dim
        x = m.embed_tokens(ids).to(self.dtype)                               # (1, S, C)
        cos, sin = self.cos[:, pos], self.sin[:, pos]                        # (1, S, D)
        mask = self.t[None, :] <= pos[:, None]                               # (S, T)
        for i, blk in enumerate(self.blocks):
            att, h = blk.self_attn, blk.input_layernorm(x)
            q = att.q_proj(h).view(1, -1, self.n_head, D).transpose(1, 2)     # (1, H, S, D)
            k = att.k_proj(h).view(1, -1, self.kv_heads, D).transpose(1, 2)   # (1, Hkv, S, D)
            v = att.v_proj(h).view(1, -1, self.kv_heads, D).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            x = x + att.o_proj(self.attend(i, q, k, v, pos, mask, self.n_head // self.kv_heads))
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        return self.model.lm_head(m.norm(x))


STATIC = {"gpt2": StaticGPT2, "llama": StaticLlama}


def check_architecture(model_type: str | None, what: str = "this model") -> None:
    if model_type not in STATIC:
        raise ev.UserError(f"the fast decode path supports GPT-2 and Llama models only ({what} is "
                           f"'{model_type or '?'}')")


def static_model(model, max_len: int) -> StaticCache:
    kind = getattr(model.config, "model_type", None)
    check_architecture(kind)
    return STATIC[kind](model, max_len)


# -----------------------------------------------------------------------------
# 2. The fused decode step: one token in five kernels a block (Triton on CUDA, which the tests
#    also run under Triton's interpreter; C++ on a CPU). The model's norms, residual adds and
#    activation go into the GEMV beside them and attention reads only the filled part of the
#    cache; layers the fused GEMV cannot read (bitsandbytes, group-wise or asymmetric int8,
#    and on a CPU Part 1's 4-bit) run as the model's modules.

def fused_available(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if the fused step can run on device in dtype, else why not."""
    if kernels.fused_on_cpu(device):
        if dtype != torch.float32:
            return "the fused step on a CPU computes in float32"
        return None if kernels.cpu_kernel() else f"its C++ kernels cannot be built ({kernels.cpu_kernel_status()})"
    if kernels.triton_kernels() is None:
        return "Triton is not installed"
    if device.type != "cuda" and not kernels._interpreting():
        return "the fused step runs on CUDA (or under TRITON_INTERPRET=1)"
    return None


def norm_args(norm: torch.nn.Module) -> tuple | None:
    """A GPT-2 LayerNorm or a Llama RMSNorm as the fused GEMV's norm; None for another kind."""
    if isinstance(norm, torch.nn.LayerNorm):
        return kernels.NORM_LAYER, norm.weight, norm.bias, float(norm.eps)
    if type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon"):
        return kernels.NORM_RMS, norm.weight, None, float(norm.variance_epsilon)
    return None


def rows_of(m) -> int:
    """Output features of a linear layer of any kind the fused step meets."""
    for attr in ("out_features", "nf"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return int(m.shape[0])                                                   # Part 1's Linear4bit


def stack_rows(modules: list, attr: str) -> torch.Tensor:
    """modules' tensors `attr` as one, stacked by rows; with several, each module's tensor
    becomes a view of its rows of the stacked one (the modules compute as before)."""
    if len(modules) == 1:
        return getattr(modules[0], attr).data.contiguous()
    stacked = torch.cat([getattr(m, attr).data for m in modules])
    at = 0
    for m in modules:
        t = getattr(m, attr)
        view = stacked[at:at + t.shape[0]]
        at += t.shape[0]
        if isinstance(t, torch.nn.Parameter):
            t.data = view
        else:
            setattr(m, attr, view)
    return stacked


def fused_weights(modules: list, dtype: torch.dtype, gated: bool = False) -> kernels.FusedWeights | None:
    """The weights of one linear layer, or of several with the same input stacked by rows
    (Llama's q, k, v; gate then up, gated=True), as the fused GEMV reads them: a float layer
    (nn.Linear, or GPT-2's Conv1D, whose (in, out) weight is re-laid out once as (out, in),
    in place), a Part 1 per-channel or per-tensor Int8Linear, or a Part 1 Linear4bit. None
    for any other kind (bitsandbytes, group-wise or asymmetric int8): those run as the
    model's modules. Stacking re-points each module's tensors at its rows of the stacked
    ones, so no copy is kept."""
    import part1_quantize_scratch as p1
    from transformers.pytorch_utils import Conv1D
    if len({type(m) for m in modules}) != 1 or gated and len(modules) != 2:
        return None
    first = modules[0]
    if isinstance(first, p1.Linear4bit) and kernels.fused_on_cpu(first.packed.device):
        return None                                   # the C++ kernels read float32 and int8 rows only
    n = rows_of(first) if gated else sum(map(rows_of, modules))
    bias = None
    if any(getattr(m, "bias", None) is not None for m in modules):
        device = next(m.bias.device for m in modules if m.bias is not None)
        bias = torch.cat([m.bias.data.to(dtype) if m.bias is not None else
                          torch.zeros(rows_of(m), dtype=dtype, device=device) for m in modules])
    if isinstance(first, (torch.nn.Linear, Conv1D)):
        if any(m.weight.dtype != dtype for m in modules):
            return None
        if isinstance(first, Conv1D):
            if len(modules) > 1:
                return None
            if not first.weight.t().is_contiguous():                       # (in, out) -> (out, in), once
                first.weight.data = first.weight.data.t().contiguous().t()
            w = first.weight.data.t()
        else:
            w = stack_rows(modules, "weight")
        return kernels.FusedWeights(kernels.W_DENSE, w, n, w.shape[1], bias=bias)
    if isinstance(first, p1.Int8Linear):
        if any(m.zero_point is not None or m.scale.dim() != 1 for m in modules):
            return None
        for m in modules:
            if m.scale.numel() != m.out_features:                            # per tensor: one scale a row
                m.scale = m.scale.expand(m.out_features).contiguous()
        q, s = stack_rows(modules, "qweight"), stack_rows(modules, "scale")
        return kernels.FusedWeights(kernels.W_INT8, q, n, q.shape[1], scale=s, bias=bias)
    if isinstance(first, p1.Linear4bit):
        k = first.shape[1]
        if (any((m.kind, m.block, m.shape[1]) != (first.kind, first.block, k) for m in modules)
                or first.block not in kernels.GEMV_BLOCKS or k % first.block):
            return None
        packed, absmax = stack_rows(modules, "packed"), stack_rows(modules, "absmax")
        return kernels.FusedWeights(kernels.W_4BIT, packed, n, k, scale=absmax, lut=first.lut(),
                                    block=first.block, linear4=first.kind == "int4", bias=bias)
    return None


GPT2_ACTS = {"gelu_new": kernels.ACT_GELU_NEW, "gelu_pytorch_tanh": kernels.ACT_GELU_TANH}


class FusedStep:
    """One greedy decode step of a static-cache model (StaticGPT2 or StaticLlama) as a list of
    kernel calls on static buffers, capturable as one CUDA graph. A block:
      1. norm + QKV GEMV (+ bias)            (Llama: q, k, v stacked)
      2. attention over positions 0..pos of the cache, k and v written at pos (Llama: rotary)
      3. out-projection GEMV (+ bias) + residual, in place on the residual stream
      4. norm + up GEMV (+ bias) + activation (Llama: gate and up in one GEMV, silu(g) * u)
      5. down GEMV (+ bias) + residual
    then the final norm + output layer + argmax over each program's run of logits, and one
    kernel that picks the token and advances step and pos; the embedding is one kernel too. A layer the
    fused GEMV cannot read runs as the model's own module (with the model's norm before it
    and its activation and residual add after). Reads next and pos; writes tokens[step]."""

    def __init__(self, net: StaticCache, nxt: torch.Tensor, pos: torch.Tensor, step: torch.Tensor,
                 tokens: torch.Tensor):
        why = fused_available(net.device, net.dtype)
        if why:
            raise ev.UserError(f"the fused decode step cannot run here: {why}")
        self.net, self.nxt, self.pos, self.step, self.tokens = net, nxt, pos, step, tokens
        self.dtype, dev = net.dtype, net.device
        self.ops, self.fused_layers, self.module_layers = [], [], []
        self.roles = []                       # what each kernel of a step does, in launch order (--anatomy)
        self.tile_keys = {}                   # kernels.tile_key -> the layers launched with it (tune_tiles)
        self.l2_rows = 0                      # > 0: the weights-from-L2 diagnostic (kernels.L2_ROWS), read per call
        model, c = net.model, net.model.config
        gpt2 = c.model_type == "gpt2"
        d = c.hidden_size
        heads, kv_heads = (c.n_head, c.n_head) if gpt2 else (net.n_head, net.kv_heads)
        head_dim = d // heads if gpt2 else net.head_dim
        inner = (c.n_inner or 4 * d) if gpt2 else c.intermediate_size
        buf = lambda n: torch.zeros(n, dtype=self.dtype, device=dev)       # noqa: E731
        self.x, self.a = buf(d), buf(heads * head_dim)
        self.qkv, self.h = buf((heads + 2 * kv_heads) * head_dim), buf(inner)
        emb = model.transformer.wte if gpt2 else model.model.embed_tokens
        self._embed(emb, model.transformer.wpe if gpt2 else None)
        for i, blk in enumerate(net.blocks):
            if gpt2:
                att, mlp = blk.attn, blk.mlp
                self._linear(f"{i}.attn.c_attn", [att.c_attn], self.x, self.qkv, blk.ln_1)
                self._attend(i, heads, kv_heads, head_dim, head_dim ** -0.5, None)
                self._linear(f"{i}.attn.c_proj", [att.c_proj], self.a, self.x, res=self.x)
                self._linear(f"{i}.mlp.c_fc", [mlp.c_fc], self.x, self.h, blk.ln_2,
                             act=GPT2_ACTS.get(c.activation_function), act_mod=mlp.act)
                self._linear(f"{i}.mlp.c_proj", [mlp.c_proj], self.h, self.x, res=self.x)
            else:
                att, mlp = blk.self_attn, blk.mlp
                self._linear(f"{i}.self_attn.qkv", [att.q_proj, att.k_proj, att.v_proj], self.x, self.qkv,
                             blk.input_layernorm)
                self._attend(i, heads, kv_heads, head_dim, att.scaling, (net.cos[0], net.sin[0]))
                self._linear(f"{i}.self_attn.o_proj", [att.o_proj], self.a, self.x, res=self.x)
                self._linear(f"{i}.mlp.gate_up", [mlp.gate_proj, mlp.up_proj], self.x, self.h,
                             blk.post_attention_layernorm,
                             act=kernels.ACT_SILU_GATE if c.hidden_act == "silu" else None, act_mod=mlp.act_fn)
                self._linear(f"{i}.mlp.down_proj", [mlp.down_proj], self.h, self.x, res=self.x)
        self._head(model.lm_head, model.transformer.ln_f if gpt2 else model.model.norm)

    def __call__(self) -> None:
        for op in self.ops:
            op()

    # the pieces
    def _embed(self, te, pe) -> None:
        import part1_quantize_scratch as p1

        def table(e):
            if e is None:
                return None
            return (e.qweight, e.scale) if isinstance(e, p1.Int8Embedding) else (e.weight, None)
        self.ops.append(lambda: kernels.fused_embed(self.nxt, self.pos, table(te), table(pe), self.x))
        self.roles.append("embed")

    def _attend(self, i: int, heads: int, kv_heads: int, head_dim: int, scale: float, rotary) -> None:
        k, v = self.net.k[i][0], self.net.v[i][0]                             # (Hkv, T, D) each
        self.ops.append(lambda: kernels.decode_attention(self.qkv, k, v, self.pos, self.a, heads, kv_heads,
                                                         head_dim, float(scale), rotary))
        self.roles.append(f"{i}.attention")

    def _linear(self, name: str, mods: list, inp: torch.Tensor, out: torch.Tensor, norm=None, act: int | None = 0,
                act_mod=None, res: torch.Tensor | None = None) -> None:
        """out = act(norm(inp) W^T + b) (+ res): one fused kernel, or the model's modules."""
        gated = len(mods) == 2
        fw = fused_weights(mods, self.dtype, gated)
        nargs = None if norm is None else norm_args(norm)
        if fw is not None and (norm is None or nargs is not None) and (act is not None or not gated):
            self.fused_layers.append(name)
            self.tile_keys.setdefault(kernels.gemv_key(fw, (nargs or (0,))[0], act or 0, res), []).append(name)
            self.ops.append(lambda: kernels.fused_linear(inp, fw, out, nargs, act or 0, res, self.l2_rows))
            self.roles.append(name)
            if act is None and act_mod is not None:                          # an activation it lacks
                self.ops.append(lambda: out.copy_(act_mod(out)))
            return
        self.module_layers.append(name)

        def run():
            h = inp.view(1, 1, -1) if norm is None else norm(inp.view(1, 1, -1))
            if gated:
                y = act_mod(mods[0](h)) * mods[1](h)
            else:
                y = torch.cat([m(h) for m in mods], -1)
                if act_mod is not None:
                    y = act_mod(y)
            if res is None:
                out.copy_(y.view(-1))
            else:
                torch.add(res, y.view(-1), out=out)
        self.ops.append(run)

    def _head(self, lm_head, norm) -> None:
        fw, nargs = fused_weights([lm_head], self.dtype), norm_args(norm)
        if fw is not None and nargs is not None:
            self.fused_layers.append("lm_head")
            parts = kernels.head_programs(self.x.device, fw.n)
            pv = torch.full((parts,), float("-inf"), dtype=torch.float32, device=self.x.device)
            pi = torch.zeros(parts, dtype=torch.int32, device=self.x.device)
            self.tile_keys.setdefault(kernels.head_key(fw, parts), []).append("lm_head")
            self.ops.append(lambda: kernels.fused_argmax_head(self.x, fw, nargs, pv, pi, self.tokens, self.step,
                                                              self.nxt, self.pos, self.l2_rows))
            self.roles += ["lm_head", "pick token"]
            return
        self.module_layers.append("lm_head")

        def run():
            nxt = lm_head(norm(self.x.view(1, 1, -1)))[0, -1].argmax(-1, keepdim=True)   # (1,)
            self.tokens.index_copy_(0, self.step, nxt)
            self.step.add_(1)
            self.nxt.copy_(nxt[:, None])
            self.pos.add_(1)
        self.ops.append(run)

    def kernels_per_step(self) -> int | None:
        """Kernel launches of a step whose layers are all fused; None where modules run (they
        launch what they launch)."""
        return None if self.module_layers else len(self.ops) + 1         # the head is two kernels


# -----------------------------------------------------------------------------
# 3. Steps as programs: static buffers, run eagerly or replayed from a CUDA graph

class FastDecoder:
    """Greedy decode and prefill over a static-cache model, each step captured as a CUDA graph
    (graphs=True, CUDA only) or run eagerly on the same buffers (graphs=False). fused=True:
    the decode step is FusedStep's kernels (the prompt pass and the prefill stay as they are);
    compiled=MODE: the decode step under torch.compile(mode=MODE), as gpt-fast does."""

    def __init__(self, model, prompt_tokens: int, new_tokens: int, prefill_tokens: int = 0, graphs: bool = True,
                 no_graph_reason: str | None = None, fused: bool = False, compiled: str | None = None):
        self.net = static_model(model, max(prompt_tokens + new_tokens, prefill_tokens))
        dev = self.net.device
        self.graphs = graphs and dev.type == "cuda"
        self.P, self.n, self.S = prompt_tokens, new_tokens, prefill_tokens
        self.prompt = torch.zeros(1, prompt_tokens, dtype=torch.long, device=dev)
        self.prefill_ids = torch.zeros(1, max(prefill_tokens, 1), dtype=torch.long, device=dev)
        self.next = torch.zeros(1, 1, dtype=torch.long, device=dev)      # the token fed to the next step
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)          # its position
        self.step = torch.zeros(1, dtype=torch.long, device=dev)         # how many tokens made
        self.tokens = torch.zeros(new_tokens, dtype=torch.long, device=dev)
        self.logits = None
        self.programs = {"prompt": self._prompt_step, "decode": self._decode_step, "prefill": self._prefill_step}
        self.fused = None
        if fused:                          # the decode step as FusedStep's kernels; prompt and prefill as above
            self.fused = FusedStep(self.net, self.next, self.pos, self.step, self.tokens)
            self.programs["decode"] = self.fused
        elif compiled:                     # a peer's recipe: the decode step under torch.compile (this mode)
            self.programs["decode"] = torch.compile(self._decode_step, mode=compiled)
        self.why_no_graph = None if self.graphs else (no_graph_reason or "graphs off (CPU or asked)")
        self._pool = None                  # the memory pool its graphs share

    # the three steps; only tensor ops on static buffers, nothing read back to the host
    def _emit(self, logits: torch.Tensor) -> None:
        nxt = logits[:, -1].argmax(-1)                                    # (1,)
        self.tokens.index_copy_(0, self.step, nxt)
        self.step.add_(1)
        self.next.copy_(nxt[:, None])

    def _prompt_step(self) -> None:
        self._emit(self.net.forward(self.prompt, self.net.t[:self.P]))
        self.pos.fill_(self.P)

    def _decode_step(self) -> None:
        self._emit(self.net.forward(self.next, self.pos))
        self.pos.add_(1)

    def _prefill_step(self) -> None:
        self.logits = self.net.forward(self.prefill_ids, self.net.t[:self.S])

    def capture(self) -> None:
        """Warm every step (Triton autotuning, cuBLAS handles), then capture it. If a step
        cannot be captured, every step runs eagerly and why_no_graph says why."""
        if not self.graphs:
            return
        names = ["prompt", "decode"] + (["prefill"] if self.S else [])
        on_side_stream([call for name in names for call in (self.reset, self.programs[name]) * 2])
        graphs = {}
        try:
            for name in names:
                graphs[name] = self._graph(self.programs[name])
        except Exception as e:  # a layer that syncs or changes shape: no graph for this method
            torch.cuda.synchronize()
            self.graphs = False
            self.why_no_graph = f"capture failed: {first_line(e)}"
            return
        for name, g in graphs.items():
            self.programs[name] = g.replay
        self.reset()

    def _graph(self, step) -> torch.cuda.CUDAGraph:
        """step captured as a CUDA graph, from a reset state, in this decoder's memory pool."""
        self.reset()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._pool):
            step()
        self._pool = g.pool()
        return g

    def weights_from_l2(self) -> Callable[[], None]:
        """The fused decode step as a diagnostic: every weight read from its first
        kernels.L2_ROWS rows, so it stays in L2; captured (graphs) or eager. Its time is the
        step's time without its HBM weight bytes; its tokens mean nothing. Pass it to
        generate(decode=)."""
        def l2_step():
            self.fused.l2_rows = kernels.L2_ROWS
            try:
                self.fused()
            finally:
                self.fused.l2_rows = 0
        if not self.graphs:
            return l2_step
        on_side_stream([self.reset, l2_step] * 2)
        return self._graph(l2_step).replay

    def reset(self) -> None:
        self.step.zero_()
        self.pos.zero_()
        self.next.zero_()

    def start(self) -> None:
        """Reset, then the prompt pass (eager): the state a timed run of decode steps starts from."""
        self.reset()
        self._prompt_step()

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, decode: Callable[[], None] | None = None) -> torch.Tensor:
        """Greedy: the prompt pass makes token 1, each decode step one more (decode: another
        step than this decoder's, e.g. weights_from_l2's). -> (new_tokens,)"""
        decode = decode or self.programs["decode"]
        self.prompt.copy_(prompt.reshape(1, -1))
        self.step.zero_()
        self.programs["prompt"]()
        for _ in range(self.n - 1):
            decode()
        return self.tokens

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor):
        self.prefill_ids.copy_(ids.reshape(1, -1))
        self.programs["prefill"]()
        return self.logits


TUNE_ROUNDS = 5      # round-robin timings of each candidate tile's decode step (tune_tiles)


def time_steps(entries: dict, steps: int, repeats: int, warmup: int = 0) -> dict:
    """Round-robin on a GPU: each repeat runs every entry's start() (untimed; None: nothing),
    then times `steps` calls of its step() with CUDA events. entries: {name: (start, step)}
    -> {name: summary of ms per step}; the first `warmup` repeats are not kept."""
    samples = {name: [] for name in entries}
    for r in range(warmup + repeats):
        for name, (start, step) in entries.items():
            if start is not None:
                start()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(steps):
                step()
            b.record()
            b.synchronize()
            if r >= warmup:
                samples[name].append(a.elapsed_time(b) / steps)
    return {name: ev.summarize(v) for name, v in samples.items()}


@torch.no_grad()
def tune_tiles(dec: FastDecoder, prompt: torch.Tensor, rounds: int = TUNE_ROUNDS) -> dict:
    """Pin a tile (kernels.PINNED) for each weight-reading kernel of dec's fused step, chosen
    by timing the whole decode step as the bench runs it (one CUDA graph, PDL between the
    kernels), not the kernel alone as Triton's autotuner does. One tile key at a time, in the
    step's order, the others at their current tile: the step is captured once per candidate
    tile (kernels.TILE_CHOICES), then the candidates run round-robin `rounds` times (the prompt
    pass, then new_tokens - 1 decode steps, timed with CUDA events); the lowest median wins.
    Call before dec.capture(). -> {layer (block 0's, or lm_head): {"layers", "tile" [BN, BK,
    warps], "step_ms": {"BNxBK/warps": median ms per decode step}}}"""
    step, n = dec.fused, dec.n - 1
    dec.prompt.copy_(prompt.reshape(1, -1))
    chosen = {}
    for key, layers in step.tile_keys.items():
        graphs = {}
        for tile in kernels.TILE_CHOICES[key[0]]:
            kernels.PINNED[key] = tile
            try:
                on_side_stream([dec.reset, step])                  # compiles the tile (before capture)
            except Exception:                                     # a tile this GPU cannot run (resources)
                torch.cuda.synchronize()
                continue
            graphs[tile] = dec._graph(step)
        times = time_steps({tile: (dec.start, g.replay) for tile, g in graphs.items()}, n, rounds)
        median = {tile: t["median"] for tile, t in times.items()}
        best = min(median, key=median.get)
        kernels.PINNED[key] = best
        chosen[layers[0].split(".", 1)[-1]] = {
            "layers": len(layers), "tile": list(best),
            "step_ms": {f"{bn}x{bk}/{w}": round(ms, 5) for (bn, bk, w), ms in median.items()}}
        del graphs
    dec.reset()
    return chosen


def leading_equal(got: torch.Tensor, ref: torch.Tensor) -> int:
    """How many leading greedy tokens of got equal ref's."""
    return int((got == ref).long().cumprod(0).sum())


def generate_tokens(model, tokenizer, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The same model's own greedy generate(): the reference for the fast path's tokens."""
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                         generation_config=ev.greedy_config(tokenizer, new_tokens))
    return out[0, prompt.shape[1]:]


# -----------------------------------------------------------------------------
# 4. The benchmark: every method, generate() and the fast path, round-robin

def decode_floor_ms(weight_bytes: int, bytes_per_s: float | None) -> float | None:
    return None if bytes_per_s is None else weight_bytes / bytes_per_s * 1e3


LAYER_CALLS = 50      # back-to-back calls of one layer per timed graph replay


def block_layers(config) -> tuple[str, tuple[tuple[str, int], ...]]:
    """Block 0's path and its linear layers as (name, input width), for the architecture."""
    d = config.hidden_size
    if config.model_type == "gpt2":
        return "transformer.h.0", (("attn.c_attn", d), ("attn.c_proj", d), ("mlp.c_fc", d),
                                   ("mlp.c_proj", config.n_inner or 4 * d))
    heads = config.num_attention_heads * (getattr(config, "head_dim", None) or d // config.num_attention_heads)
    return "model.layers.0", (("self_attn.q_proj", d), ("self_attn.k_proj", d), ("self_attn.v_proj", d),
                              ("self_attn.o_proj", heads), ("mlp.gate_proj", d), ("mlp.up_proj", d),
                              ("mlp.down_proj", config.intermediate_size))


def timed_layers(model):
    """(name, module, input width) of block 0's linear layers, then of lm_head."""
    prefix, layers = block_layers(model.config)
    for name, width in layers:
        yield name, model.get_submodule(f"{prefix}.{name}"), width
    yield "lm_head", model.lm_head, model.config.hidden_size


def compute_dtype(model) -> torch.dtype:
    """The dtype activations run in: the final norm's (kept unquantized by every method)."""
    return (model.transformer.ln_f if model.config.model_type == "gpt2" else model.model.norm).weight.dtype


def on_side_stream(calls) -> None:
    """Run each call on a side stream, then wait for it: the uncaptured warm-up (Triton
    autotuning, cuBLAS handles) that CUDA graph capture needs first."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


@torch.no_grad()
def layer_times(model, graphs: bool, repeats: int = 20, calls: int = LAYER_CALLS) -> dict:
    """Microseconds per call of each linear layer at decode shape (one token): `calls`
    calls captured as one CUDA graph, so no launch overhead (what a decode step's graph
    sees), timed with CUDA events over `repeats` replays; eager calls if graphs=False.
    -> {layer: summary of us per call}, plus 'graph'."""
    dtype = compute_dtype(model)
    out = {"graph": graphs}
    for name, mod, k in timed_layers(model):
        x = torch.randn(1, 1, k, dtype=dtype, device="cuda")

        def run(mod=mod, x=x):
            for _ in range(calls):
                mod(x)
        on_side_stream([run, run])
        call = run
        if graphs:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run()
            call = g.replay
        call()
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3 / calls)
        out[name] = ev.summarize(samples)
    return out


@torch.no_grad()
def kernel_error(model, rows: int = 1) -> float | None:
    """Worst relative error, over block 0's Part 1 layers and lm_head, of the layer's output
    at decode shape against dequantize-then-matmul in fp32: the check that the fused
    kernels compute what Part 1's weights mean (the token check only compares a model
    with itself). None if the model has no Part 1 layers."""
    import part1_quantize_scratch as p1
    dtype, worst = compute_dtype(model), None
    for _, mod, k in timed_layers(model):
        if not isinstance(mod, (p1.Int8Linear, p1.Linear4bit)):
            continue
        x = torch.randn(rows, k, dtype=dtype, device=model.device)
        bias = None if mod.bias is None else mod.bias.float()
        ref = F.linear(x.float(), mod.dequantized_weight(torch.float32), bias)
        err = ((mod(x).float() - ref).abs().max() / ref.abs().max()).item()
        worst = err if worst is None else max(worst, err)
    return worst


def load_method(name: str, model_id: str, device: str):
    """One method's model, ready to run; returns (model, path for Part 1 layers or None)."""
    import part1_quantize_scratch as p1
    if name in ("fp32", "fp16"):
        return ev.load_model(model_id, {"fp32": "float32", "fp16": "float16"}[name], device)[0]
    if name.startswith("bnb-"):
        import part2_bnb_nf4 as p2
        return p2.load_bnb(model_id, name[4:], device, "float16")[0]
    m = ev.load_model(model_id, "float16", device)[0]
    if name.startswith("scratch-int8"):
        p1.quantize_model(m, "whole", 8, "per_channel")
    else:
        p1.quantize_model(m, "whole", 4, name.split("-")[1])            # int4 or nf4
    p1.set_path(m, "fast" if name.endswith("-fast") else "naive")
    return m


def parse_methods(spec: str, choices: tuple = METHODS, baseline: str = "fp16") -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in choices:
            raise ev.UserError(f"unknown method '{n}' (choose from {', '.join(choices)})")
    if baseline not in names:
        raise ev.UserError(f"--methods must include {baseline}, the baseline of every ratio")
    return names


def conv1d_to_linear(model) -> None:
    """GPT-2's Conv1D layers as nn.Linear (weight transposed, same numbers), in place: what
    torchao's quantize_() finds and quantizes."""
    from transformers.pytorch_utils import Conv1D
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D):
            lin = torch.nn.Linear(mod.weight.shape[0], mod.nf, device=mod.weight.device, dtype=mod.weight.dtype)
            lin.weight.data = mod.weight.data.t().contiguous()
            lin.bias.data = mod.bias.data
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, lin)


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def peer(name: str, model_id: str, tokenizer, prompt: torch.Tensor, prefill_ids: torch.Tensor, prompt_tokens: int,
         new_tokens: int, prefill_tokens: int, fp16_tokens: torch.Tensor) -> tuple[dict | None, dict]:
    """One peer: (its timed calls, its row), or (None, a row that says why it cannot run)."""
    row = {"recipe": PEERS[name], "why_not": None}
    try:
        m = ev.load_model(model_id, "float16", "cuda")[0]
        if name == "torchao-int8wo":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
            conv1d_to_linear(m)
            quantize_(m, Int8WeightOnlyConfig())
            ref = generate_tokens(m, tokenizer, prompt, new_tokens)          # its own eager generate()
            fast = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, compiled=COMPILE_MODE)
            fast.capture()
            if not fast.graphs:
                raise RuntimeError(fast.why_no_graph)
            got = fast.generate(prompt).clone()
            calls = {"prefill": lambda: fast.prefill(prefill_ids), "decode": lambda: fast.generate(prompt)}
            row["torchao_version"] = __import__("torchao").__version__
        else:
            gen = ev.greedy_config(tokenizer, new_tokens)
            gen.cache_implementation = "static"
            mask = torch.ones_like(prompt)
            ref = fp16_tokens                                               # the fp16 model's eager generate()
            got = m.generate(prompt, attention_mask=mask, generation_config=gen)[0, prompt.shape[1]:]
            calls = {"prefill": lambda: m(prefill_ids, use_cache=False),
                     "decode": lambda: m.generate(prompt, attention_mask=mask, generation_config=gen)}
        torch.cuda.synchronize()
        row["weights_bytes"] = ev.tensor_bytes(m)["bytes"]
        row["leading_tokens_equal"] = leading_equal(got, ref)
        return calls, row
    except Exception as e:  # a peer that cannot run here is a row that says why, not a crash
        row["why_not"] = first_line(e)
        import traceback
        traceback.print_exc(limit=-6)
        print(f"  {name}: cannot run ({row['why_not']})", file=sys.stderr, flush=True)
        return None, row


@torch.no_grad()
def bench(model_id: str, tokenizer, ids: torch.Tensor, methods: list[str], prefill_tokens: int,
          prompt_tokens: int, new_tokens: int, repeats: int, warmup: int, progress: bool = True,
          tune: bool = True) -> dict:
    dev = torch.device("cuda")
    prefill_ids, prompt = ev.timing_inputs(ids, prefill_tokens, prompt_tokens, dev)
    bandwidth = hbm_bytes_per_s(torch.cuda.get_device_name())
    timed, rows, refs = {}, {}, {}
    for name in [m for m in methods if m not in PEERS]:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        m = load_method(name, model_id, "cuda")
        ev.check_timing_lengths(m, prefill_tokens, prompt_tokens, new_tokens, repeats)
        m(prompt)                                          # LLM.int8() sets its row scales lazily
        weights = ev.tensor_bytes(m)
        uncapturable = NOT_CAPTURABLE.get(name)
        fused, why_not_fused = None, uncapturable          # built first: it re-lays out weights in place
        if uncapturable is None:
            fused = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, fused=True)
        ref = refs[name] = generate_tokens(m, tokenizer, prompt, new_tokens)
        fast = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, graphs=uncapturable is None,
                           no_graph_reason=uncapturable)
        fast.capture()
        got = fast.generate(prompt).clone()
        same_fused, tiles, l2_step = None, None, None
        if fused is not None:
            if tune and fused.graphs:
                tiles = tune_tiles(fused, prompt)
            fused.capture()
            if not fused.graphs:
                why_not_fused, fused = fused.why_no_graph, None
            else:
                same_fused = leading_equal(fused.generate(prompt), ref)
                if fused.fused.kernels_per_step() is not None:          # every layer fused: the diagnostic too
                    l2_step = fused.weights_from_l2()
        torch.cuda.synchronize()
        same = leading_equal(got, ref)
        rows[name] = {"weights_mib": weights["mib"], "weights_bytes": weights["bytes"],
                      "weight_dtype_bytes": weights["by_dtype_bytes"],
                      "floor_ms": decode_floor_ms(weights["bytes"], bandwidth),
                      "cuda_graph": fast.graphs, "why_no_graph": fast.why_no_graph,
                      "tokens_equal_generate": same == new_tokens, "leading_tokens_equal": same,
                      "fused_leading_tokens_equal": same_fused, "why_not_fused": why_not_fused,
                      "fused_layers": None if fused is None else len(fused.fused.fused_layers),
                      "module_layers": None if fused is None else fused.fused.module_layers,
                      "fused_kernels_per_step": None if fused is None else fused.fused.kernels_per_step(),
                      "fused_tiles": tiles,
                      "peak_bytes": torch.cuda.max_memory_allocated() - before}
        layers = layer_times(m, graphs=uncapturable is None, repeats=repeats * 2)
        rows[name]["kernel_max_rel_err"] = kernel_error(m)
        rows[name]["layers_us"] = layers
        block = [k for k, _ in block_layers(m.config)[1]]
        rows[name]["linear_us_per_token"] = (m.config.num_hidden_layers * sum(layers[k]["median"] for k in block)
                                             + layers["lm_head"]["median"])
        timed[name] = ev.hf_calls(m, tokenizer, prefill_ids, prompt, new_tokens)
        timed[f"{name}·fast"] = {"prefill": lambda f=fast: f.prefill(prefill_ids),
                                 "decode": lambda f=fast: f.generate(prompt)}
        if fused is not None:
            timed[f"{name}·fused"] = {"prefill": lambda f=fused: f.prefill(prefill_ids),
                                      "decode": lambda f=fused: f.generate(prompt)}
        if l2_step is not None:
            timed[f"{name}·fused-l2"] = {"prefill": lambda f=fused: f.prefill(prefill_ids),
                                         "decode": lambda f=fused, s=l2_step: f.generate(prompt, decode=s)}
        print(f"  {name}: {weights['mib']:.1f} MiB, graph {'yes' if fast.graphs else 'no'}, "
              f"fast tokens = generate tokens: {same}/{new_tokens}, fused: "
              + (f"{same_fused}/{new_tokens}" if fused is not None else f"no ({why_not_fused})"),
              file=sys.stderr, flush=True)
    peers = {}
    for name in [m for m in methods if m in PEERS]:
        calls, peers[name] = peer(name, model_id, tokenizer, prompt, prefill_ids, prompt_tokens, new_tokens,
                                  prefill_tokens, refs["fp16"])
        if calls is not None:
            timed[f"{name}·peer"] = calls
            print(f"  {name}: tokens = its reference: {peers[name]['leading_tokens_equal']}/{new_tokens}",
                  file=sys.stderr, flush=True)
    result = ev.side_by_side(timed, dev, new_tokens, repeats, warmup, "fp16", progress)
    rt = result["table"]
    fb = rt["fp16·fast"]
    fused_base = rt["fp16·fused"]["decode_ms_per_token"]["median"] if "fp16·fused" in rt else None

    def path_row(entry: dict, floor: float | None) -> dict:
        d = entry["decode_ms_per_token"]["median"]
        return {"prefill_ms": entry["prefill_ms"], "decode_ms_per_token": entry["decode_ms_per_token"],
                "vs_fp16_fused": None if fused_base is None else d / fused_base,
                "x_floor": None if floor is None else d / floor}

    table = {}
    for name in rows:
        hf, fa = rt[name], rt[f"{name}·fast"]
        floor = rows[name]["floor_ms"]
        table[name] = {**{k: hf[k] for k in ("prefill_ms", "decode_ms_per_token", "prefill_ratio", "decode_ratio")},
                       **rows[name],
                       "fast_path": {**path_row(fa, floor),
                                     "prefill_ratio": fa["prefill_ms"]["median"] / fb["prefill_ms"]["median"],
                                     "decode_ratio": fa["decode_ms_per_token"]["median"] /
                                     fb["decode_ms_per_token"]["median"],
                                     "speedup_over_generate": hf["decode_ms_per_token"]["median"] /
                                     fa["decode_ms_per_token"]["median"]},
                       "fused_path": path_row(rt[f"{name}·fused"], floor) if f"{name}·fused" in rt else None,
                       **({"fused_l2_path": {**path_row(rt[f"{name}·fused-l2"], None), "weight_bytes_share":
                                             1 - rt[f"{name}·fused-l2"]["decode_ms_per_token"]["median"] /
                                             rt[f"{name}·fused"]["decode_ms_per_token"]["median"]}}
                          if f"{name}·fused-l2" in rt else {}),
                       "layer_ratio": {k: rows[name]["layers_us"][k]["median"] / rows["fp16"]["layers_us"][k]["median"]
                                       for k in rows[name]["layers_us"] if k != "graph"}}
    for name, row in peers.items():
        if row["why_not"] is None:
            row.update(path_row(rt[f"{name}·peer"], decode_floor_ms(row["weights_bytes"], bandwidth)))
    return {"table": table, "peers": peers, "baseline": "fp16", "repeats": repeats, "warmup": warmup,
            "order": result["order"], "prefill_tokens": prefill_tokens, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "decode_definition": ev.DECODE_DEFINITION,
            "fast_path": FAST_PATH, "fused_path": FUSED_PATH, "fused_pdl": kernels.pdl_on(dev),
            "fused_head_programs_per_sm": kernels.HEAD_PROGRAMS_PER_SM,
            "fused_l2_definition": (
                f"fused_l2_path: the fused step with every weight read from its first {kernels.L2_ROWS} rows, which "
                "stay in L2 (a diagnostic: its tokens mean nothing): the step's time without its HBM weight bytes; "
                "weight_bytes_share = 1 - its decode time / the fused step's, the part of the step the weights' "
                "bytes take, so the most a smaller weight format could save"),
            "fused_tiles_definition": (
                "each weight-reading kernel's tile (BN rows x BK columns / warps), chosen by tune_tiles: the whole "
                f"decode step timed per candidate tile, {TUNE_ROUNDS} round-robin rounds, median ms per step"
                if tune else "Triton's autotuner: each kernel timed alone (--no-tune-tiles)"),
            "fast_decode_definition":
                "fast path wall time for the prompt pass + new_tokens-1 decode steps / new tokens",
            "hbm_bytes_per_s": bandwidth, "layer_calls_per_replay": LAYER_CALLS,
            "layers_definition": "us per call of block 0's linear layers and lm_head at one token, "
                                 f"{LAYER_CALLS} calls per CUDA graph replay (eager where the method has no graph), "
                                 "median of 2 x repeats replays; linear_us_per_token = the number of blocks x the "
                                 "block's layers + lm_head",
            "note": "ratios: generate() against fp16 generate(); fast path against the fp16 fast path; "
                    "vs_fp16_fused: decode against fp16 on the fused path; peers' tokens against their own "
                    "eager generate() (torchao) or fp16's (transformers' static cache); "
                    "peak = CUDA memory allocated above what was held before loading the method "
                    "(its weights, KV cache, graphs, activations)"}


# -----------------------------------------------------------------------------
# 4b. The CPU bench: Part 1 on its static-cache path beside llama.cpp, same model, same threads

CPU_METHODS = ("fp32", "scratch-int8-fast", "bnb-int8", "bnb-nf4", "gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_0")
CPU_PATH = ("static KV cache, eager (no CUDA graphs on a CPU), one forward per token, argmax in place: "
            "generate()'s per-token work is gone; Part 1's int8 layers read int8 in a threaded C++ kernel")
CPU_FUSED_PATH = ("the static path with the decode step as FusedStep's C++ kernels, the same five calls a block "
                  "as on CUDA (norm+QKV GEMV, attention over the filled cache, out-projection GEMV+residual, "
                  "norm+up GEMV+activation, down GEMV+residual; final norm+output layer+argmax), float32 and "
                  "Part 1's int8 rows read in place, other layers as the model's modules; the prompt pass "
                  "stays on the static path")


def cpu_method(name: str, model_id: str):
    """A Hugging Face method on the CPU, fp32 activations."""
    import part1_quantize_scratch as p1
    if name.startswith("bnb-"):
        import part2_bnb_nf4 as p2
        return p2.load_bnb(model_id, name[4:], "cpu", "float32")[0]
    m = ev.load_model(model_id, "float32", "cpu")[0]
    if name == "scratch-int8-fast":
        p1.quantize_model(m, "whole", 8, "per_channel")
        p1.set_path(m, "fast")
    return m


@torch.no_grad()
def cpu_bench(model_id: str, tokenizer, ids: torch.Tensor, methods: list[str], prefill_tokens: int,
              prompt_tokens: int, new_tokens: int, repeats: int, warmup: int, gguf_dir: str,
              progress: bool = True) -> dict:
    """Every method round-robin on this CPU: Hugging Face methods on the static-cache path
    (fp32 also through generate(), for scale), llama.cpp's GGUF files of the same model
    (made here by bonus_gguf.py's converter and quantizer), the same prompt, new tokens and
    threads. Decode ratios against fp32 on the static path."""
    import bonus_gguf as bg
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    prefill_ids, prompt = ev.timing_inputs(ids, prefill_tokens, prompt_tokens, cpu)
    timed, rows = {}, {}
    for name in methods:
        if name.startswith("gguf-"):
            t = name[5:].upper()
            folder = bg.local_model_dir(model_id)
            path = bg.make_gguf_files(folder, Path(gguf_dir), [t], bg.gguf_stem(model_id, folder), True)[t]
            with bg.native_output_hidden(not progress):
                lm = bg.LlamaCppLM(path, max(prefill_tokens, prompt_tokens + new_tokens), threads)
            p = prompt[0].tolist()
            timed[name] = {"prefill": lambda lm=lm: lm(prefill_ids),
                           "decode": lambda lm=lm, p=p: lm.decode_timing(p, new_tokens)}
            info = bg.inspect_gguf(path)
            rows[name] = {"path": f"llama.cpp (llama-cpp-python {results.package_version('llama-cpp-python')}), "
                                  "greedy: the prompt in one eval, then one token per eval",
                          "weights_bytes": info["tensor_bytes"], "weights_mib": info["tensor_bytes"] / ev.MiB,
                          "file": path.name, "bytes_by_ggml_type": info["bytes_by_type"]}
            print(f"  {name}: {info['tensor_bytes'] / ev.MiB:.1f} MiB ({path.name})", file=sys.stderr, flush=True)
            continue
        m = cpu_method(name, model_id)
        ev.check_timing_lengths(m, prefill_tokens, prompt_tokens, new_tokens, repeats)
        weights = ev.tensor_bytes(m)
        ref = generate_tokens(m, tokenizer, prompt, new_tokens)
        fast = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, graphs=False)
        same = leading_equal(fast.generate(prompt), ref)
        timed[name] = {"prefill": lambda f=fast: f.prefill(prefill_ids), "decode": lambda f=fast: f.generate(prompt)}
        rows[name] = {"path": CPU_PATH, "weights_bytes": weights["bytes"], "weights_mib": weights["mib"],
                      "leading_tokens_equal": same}
        # the fused step on its own copy of the model: it re-lays out GPT-2's Conv1D weights in place
        fused = FastDecoder(cpu_method(name, model_id), prompt_tokens, new_tokens, prefill_tokens, graphs=False,
                            fused=True)
        same_fused = leading_equal(fused.generate(prompt), ref)
        timed[f"{name}·fused"] = {"prefill": lambda f=fused: f.prefill(prefill_ids),
                                  "decode": lambda f=fused: f.generate(prompt)}
        rows[f"{name}·fused"] = {"path": CPU_FUSED_PATH, "weights_bytes": weights["bytes"],
                                 "weights_mib": weights["mib"], "leading_tokens_equal": same_fused,
                                 "fused_layers": len(fused.fused.fused_layers),
                                 "module_layers": fused.fused.module_layers}
        if name == "fp32":
            timed["fp32·generate"] = ev.hf_calls(m, tokenizer, prefill_ids, prompt, new_tokens)
            rows["fp32·generate"] = {"path": ev.DECODE_DEFINITION, "weights_bytes": weights["bytes"],
                                     "weights_mib": weights["mib"]}
        print(f"  {name}: {weights['mib']:.1f} MiB, tokens = generate tokens: static path {same}/{new_tokens}, "
              f"fused step {same_fused}/{new_tokens}", file=sys.stderr, flush=True)
    result = ev.side_by_side(timed, cpu, new_tokens, repeats, warmup, "fp32", progress)
    for name, row in rows.items():
        result["table"][name].update(row)
    dec = {k: v["decode_ms_per_token"]["median"] for k, v in result["table"].items()}
    if "scratch-int8-fast·fused" in dec:            # Part 1 INT8 on its fastest path, the fused step
        result["int8_targets"] = {k: dec["scratch-int8-fast·fused"] / dec[ref_] for k, ref_ in
                                  (("vs_llama_cpp_q8_0", "gguf-q8_0"), ("vs_fp32", "fp32·fused"),
                                   ("vs_fp32_static", "fp32")) if ref_ in dec}
    return {**result, "threads": threads, "prefill_tokens": prefill_tokens, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "static_path": CPU_PATH,
            "decode_definition": "wall time of the prompt pass + new_tokens-1 decode steps / new tokens, every row",
            "note": "ratios against fp32 on the static path; llama.cpp's files converted and quantized from the "
                    "same model folder; leading_tokens_equal: the static path's or the fused step's greedy tokens "
                    "against the same model's generate()", "cpu_fused_path": CPU_FUSED_PATH}


def cpu_targets_text(bench: dict) -> str:
    """Part 1 INT8's decode time against llama.cpp Q8_0's and fp32's, same run, from a CPU
    bench's int8_targets (the table is printed by evaluate.save_side_by_side; RESULTS.md uses
    this line too). Records made before the CPU's fused step have no vs_fp32_static: there
    INT8 and fp32 were both on the static path."""
    t = bench.get("int8_targets") or {}
    fused = "vs_fp32_static" in t
    names = {"vs_llama_cpp_q8_0": "llama.cpp Q8_0's", "vs_fp32": "fp32's (fused step)" if fused else "fp32's",
             "vs_fp32_static": "fp32's (static path)"}
    return (f"Part 1 INT8 on the {'fused step' if fused else 'static path'} decodes a token in "
            + ", ".join(f"{v:.2f}x {names[k]}" for k, v in t.items())
            + f" time, {bench['threads']} threads") if t else ""


# -----------------------------------------------------------------------------
# 4c. The fused step's anatomy (--anatomy): where a step's time goes, and the least that a
#     step of as many links can take on this GPU, whatever its weights

ANATOMY_METHODS = ("fp16", "scratch-int8-fast", "scratch-int4-fast", "scratch-nf4-fast")   # served whole
PROFILE_REPLAYS = 50         # decode steps seen by the profiler, per method
CHAINS = {  # name: (each program reads the vector the link before wrote, with PDL, as one persistent kernel)
    "empty": (False, True, False),
    "vector": (True, True, False),
    "vector-no-pdl": (True, False, False),
    "grid-barrier": (True, False, True),
}
CHAIN_DEFINITIONS = {
    "empty": "links that only wait for the link before (PDL as in the fused step): the launch chain alone",
    "vector": "links that wait, then each program reads the whole vector (the hidden size) that the link before "
              "wrote and writes its share of the next, as a GEMV's programs read their input: the least measured "
              "for this many separate kernels that each read the whole vector, whatever their weights",
    "vector-no-pdl": "the vector links launched without PDL: what PDL saves the chain",
    "grid-barrier": "the vector links as one persistent kernel, one program per SM, a simple software grid "
                    "barrier between links in place of a kernel boundary (one counter: each program adds on "
                    "arrival, then polls with acquire loads): what a decode step written as one kernel with this "
                    "barrier would pay for as many dependencies",
}
BOUND_CHAINS = ("vector", "grid-barrier")    # chains that do a link's least work: the faster is taken as the bound


def bound_chain(chains: dict) -> str:
    """Of the chains that do each link's least work (BOUND_CHAINS: separate kernels, or one
    persistent kernel with grid barriers), the one measured fastest: the least measured for
    that many links, taken as the bound of any step of as many. Records from before the
    grid-barrier chain have only 'vector'."""
    return min((c for c in BOUND_CHAINS if c in chains), key=lambda c: chain_ms(chains, c))


def chain_ms(chains: dict, chain: str | None = None) -> float:
    """A chain's ms per step (median), from an anatomy's chains; None: the bound chain (bound_chain)."""
    return chains[chain or bound_chain(chains)]["step_ms"]["median"]


def link_us(result: dict, chain: str | None = None) -> float:
    """A chain's µs per link in an anatomy result (its ms per step over the step's links); None: the bound chain."""
    return chain_ms(result["chains"], chain) * 1000 / result["links"]


def profile_kernels(run: Callable[[], None]) -> list[tuple[str, float, float]]:
    """The GPU kernels that run() launches (CUDA graph replays included), as torch.profiler
    (CUPTI) sees them, in start order: (name, start us, duration us)."""
    import json
    import tempfile
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(str(Path(d) / "trace.json"))
        events = json.loads((Path(d) / "trace.json").read_text())["traceEvents"]
    seen = [(e["name"], float(e["ts"]), float(e["dur"])) for e in events if e.get("cat") == "kernel"]
    return sorted(seen, key=lambda k: k[1])


def link_times(seen: list[tuple[str, float, float]], roles: list[str]) -> dict:
    """Per link of a step, from the kernels that a profiler saw over several steps (profile_kernels):
    the kernel, its median duration, and the median time it adds to the step: its end minus
    the end of the link before (the first link: its duration). With PDL a kernel starts
    before the one before ends, so durations overlap; the added times sum to the step's span.
    -> {"steps_profiled", "links": [{"role", "kernel", "us", "adds_us"}]}, or {"why_not"}
    where the kernels do not split into whole steps of len(roles), named alike."""
    n = len(roles)
    if not seen or len(seen) % n:
        return {"why_not": f"the profiler saw {len(seen)} kernels, not a multiple of the step's {n}"}
    steps = [seen[i:i + n] for i in range(0, len(seen), n)]
    names = [k[0] for k in steps[0]]
    if any([k[0] for k in s] != names for s in steps):
        return {"why_not": "the profiled steps launch different kernels"}
    end = lambda k: k[1] + k[2]                                                        # noqa: E731
    links = [{"role": role, "kernel": names[j],
              "us": ev.summarize([s[j][2] for s in steps])["median"],
              "adds_us": ev.summarize([end(s[j]) - (end(s[j - 1]) if j else s[j][1]) for s in steps])["median"]}
             for j, role in enumerate(roles)]
    return {"steps_profiled": len(steps), "links": links}


def link_groups(links: list[dict]) -> dict:
    """The links by what they do, every block's alike ('3.attn.c_attn' is 'attn.c_attn'):
    {what: {"links": how many, "adds_us": the us they add to a step, together}}, in step order."""
    import re
    out = {}
    for link in links:
        g = out.setdefault(re.sub(r"^\d+\.", "", link["role"]), {"links": 0, "adds_us": 0.0})
        g["links"] += 1
        g["adds_us"] += link["adds_us"]
    return out


def block_links(links: list[dict]) -> tuple[list[dict], list[dict]]:
    """link_groups split by position: a block's five kinds in launch order (GPT-2's and Llama's
    names differ), and the rest of a step (the embedding before them, the head and the token
    pick after)."""
    groups = list(link_groups(links).values())
    return groups[1:6], groups[:1] + groups[6:]


def lowest_ratio(chain_ms: float, floor_ms: float, fp16_floor_ms: float) -> float:
    """The lowest decode-time ratio to fp16 that any step of a chain taking chain_ms could
    reach, for weights whose bytes take floor_ms at peak bandwidth (fp16's: fp16_floor_ms), if
    each hid its weight bytes behind the chain as well as the other: a step takes at least
    the longer of the two, and fp16 need take no more. Never below floor / fp16 floor; 1 once
    the chain outlasts fp16's bytes."""
    return max(chain_ms, floor_ms) / max(chain_ms, fp16_floor_ms)


def most_links(target: float, chain_us_per_link: float, floor_ms: float, fp16_floor_ms: float) -> int | None:
    """The most links a step could have for lowest_ratio to reach target, each link taking
    chain_us_per_link; None where the weights' bytes alone keep the ratio above target."""
    if floor_ms > target * fp16_floor_ms:
        return None
    return int(target * fp16_floor_ms * 1000 / chain_us_per_link)


WHOLE_VECTOR_KERNELS = ("_fused_gemv", "_argmax_head")   # links whose every program reads the whole vector


def mixed_chain_ms(result: dict, name: str = "fp16") -> float | None:
    """A tighter floor than the vector chain for name's step: its links whose programs read the
    whole vector (the GEMVs, the head) at the vector chain's time per link, the others
    (attention, the embedding, the token pick) at the empty chain's. None without a profile."""
    links = result["steps"][name].get("links")
    if not links:
        return None
    whole = sum(link["kernel"] in WHOLE_VECTOR_KERNELS for link in links)
    return (whole * link_us(result, "vector") + (len(links) - whole) * link_us(result, "empty")) / 1000


def chain_graph(links: int, width: int, read: bool, pdl: bool, programs: int,
                persistent: bool = False) -> Callable[[], None]:
    """A CUDA graph of `links` chain links over a vector of `width`, each link with `programs`
    programs: separate kernels (kernels.chain_link), or one persistent kernel with a grid
    barrier between links (kernels.barrier_chain); -> its replay. A chain that reads is
    checked once, uncaptured, from zeros: every element of the last vector is `links`."""
    x = torch.zeros(2, width + 1, device="cuda")
    cnt = torch.zeros(3, dtype=torch.int32, device="cuda")
    saved, kernels.PDL = kernels.PDL, pdl and kernels.PDL

    def run():
        if persistent:
            kernels.barrier_chain(x, cnt, links, programs)
            return
        for i in range(links):
            kernels.chain_link(x[i % 2], x[(i + 1) % 2], programs, read)
    try:
        on_side_stream([run])                                         # compiles (before capture)
        if read and (bool(cnt[2]) or not bool((x[links % 2, :width] == links).all())):
            raise RuntimeError(f"the chain of {links} links did not compute what it should "
                               f"({'a grid barrier timed out' if cnt[2] else 'wrong values'})")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run()
    finally:
        kernels.PDL = saved
    return lambda g=g, x=x, cnt=cnt: g.replay()                       # x, cnt live as long as the graph


@torch.no_grad()
def anatomy(model_id: str, tokenizer, ids: torch.Tensor, methods: list[str], prompt_tokens: int, new_tokens: int,
            repeats: int, warmup: int, tune: bool = True, replays: int = PROFILE_REPLAYS) -> dict:
    """Each method's fused decode step, and the same step with its weights in L2, timed
    round-robin beside chains of as many links (CHAINS), each link of the step
    profiled, and the lowest ratio to fp16 that a step of that many links could reach."""
    dev = torch.device("cuda")
    prompt = ev.timing_inputs(ids, 1, prompt_tokens, dev)[1]
    bandwidth = hbm_bytes_per_s(torch.cuda.get_device_name())
    entries, rows, keep, roles = {}, {}, [], None
    methods = ["fp16"] + [m for m in methods if m != "fp16"]                # the baseline first
    for name in methods:
        m = load_method(name, model_id, "cuda")
        dec = FastDecoder(m, prompt_tokens, new_tokens, fused=True)
        if dec.fused.kernels_per_step() is None:
            raise ev.UserError(f"{name}: the fused step runs {', '.join(dec.fused.module_layers)} as the model's "
                               "modules, so its links are not one kernel each (choose methods the fused step "
                               "serves whole)")
        ref = generate_tokens(m, tokenizer, prompt, new_tokens)
        tiles = tune_tiles(dec, prompt) if tune else None
        dec.capture()
        same = leading_equal(dec.generate(prompt), ref)
        entries[name] = (dec.start, dec.programs["decode"])
        entries[f"{name}·l2"] = (dec.start, dec.weights_from_l2())

        def profiled(d=dec):
            for _ in range(min(replays, new_tokens - 1)):
                d.programs["decode"]()
        dec.start()                                           # the prompt pass, outside the profile
        seen = profile_kernels(profiled)
        roles = dec.fused.roles
        weights = ev.tensor_bytes(m)
        rows[name] = {"weights_bytes": weights["bytes"], "weights_mib": weights["mib"],
                      "floor_ms": decode_floor_ms(weights["bytes"], bandwidth),
                      "fused_leading_tokens_equal": same, "fused_tiles": tiles, **link_times(seen, roles)}
        keep.append((m, dec))                                     # loaded until the round-robin is done
        print(f"  {name}: {weights['mib']:.1f} MiB, {len(roles)} links, fused tokens = generate tokens: "
              f"{same}/{new_tokens}, profiler: {len(seen)} kernels", file=sys.stderr, flush=True)
    width = keep[0][1].fused.x.numel()
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    for chain, (read, pdl, persistent) in CHAINS.items():
        entries[f"chain·{chain}"] = (None, chain_graph(len(roles), width, read, pdl, sms, persistent))
    times = time_steps(entries, new_tokens - 1, repeats, warmup)
    chains = {c: {"step_ms": times[f"chain·{c}"], "definition": CHAIN_DEFINITIONS[c]} for c in CHAINS}
    base, fp16_floor = times["fp16"]["median"], rows["fp16"]["floor_ms"]
    bound = chain_ms(chains)
    for name, row in rows.items():
        row.update({"step_ms": times[name], "l2_step_ms": times[f"{name}·l2"],
                    "vs_baseline": times[name]["median"] / base,
                    "l2_vs_baseline": times[f"{name}·l2"]["median"] / base,
                    "lowest_ratio": None if fp16_floor is None else lowest_ratio(bound, row["floor_ms"], fp16_floor)})
    return {"steps": rows, "chains": chains, "baseline": "fp16", "links": len(roles), "width": width,
            "chain_programs": sms, "pdl": kernels.pdl_on(dev), "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup, "hbm_bytes_per_s": bandwidth,
            "order": f"round-robin: each repeat times {', '.join(entries)} in turn",
            "step_definition": f"ms per decode step: after the prompt pass (untimed), {new_tokens - 1} replays of "
                               "the step's CUDA graph timed with CUDA events; median of the repeats",
            "l2_definition": f"the fused step with every weight read from its first {kernels.L2_ROWS} rows, which "
                             "stay in L2 (fast_decode's diagnostic): the step without its HBM weight bytes",
            "profile_definition": f"torch.profiler (CUPTI) over {min(replays, new_tokens - 1)} graph replays of the "
                                  "decode step: per link, the median of its kernel's duration (us) and of the time it "
                                  "adds to the step (adds_us: its end minus the end of the link before)",
            "lowest_ratio_definition": "the lowest decode-time ratio to the baseline that any step of this many "
                                       "links could reach if both hid their weight bytes behind the chain equally: "
                                       "max(chain, floor) / max(chain, baseline floor), chain = the faster of the "
                                       "vector and grid-barrier chains' ms per step, floor = weight bytes / peak "
                                       "bandwidth",
            "tiles_definition": ("each weight-reading kernel's tile chosen by tune_tiles (the whole decode step timed "
                                 "per candidate tile)" if tune else "Triton's autotuner (--no-tune-tiles)")}


def save_anatomy(result: dict, methods: list[str], source, args) -> results.Record:
    """Write the anatomy as a results record of kind 'anatomy' (step-anatomy__<model>__cuda__<hash>.json),
    print it, return the record."""
    record = ev.save_timing_record("anatomy", "step-anatomy", {"methods": methods, "fused_path": FUSED_PATH},
                                   {"id": args.model}, source, result, args, torch.device("cuda"),
                                   ("prompt_tokens", "new_tokens", "repeats", "warmup"))
    print(f"fused step anatomy on {record['environment']['device_name']}:")
    print(anatomy_text(result))
    print(f"wrote {record.path}")
    return record


TARGET_RATIO = 0.9           # issue 18's target for INT8 and 4-bit against fp16 on the fused step


def anatomy_rows(result: dict) -> list[dict]:
    """The anatomy's rows, for every renderer (terminal, RESULTS.md, the report): each method's
    step, then each chain. A row: name, ms, vs_fp16, and for a method l2_ms, floor_ms,
    lowest_ratio, most_links (for TARGET_RATIO, fast_decode.most_links), tokens."""
    steps, chains = result["steps"], result["chains"]
    base = steps[result["baseline"]]
    per_link = link_us(result)
    rows = []
    for name, r in steps.items():
        floors = (r["floor_ms"], base["floor_ms"])
        rows.append({"name": name, "ms": r["step_ms"]["median"], "vs_fp16": r["vs_baseline"],
                     "l2_ms": r["l2_step_ms"]["median"], "floor_ms": r["floor_ms"], "lowest_ratio": r["lowest_ratio"],
                     "most_links": None if None in floors else most_links(TARGET_RATIO, per_link, *floors),
                     "tokens": r["fused_leading_tokens_equal"]})
    for c, r in chains.items():
        rows.append({"name": f"chain: {c}", "ms": r["step_ms"]["median"],
                     "vs_fp16": r["step_ms"]["median"] / base["step_ms"]["median"]})
    return rows


def anatomy_text(result: dict) -> str:
    """The anatomy for the terminal: the steps and chains, then the time each kind of link adds."""
    n = result["links"]
    lines = [f"{'step of ' + str(n) + ' links':<24} {'ms/step':>8} {'vs fp16':>7} {'weights in L2':>13} "
             f"{'bytes at peak':>13} {'lowest ratio':>12} {'links for ' + str(TARGET_RATIO):>13} {'tokens':>7}"]
    for r in anatomy_rows(result):
        line = f"{r['name']:<24} {r['ms']:>8.4f} {r['vs_fp16']:>7.2f}"
        if "l2_ms" in r:
            line += (f" {r['l2_ms']:>13.4f} {or_dash(r['floor_ms'], '.4f'):>13} {or_dash(r['lowest_ratio'], '.2f'):>12}"
                     f" {or_dash(r['most_links'], 'd'):>13} {r['tokens']:>3}/{result['new_tokens']}")
        lines.append(line)
    measured = " and ".join(c for c in BOUND_CHAINS if c in result["chains"])
    lines.append(f"ms per decode step, median of {result['repeats']} round-robin repeats; bytes at peak = weight bytes "
                 f"/ spec peak bandwidth; lowest ratio = max(chain, bytes) / max(chain, fp16's bytes), chain = the "
                 f"{bound_chain(result['chains'])} chain (the faster of {measured}); links for "
                 f"{TARGET_RATIO} = the most links a step could have for that ratio (that chain's time per link)")
    profiled = {name: link_groups(r["links"]) for name, r in result["steps"].items() if "links" in r}
    if profiled:
        kinds = next(iter(profiled.values()))
        lines += ["", f"{'us a step, by link':<24} {'links':>5} " + " ".join(f"{name[:18]:>18}" for name in profiled)]
        for kind, g in kinds.items():
            lines.append(f"{kind:<24} {g['links']:>5} " + " ".join(
                f"{p[kind]['adds_us'] if kind in p else float('nan'):>18.1f}" for p in profiled.values()))
        lines.append(f"{'all links':<24} {n:>5} " + " ".join(
            f"{sum(g['adds_us'] for g in p.values()):>18.1f}" for p in profiled.values()))
    for name, r in result["steps"].items():
        if "why_not" in r:
            lines.append(f"{name}: no profile ({r['why_not']})")
    return "\n".join(lines)


def table_text(result: dict) -> str:
    lines = [f"{'method':<20} {'MiB':>7} {'graph':>5} | {'generate: prefill':>17} {'decode':>9} {'ratio':>6} |"
             f" {'fast: prefill':>13} {'ratio':>6} {'decode':>8} {'ratio':>6} {'floor':>7} {'x floor':>8}"
             f" {'peak MiB':>9} {'tokens':>7}"]
    for name, r in result["table"].items():
        f = r["fast_path"]
        lines.append(f"{name:<20} {r['weights_mib']:>7.1f} {'yes' if r['cuda_graph'] else 'no':>5} | "
                     f"{r['prefill_ms']['median']:>14.2f} ms {r['decode_ms_per_token']['median']:>9.3f} "
                     f"{r['decode_ratio']:>6.2f} | {f['prefill_ms']['median']:>10.3f} ms {f['prefill_ratio']:>6.2f} "
                     f"{f['decode_ms_per_token']['median']:>8.3f} {f['decode_ratio']:>6.2f} "
                     f"{or_dash(r['floor_ms'], '.4f'):>7} "
                     f"{or_dash(f['x_floor'], '.1f'):>8} {r['peak_bytes'] / 2**20:>9.1f} "
                     f"{r['leading_tokens_equal']:>3}/{result['new_tokens']}")
    lines.append(f"decode in ms per token (median of {result['repeats']} round-robin repeats); ratios against fp16 "
                 "on the same path; floor = weight bytes / "
                 + (f"{result['hbm_bytes_per_s'] / 1e12:.2f} TB/s (spec peak)" if result.get("hbm_bytes_per_s")
                    else "peak bandwidth (unknown for this GPU: no floor)") + "; tokens = leading "
                 "greedy tokens of the fast path equal to generate()'s")
    lines += ["", fused_table_text(result)]
    names = [k for k in next(iter(result["table"].values()))["layers_us"] if k != "graph"]
    lines += ["", f"{'us per call, 1 token':<20} " + " ".join(f"{k:>16}" for k in names)
              + f" {'linears/token':>14}"]
    for name, r in result["table"].items():
        lines.append(f"{name:<20} " + " ".join(f"{r['layers_us'][k]['median']:>8.2f} ({r['layer_ratio'][k]:>4.2f})"
                                               for k in names) + f" {r['linear_us_per_token']:>11.0f} us"
                     + ("" if r["kernel_max_rel_err"] is None else f"  err {r['kernel_max_rel_err']:.1e}")
                     + ("" if r["layers_us"]["graph"] else "  (eager)"))
    lines.append(f"each layer: {result['layer_calls_per_replay']} calls in one CUDA graph, median; (ratio to fp16); "
                 "linears/token = blocks x the block's layers + lm_head; err = worst relative error of a Part 1 "
                 "layer against dequantize-then-matmul in fp32")
    return "\n".join(lines)


def fused_rows(result: dict) -> list[dict]:
    """The fused-step table's rows, for every renderer (terminal, RESULTS.md, the report): per
    method its fast path, its fused step and, where measured, the fused step with its weights
    in L2 (path 'l2', with weight_bytes_share), then the peers. Each row: method, path ('fast',
    'fused', 'l2' or 'peer'), ms (median ms/token, or None with why_not), vs_fp16_fused,
    x_floor, tokens (leading greedy tokens equal to the reference), kernels (a fused row's
    kernels a step, or None). [] for a bench made before the fused step."""
    if "fused_path" not in result:
        return []

    def row(name, path, p, tokens, kernels_=None, why_not=None):
        p = p or {}
        return {"method": name, "path": path, "why_not": why_not,
                "ms": p["decode_ms_per_token"]["median"] if p.get("decode_ms_per_token") else None,
                "vs_fp16_fused": p.get("vs_fp16_fused"), "x_floor": p.get("x_floor"), "tokens": tokens,
                "kernels": kernels_}
    rows = []
    for name, r in result["table"].items():
        rows.append(row(name, "fast", r["fast_path"], r.get("leading_tokens_equal")))
        if r.get("fused_path"):
            rows.append(row(name, "fused", r["fused_path"], r.get("fused_leading_tokens_equal"),
                            r.get("fused_kernels_per_step")))
            if r.get("fused_l2_path"):
                rows.append({**row(name, "l2", r["fused_l2_path"], None, r.get("fused_kernels_per_step")),
                             "weight_bytes_share": r["fused_l2_path"]["weight_bytes_share"]})
        else:
            rows.append(row(name, "fused", None, None, why_not=f"not run: {r.get('why_not_fused')}"))
    for name, p in result.get("peers", {}).items():
        rows.append(row(name, "peer", p, p.get("leading_tokens_equal"),
                        why_not=f"cannot run: {p['why_not']}" if p.get("why_not") else None))
    return rows


def size_rows(records: list[dict]) -> list[dict]:
    """The fused step against model size, one row per CUDA bench with fp16 on the fused path,
    smallest model first: its fp16 fused ms/token, x floor and weights' bytes share (the L2
    diagnostic), and per Part 1 method (INT8, int4) its fused time against fp16's and its
    step without weight bytes against fp16's (l2_vs_fp16_l2: what unpacking the format costs
    the chain), and free_unpack_vs_fp16_fused: what its fused step would take against fp16's
    if its step without weight bytes cost what fp16's does (inferred: fp16's step in L2 plus
    the method's own reads). params: fp16's weight bytes / 2, every tensor counted once (GPT-2
    ties its output layer to the embedding)."""
    def ms(p):
        return p["decode_ms_per_token"]["median"]

    rows = []
    for rec in records:
        b = rec.get("bench") or {}
        fp = (b.get("table") or {}).get("fp16") or {}
        if not str(rec.get("environment", {}).get("device", "")).startswith("cuda") or not fp.get("fused_path"):
            continue
        l2 = fp.get("fused_l2_path")
        row = {"model": rec["model"]["id"], "stand_in": bool(rec["model"].get("stand_in")),
               "file": rec.get("_file"), "params": fp["weights_bytes"] / 2,
               "kernels": fp.get("fused_kernels_per_step"), "fp16_ms": ms(fp["fused_path"]),
               "fp16_x_floor": fp["fused_path"]["x_floor"],
               "fp16_bytes_share": l2["weight_bytes_share"] if l2 else None}
        for name in ("scratch-int8-fast", "scratch-int4-fast"):
            r = b["table"].get(name) or {}
            f, q2 = r.get("fused_path"), r.get("fused_l2_path")
            row[name] = None if not f else {
                "vs_fp16_fused": f["vs_fp16_fused"], "x_floor": f["x_floor"],
                "l2_vs_fp16_l2": ms(q2) / ms(l2) if q2 and l2 else None,
                # inferred, not measured: fp16's step in L2 plus this method's own reads (its fused
                # step minus its step in L2), against fp16's fused step
                "free_unpack_vs_fp16_fused": ((ms(l2) + ms(f) - ms(q2)) / ms(fp["fused_path"])
                                              if q2 and l2 else None)}
        rows.append(row)
    return sorted(rows, key=lambda r: r["params"])


def or_dash(v, fmt: str) -> str:
    """v formatted, or a dash where there is none."""
    return "–" if v is None else format(v, fmt)


def fused_table_text(result: dict) -> str:
    """Decode on each path against fp16 on the fused path, the floor, and the peers beside them."""
    rows = fused_rows(result)
    if not rows:
        return ""
    n = result["new_tokens"]
    lines = [f"{'method':<20} {'path':<8} {'ms/token':>9} {'vs fp16 fused':>14} {'x floor':>8} {'tokens':>8}"
             f" {'kernels/step':>13}"]
    for r in rows:
        if r["why_not"]:
            lines.append(f"{r['method']:<20} {r['path']:<8} {r['why_not']}")
            continue
        ratio, floor = or_dash(r["vs_fp16_fused"], ".2f"), or_dash(r["x_floor"], ".1f")
        tokens = "–" if r["tokens"] is None else f"{r['tokens']}/{n}"
        lines.append(f"{r['method']:<20} {r['path']:<8} {r['ms']:>9.4f} {ratio:>14} {floor:>8} {tokens:>8} "
                     f"{r['kernels'] or '':>13}"
                     + (f"  weights' bytes: {r['weight_bytes_share']:.0%} of the fused step" if r["path"] == "l2"
                        else ""))
    lines.append("ms/token: median decode, round-robin; vs fp16 fused: against fp16 on the fused path in the same "
                 "run; x floor: against weight bytes / peak bandwidth; tokens: leading greedy tokens equal to "
                 "generate()'s (a peer: to its reference); l2: the fused step with every weight read from rows "
                 "that stay in L2 (a diagnostic, no tokens): the step without its weights' HBM bytes")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# 5. CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast_decode.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="Hub id or local folder of a GPT-2 or Llama model (default: gpt2)")
    p.add_argument("--dataset", default="wikitext2", choices=list(ev.DATASETS),
                   help="text whose first tokens are the prompts (default: wikitext2)")
    p.add_argument("--text-file", default=None, help="local UTF-8 text instead of a Hub dataset")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda: the GPU bench (generate(), the fast path, the fused step, the peers); cpu: the CPU "
                        "bench (the static-cache path beside llama.cpp's GGUF files of the same model)")
    p.add_argument("--methods", default=None,
                   help=f"comma list; on cuda of {', '.join(METHODS)}; on cpu of {', '.join(CPU_METHODS)} "
                        "(default: all of the device's)")
    p.add_argument("--gguf-dir", default="gguf", help="CPU bench: folder for the GGUF files it makes (default: gguf)")
    ev.add_latency_args(p)
    p.add_argument("--anatomy", action="store_true",
                   help="cuda: instead of the bench, the fused step's anatomy: each method's step and the same step "
                        "with its weights in L2, beside chains of as many links doing none of the work (as "
                        "separate kernels and as one persistent kernel with grid barriers: the least measured for "
                        "that many links), each link profiled; methods of "
                        f"{', '.join(ANATOMY_METHODS)} (default: the first three)")
    p.add_argument("--no-tune-tiles", action="store_true",
                   help="cuda: keep the tiles Triton's autotuner picks for the fused step's GEMVs and head (each "
                        "kernel timed alone) instead of timing the whole decode step per candidate tile")
    p.add_argument("--stand-in", default=None, help="which model this one stands in for, stored with the results")
    p.add_argument("--random-weights", action="store_true",
                   help="the weights are random (a stand-in for shapes and speed); stored as model.random_weights")
    p.add_argument("--results-dir", default="results", help="folder for the results JSON (default: results)")
    p.add_argument("--out", default=None, help="exact results file (default: gpu-decode-bench__<model>__cuda__<hash>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="a tiny random GPT-2 made on the spot; numbers mean nothing")
    return p


def main(**kwargs) -> dict:
    args = ev.with_defaults(build_parser(), kwargs)
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        raise ev.UserError("the GPU decode benchmark needs CUDA, and no GPU was found (use a CUDA machine, "
                           "or --device cpu for the CPU bench)")
    if args.anatomy and cpu:
        raise ev.UserError("--anatomy is the GPU's fused step: it runs with --device cuda")
    choices = CPU_METHODS if cpu else ANATOMY_METHODS if args.anatomy else METHODS
    default = ANATOMY_METHODS[:3] if args.anatomy else choices
    methods = parse_methods(args.methods or ",".join(default), choices, "fp32" if cpu else "fp16")
    ev.check_at_least(*ev.latency_minimums(args))
    ev.check_output_dir(args.results_dir, "--results-dir")
    if args.out:
        ev.check_output_file(args.out, "--out")
    if args.smoke:                       # the tiny model's context is 128: its own small lengths
        import tempfile
        args.model, args.text_file = ev.make_smoke_inputs(tempfile.mkdtemp(prefix="qstudy-smoke-"))
        vars(args).update({k: v for k, v in ev.SMOKE_SETTINGS.items() if k in vars(args)})
    ev.check_model_source(args.model)
    if cpu and any(m.startswith("gguf-") for m in methods):
        import bonus_gguf
        bonus_gguf.check_gguf_dir(args.gguf_dir, args.model)
    config = ev.load_config(args.model)
    check_architecture(config.model_type, f"'{args.model}'")
    ev.check_latency_fits(ev.EvalConfig(prefill_tokens=args.prefill_tokens, prompt_tokens=args.prompt_tokens,
                                        new_tokens=args.new_tokens), ev.model_context(config))
    source = ev.load_text(args.dataset, args.text_file)
    tokenizer = ev.load_tokenizer(args.model)
    ids = ev.tokenize(tokenizer, source.text, 4096)
    if cpu:
        result = cpu_bench(args.model, tokenizer, ids, methods, args.prefill_tokens, args.prompt_tokens,
                           args.new_tokens, args.repeats, args.warmup, args.gguf_dir, progress=not args.quiet)
        record = ev.save_side_by_side("cpu-decode-bench", {"methods": methods, "static_path": CPU_PATH},
                                      {"id": args.model}, source, result, args, torch.device("cpu"))
        print(cpu_targets_text(result))
        return record
    if args.anatomy:
        return save_anatomy(anatomy(args.model, tokenizer, ids, methods, args.prompt_tokens, args.new_tokens,
                                    args.repeats, args.warmup, tune=not args.no_tune_tiles), methods, source, args)
    result = bench(args.model, tokenizer, ids, methods, args.prefill_tokens, args.prompt_tokens, args.new_tokens,
                   args.repeats, args.warmup, progress=not args.quiet, tune=not args.no_tune_tiles)
    record = ev.save_side_by_side("gpu-decode-bench", {"methods": methods, "fast_path": FAST_PATH},
                                  {"id": args.model}, source, result, args, torch.device("cuda"))
    print(table_text(result))
    return record


if __name__ == "__main__":
    ev.run_cli(main, build_parser())
