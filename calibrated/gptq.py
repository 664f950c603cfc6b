"""GPTQ from scratch (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", Algorithm 1), in plain torch.

For one linear layer with weight W (out, in) and calibration inputs X (n, in), GPTQ picks codes
Q that make ||X W^T - X Q^T||^2 small, not ||W - Q||^2. With H = 2 X^T X / n:
  1. dampening: H += damp * mean(diag H) * I (and a dead input, diag 0, gets 1 and a zero column);
  2. optional activation order: columns sorted by diag H, largest first;
  3. the inverse through Cholesky: U = chol(H^-1) upper, so that row i of U holds the
     inverse-Hessian terms of column i given the columns after it;
  4. column by column: q_i = quantize(w_i); the error e_i = (w_i - q_i) / U_ii is spread onto the
     columns not yet quantized, w_j -= e_i U_ij;
  5. lazily: inside a block of `block_size` columns the updates stay within the block; the rest
     of W gets them all at once, W[:, after] -= E U[block, after] (the same result, fewer writes).
Groups: without activation order each group's scale and zero are fitted when quantization
reaches its first column, on the weights as updated so far (the paper's code); with activation
order they are fitted beforehand on the original weights ("static groups"), so that the groups
stay contiguous and the stored layout is the same as round-to-nearest's.
"""
from __future__ import annotations

import torch

from calibrated.quantizer import Grid, decode, encode, fit, grouped

DAMP = 0.01             # the paper's dampening: 1% of the mean diagonal of H
BLOCK_SIZE = 128        # the paper's lazy-batch width


class Hessian:
    """H = 2 X^T X / n, accumulated over batches of inputs (..., in) in float32."""

    def __init__(self, in_features: int, device):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()                              # (tokens, in)
        m = x.shape[0]
        self.h *= self.n / (self.n + m)
        self.n += m
        x = x * (2 / self.n) ** 0.5
        self.h += x.t() @ x


def inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """U, upper triangular, with U^T U = (H + damp * mean(diag H) I)^-1."""
    h = h.clone()
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(hinv, upper=True)


@torch.no_grad()
def gptq(w: torch.Tensor, h: torch.Tensor, grid: Grid, *, damp: float = DAMP, block_size: int = BLOCK_SIZE,
         act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize W (out, in) against the Hessian H (in, in). Returns codes (out, in) and scale,
    zero (out, G), in the original column order; dequantize() of them is GPTQ's Q."""
    out, inp = w.shape
    gl = grid.group_len(inp)
    w = w.float().clone()
    h = h.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    n_groups = inp // gl
    scale = torch.zeros(out, n_groups, device=w.device)
    zero = torch.zeros(out, n_groups, device=w.device)
    static = act_order or n_groups == 1
    if static:                                   # every group fitted on the original weights
        s, z = fit(grouped(w, grid), grid.maxq)
        scale, zero = s.reshape(out, n_groups), z.reshape(out, n_groups)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(inp, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    u = inverse_factor(h, damp)
    codes = torch.zeros_like(w)
    for i1 in range(0, inp, block_size):
        i2 = min(i1 + block_size, inp)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])                                          # the column's own index
            g = col // gl
            if not static and col % gl == 0:     # the group starts here: fit it on today's weights
                rest = torch.cat([w1[:, i:i + gl], w[:, i2:i1 + i + gl]], dim=1)
                scale[:, g], zero[:, g] = fit(rest, grid.maxq)
            x = w1[:, i:i + 1]
            q = encode(x, scale[:, g], zero[:, g], grid.maxq)
            codes[:, i1 + i] = q[:, 0]
            e = (x - decode(q, scale[:, g], zero[:, g])) / u[i1 + i, i1 + i]
            w1[:, i:] -= e @ u[i1 + i:i1 + i + 1, i1 + i:i2]
            err[:, i:i + 1] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    inv = torch.argsort(perm)
    return codes[:, inv], scale, zero


def proxy_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """The layer-wise loss GPTQ minimizes, tr((W - Q) H (W - Q)^T)."""
    d = (w.float() - w_hat.float())
    return float(torch.einsum("oi,ij,oj->", d, h.float(), d))
