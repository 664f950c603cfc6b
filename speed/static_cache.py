"""The static-cache models: a model's own modules, attention over a preallocated KV cache.

StaticGPT2, StaticLlama and StaticGemma3 call each block's modules as they are (quantized or not); only
attention reads and writes a cache allocated once for prompt + new tokens, so that a decode
step has fixed shapes and can be captured as a CUDA graph (speed/decoder.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import evaluate as ev

# -----------------------------------------------------------------------------
# 1. The static-cache models: the model's own modules, attention over a preallocated cache

class StaticCache:
    """K and V for max_len positions of every block, for `batch` sequences that share their
    positions (prompts of one length, decoded in step), written in place."""

    def __init__(self, model, blocks, kv_heads: int, head_dim: int, norm: torch.nn.Module, max_len: int,
                 batch: int = 1):
        self.model, self.blocks, self.max_len, self.B = model, list(blocks), max_len, batch
        self.dtype = norm.weight.dtype                          # norms keep the compute dtype everywhere
        self.device = norm.weight.device
        shape = (len(self.blocks), batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)     # (L, B, Hkv, T, D)
        self.v = torch.zeros_like(self.k)
        self.t = torch.arange(max_len, device=self.device)

    def attend(self, i: int, q, k, v, pos, mask, groups: int = 1, scale: float | None = None) -> torch.Tensor:
        """Write block i's k, v (B, Hkv, S, D) at pos; q (B, H, S, D) -> (B, S, H*D). scale: the
        logits' factor (None: 1/sqrt(D))."""
        self.k[i].index_copy_(2, pos, k)
        self.v[i].index_copy_(2, pos, v)
        keys, values = self.k[i], self.v[i]                                   # (B, Hkv, T, D)
        if groups > 1:                                   # grouped-query attention: as the model's repeat_kv
            keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)   # (B, H, S, D)
        return a.transpose(1, 2).reshape(self.B, q.shape[2], -1)


