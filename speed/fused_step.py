"""The fused decode step: one token in five kernels a block (Triton on CUDA, C++ on a CPU).

The model's norms, residual adds and activation go into the GEMV beside them and attention
reads only the filled part of the cache; layers the fused GEMV cannot read (bitsandbytes,
group-wise or asymmetric int8, and on a CPU Part 1's 4-bit) run as the model's modules.
The kernels themselves are in speed/kernels/.
"""
from __future__ import annotations

import torch

import evaluate as ev
from speed import kernels
from speed.static_cache import StaticCache

FUSED_PATH = ("the fast path with the decode step as FusedStep's Triton kernels: per block norm+QKV GEMV, "
              "attention over the filled cache, out-projection GEMV+residual, norm+up GEMV+activation, "
              "down GEMV+residual; final norm+output layer+argmax (a few programs per SM, each looping over its "
              "rows), then one kernel picks the token; one CUDA graph; on Hopper with programmatic dependent "
              "launch (each kernel loads what earlier kernels cannot change, its first weight tile with the "
              "norm's weights, the int8 scales and the bias, or the filled cache, while the kernel before finishes)")


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
    if device.type != "cuda" and not kernels.interpreting():
        return "the fused step runs on CUDA (or under TRITON_INTERPRET=1)"
    return None


FUSED_ARCHITECTURES = ("gpt2", "llama")      # the blocks FusedStep is written for


def fused_architecture(model) -> str | None:
    """None if FusedStep is written for the model's blocks, else why not (the static path may still
    take it: Gemma 3's q/k norms and norms after attention and MLP have no place in its kernels)."""
    kind = getattr(model.config, "model_type", None)
    if kind in FUSED_ARCHITECTURES:
        return None
    return f"the fused step is written for GPT-2 and Llama blocks, not '{kind}'"


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
    from transformers.pytorch_utils import Conv1D

    import part1_quantize_scratch as p1
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
        why = fused_available(net.device, net.dtype) or fused_architecture(net.model)
        if why:
            raise ev.UserError(f"the fused decode step cannot run here: {why}")
        self.net, self.nxt, self.pos, self.step, self.tokens = net, nxt, pos, step, tokens
        self.dtype, dev = net.dtype, net.device
        self.ops, self.fused_layers, self.module_layers = [], [], []
        self.roles = []                       # what each kernel of a step does, in launch order (--anatomy)
        self.tile_keys = {}                   # kernels.tile_key -> the layers launched with it (tune_tiles)
        self.tiles: dict = {}                 # tile key -> (BN, BK, num_warps), pinned by decoder.tune_tiles
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
            self.ops.append(lambda: kernels.fused_linear(inp, fw, out, nargs, act or 0, res, self.l2_rows,
                                                                    self.tiles))
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
        self.head = (lm_head, norm)           # the model's own, for logits()
        fw, nargs = fused_weights([lm_head], self.dtype), norm_args(norm)
        if fw is not None and nargs is not None:
            self.fused_layers.append("lm_head")
            parts = kernels.head_programs(self.x.device, fw.n)
            pv = torch.full((parts,), float("-inf"), dtype=torch.float32, device=self.x.device)
            pi = torch.zeros(parts, dtype=torch.int32, device=self.x.device)
            self.tile_keys.setdefault(kernels.head_key(fw, parts), []).append("lm_head")
            self.ops.append(lambda: kernels.fused_argmax_head(self.x, fw, nargs, pv, pi, self.tokens, self.step,
                                                              self.nxt, self.pos, self.l2_rows, self.tiles))
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

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """The logits of the step just run: its final hidden state through the model's own norm
        and output layer (the fused head keeps only their argmax). -> (vocab,) float32"""
        lm_head, norm = self.head
        return lm_head(norm(self.x.view(1, 1, -1)))[0, -1].float()

    def kernels_per_step(self) -> int | None:
        """Kernel launches of a step whose layers are all fused; None where modules run (they
        launch what they launch)."""
        return None if self.module_layers else len(self.ops) + 1         # the head is two kernels