class StaticGPT2(StaticCache):
    """A GPT2LMHeadModel: wte + wpe, blocks of ln_1, attn.c_attn, attn.c_proj, ln_2, mlp; ln_f, lm_head."""

    def __init__(self, model, max_len: int, batch: int = 1):
        tr, c = model.transformer, model.config
        self.n_head, self.d = c.n_head, c.n_embd
        super().__init__(model, tr.h, c.n_head, c.n_embd // c.n_head, tr.ln_f, max_len, batch)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (B, S) at positions pos (S,) -> logits (B, S, V); writes K, V at pos."""
        tr, H, B = self.model.transformer, self.n_head, self.B
        x = (tr.wte(ids) + tr.wpe(pos)[None]).to(self.dtype)                 # (B, S, C)
        mask = self.t[None, :] <= pos[:, None]                               # (S, T): causal, cache-wide
        for i, blk in enumerate(self.blocks):
            qkv = blk.attn.c_attn(blk.ln_1(x))                               # (B, S, 3C)
            q, k, v = (t.view(B, -1, H, self.d // H).transpose(1, 2) for t in qkv.split(self.d, dim=-1))
            x = x + blk.attn.c_proj(self.attend(i, q, k, v, pos, mask))
            x = x + blk.mlp(blk.ln_2(x))
        return self.model.lm_head(tr.ln_f(x))


class StaticLlama(StaticCache):
    """A LlamaForCausalLM: embed_tokens, blocks of input_layernorm, self_attn (q/k/v/o_proj,
    rotary on q and k, grouped-query), post_attention_layernorm, mlp; norm, lm_head. The
    rotary cos/sin come from the model's own rotary_emb, once for every cache position."""

    def __init__(self, model, max_len: int, batch: int = 1):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        m, c = model.model, model.config
        self.n_head, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        super().__init__(model, m.layers, self.kv_heads, self.head_dim, m.norm, max_len, batch)
        self.rotate = apply_rotary_pos_emb
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)        # rotary_emb reads dtype, device
        self.cos, self.sin = m.rotary_emb(probe, self.t[None])               # (1, T, D) each

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (B, S) at positions pos (S,) -> logits (B, S, V); writes K, V at pos."""
        m, D, B = self.model.model, self.head_dim, self.B
        x = m.embed_tokens(ids).to(self.dtype)                               # (B, S, C)
        cos, sin = self.cos[:, pos], self.sin[:, pos]                        # (1, S, D)
        mask = self.t[None, :] <= pos[:, None]                               # (S, T)
        for i, blk in enumerate(self.blocks):
            att, h = blk.self_attn, blk.input_layernorm(x)
            q = att.q_proj(h).view(B, -1, self.n_head, D).transpose(1, 2)     # (B, H, S, D)
            k = att.k_proj(h).view(B, -1, self.kv_heads, D).transpose(1, 2)   # (B, Hkv, S, D)
            v = att.v_proj(h).view(B, -1, self.kv_heads, D).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            x = x + att.o_proj(self.attend(i, q, k, v, pos, mask, self.n_head // self.kv_heads))
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        return self.model.lm_head(m.norm(x))


class StaticGemma3(StaticCache):
    """A Gemma3ForCausalLM (text): the scaled embedding, blocks of input_layernorm, self_attn
    (q/k/v_proj, q_norm and k_norm, rotary of the layer's type, grouped-query, logits scaled by
    query_pre_attn_scalar^-1/2), post_attention_layernorm, then pre_feedforward_layernorm, mlp,
    post_feedforward_layernorm; norm, lm_head (and the final soft cap where the config has one).
    A sliding layer sees the last sliding_window positions, itself included, as the model's own
    mask does. The modules are the model's own, so their (1 + w) norms are theirs too."""

    def __init__(self, model, max_len: int, batch: int = 1):
        from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb
        m, c = model.model, model.config
        if c.attn_logit_softcapping or getattr(c, "use_bidirectional_attention", False):
            raise ev.UserError("the fast decode path's Gemma 3 has causal attention with no logit soft cap; this "
                               "config asks for " + ("a soft cap" if c.attn_logit_softcapping else
                                                     "bidirectional attention"))
        self.n_head, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        super().__init__(model, m.layers, self.kv_heads, self.head_dim, m.norm, max_len, batch)
        self.rotate, self.layer_types, self.window = apply_rotary_pos_emb, list(c.layer_types), c.sliding_window
        self.scaling, self.softcap = c.query_pre_attn_scalar ** -0.5, c.final_logit_softcapping
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        self.rope = {t: m.rotary_emb(probe, self.t[None], t) for t in set(self.layer_types)}   # (1, T, D) each

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (B, S) at positions pos (S,) -> logits (B, S, V); writes K, V at pos."""
        m, D, B = self.model.model, self.head_dim, self.B
        x = m.embed_tokens(ids).to(self.dtype)                               # (B, S, C), scaled by sqrt(C)
        causal = self.t[None, :] <= pos[:, None]                             # (S, T)
        masks = {"full_attention": causal, "sliding_attention": causal & (self.t[None, :] > pos[:, None] - self.window)}
        for i, blk in enumerate(self.blocks):
            kind = self.layer_types[i]
            cos, sin = (r[:, pos] for r in self.rope[kind])
            att, h = blk.self_attn, blk.input_layernorm(x)
            q = att.q_norm(att.q_proj(h).view(B, -1, self.n_head, D)).transpose(1, 2)    # (B, H, S, D)
            k = att.k_norm(att.k_proj(h).view(B, -1, self.kv_heads, D)).transpose(1, 2)  # (B, Hkv, S, D)
            v = att.v_proj(h).view(B, -1, self.kv_heads, D).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            a = self.attend(i, q, k, v, pos, masks[kind], self.n_head // self.kv_heads, self.scaling)
            x = x + blk.post_attention_layernorm(att.o_proj(a))
            x = x + blk.post_feedforward_layernorm(blk.mlp(blk.pre_feedforward_layernorm(x)))
        logits = self.model.lm_head(m.norm(x))
        return logits if not self.softcap else torch.tanh(logits / self.softcap) * self.softcap


STATIC = {"gpt2": StaticGPT2, "llama": StaticLlama, "gemma3_text": StaticGemma3}


def check_architecture(model_type: str | None, what: str = "this model") -> None:
    if model_type not in STATIC:
        raise ev.UserError(f"the fast decode path supports GPT-2, Llama and Gemma 3 text models only ({what} is "
                           f"'{model_type or '?'}')")


def static_model(model, max_len: int, batch: int = 1) -> StaticCache:
    kind = getattr(model.config, "model_type", None)
    check_architecture(kind)
    return STATIC[kind](model, max_len, batch)
