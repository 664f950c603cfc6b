"""AWQ from scratch (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration", section 3), in plain torch.

A few input channels carry large activations, and their weights matter most. AWQ scales each
input channel of a layer by s before rounding, and divides the input by s, which leaves the float
layer unchanged: y = (x / s) (W diag s)^T. Rounding W diag s loses less on the channels that s
enlarges. Per group of layers that read the same input:
  1. s = mean|x|^alpha per input channel, normalized (sqrt(max * min) = 1), for alpha on a grid
     of `n_grid` points in [0, 1); the alpha kept is the one whose fake-quantized group gives the
     smallest mean squared error of the whole decoder block's output on the calibration batch;
  2. 1/s is folded into the op that produces the input where the architecture allows: a norm's
     weight (and bias), or the previous linear's output rows (Llama's up_proj before down_proj,
     v_proj before o_proj when every head has its own values); elsewhere it is kept explicitly
     and applied to the input at run time (QuantLinear.input_scale);
  3. optionally, a clipping search: per output row and group, the range shrunk by the ratio of
     a grid that best preserves the layer's own output (query and key layers are left unclipped,
     as in the paper's code, their errors being amplified by the attention scores);
  4. round-to-nearest on the scaled (and clipped) weights, into the shared storage.
The next block's inputs are this block's outputs with the scales applied but before rounding
(the order of the paper's code).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from calibrated.capture import BlockInputs, run_block
from calibrated.quantizer import Grid, QuantLinear, fake_quantize, fit, grouped, round_to_nearest

N_GRID = 20                         # the paper's grid of alpha: 0, 0.05, ..., 0.95
CLIP_RATIOS = tuple(1 - i / 20 for i in range(11))      # 1.0 down to 0.5, as in the paper's code
CLIP_TOKENS = 4096                  # calibration tokens the clipping search looks at per layer
NO_CLIP = re.compile(r"(q_proj|k_proj|query|key|c_attn|qkv)$")
# Folds of 1/s into the previous linear that the data flow allows but a hook cannot see: the
# layer's input is not that linear's output tensor itself (an activation or attention between).
LINEAR_FOLDS = {"down_proj": "up_proj", "o_proj": "v_proj"}


def weight_of(m: nn.Module) -> torch.Tensor:
    """(out, in) float32 copy of a nn.Linear's or a Conv1D's weight."""
    from part1_quantize_scratch import linear_weight
    return linear_weight(m).float().clone()


def set_weight(m: nn.Module, w: torch.Tensor) -> None:
    from transformers.pytorch_utils import Conv1D
    m.weight.data.copy_((w.t() if isinstance(m, Conv1D) else w).to(m.weight.dtype))


def scale_output_rows(m: nn.Module, s: torch.Tensor) -> None:
    """Divide a linear's output channels (its weight's rows, its bias) by s."""
    w = weight_of(m)
    set_weight(m, w / s[:, None])
    if m.bias is not None:
        m.bias.data.div_(s.to(m.bias.dtype))


class Group:
    """Linears of one block that read the same input, and what produces that input."""

    def __init__(self, names: list[str], prev_kind: str, prev_name: str | None):
        self.names, self.prev_kind, self.prev_name = names, prev_kind, prev_name   # norm/linear/explicit


@torch.no_grad()
def find_groups(block: nn.Module, inputs: BlockInputs) -> list[Group]:
    """Run the block once on one batch with hooks, and group its linears by input tensor."""
    from part1_quantize_scratch import is_linear
    linears = {n: m for n, m in block.named_modules() if is_linear(m)}
    seen_in, produced, hooks = {}, {}, []
    for name, m in block.named_modules():
        if name in linears:
            hooks.append(m.register_forward_pre_hook(lambda mod, a, name=name: seen_in.setdefault(name, a[0])))
        if name and (name in linears or is_norm(m)):
            hooks.append(m.register_forward_hook(lambda mod, a, out, name=name: produced.setdefault(name, out)))
    h, args, kwargs = next(iter(inputs))
    try:
        run_block(block, h, args, kwargs)
    finally:
        for hk in hooks:
            hk.remove()
    groups: list[Group] = []
    for name in linears:                                       # in the order they are declared
        x = seen_in.get(name)
        if x is None:
            continue
        group = next((g for g in groups if seen_in[g.names[0]] is x), None)
        if group is not None:
            group.names.append(name)
            continue
        src = next((p for p, out in produced.items() if out is x), None)
        if src is not None and is_norm(block.get_submodule(src)):
            groups.append(Group([name], "norm", src))
        elif src is not None and src in linears:
            groups.append(Group([name], "linear", src))
        else:
            parent, _, leaf = name.rpartition(".")
            prev = f"{parent}.{LINEAR_FOLDS[leaf]}" if leaf in LINEAR_FOLDS else None
            if prev in linears and linears[prev].weight.numel() and \
                    weight_of(linears[prev]).shape[0] == weight_of(linears[name]).shape[1]:
                groups.append(Group([name], "linear", prev))
            else:
                groups.append(Group([name], "explicit", None))
    return groups


@torch.no_grad()
def divide_norm_output(norm: nn.Module, s: torch.Tensor) -> None:
    """Make norm(x) come out divided by s, channel by channel, through the norm's own weight (and
    bias): w / s where the norm multiplies by its weight (LayerNorm, Llama's RMSNorm), (1 + w) /
    s - 1 where it multiplies by 1 + its weight (Gemma's RMSNorm). The two are told apart by what
    the norm does, run once with its weight (and bias) at zero: nothing comes out of the first."""
    w, b = norm.weight, getattr(norm, "bias", None)
    saved = [t.detach().clone() for t in (w, b) if t is not None]
    for t in (w, b):
        if t is not None:
            t.zero_()
    offset = bool(norm(torch.randn(2, w.shape[0], dtype=w.dtype, device=w.device)).abs().max() > 0)
    for t, v in zip([t for t in (w, b) if t is not None], saved):
        t.copy_(v)
    if offset:
        w.copy_(((1 + w.float()) / s.float() - 1).to(w.dtype))
    else:
        w.div_(s.to(w.dtype))
    if b is not None:
        b.div_(s.to(b.dtype))


def is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return "norm" in type(m).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1


@torch.no_grad()
def layer_inputs(block: nn.Module, inputs: BlockInputs, names: list[str]) -> dict[str, tuple]:
    """Per linear of `names`, over the calibration batch: the mean |x| per input channel, and a
    sample of its inputs (at most CLIP_TOKENS rows) for the clipping search."""
    total, count, sample = {}, dict.fromkeys(names, 0), {n: [] for n in names}

    def seen(name, x):
        x = x.reshape(-1, x.shape[-1]).float()
        total[name] = x.abs().sum(0) + total.get(name, 0)
        count[name] += x.shape[0]
        if sum(t.shape[0] for t in sample[name]) < CLIP_TOKENS:
            sample[name].append(x[:CLIP_TOKENS])
    inputs.watch(block, {n: (lambda x, n=n: seen(n, x)) for n in names})
    return {n: (total[n] / count[n], torch.cat(sample[n])[:CLIP_TOKENS]) for n in names}


@torch.no_grad()
def block_error(block: nn.Module, inputs: BlockInputs, reference: list[torch.Tensor]) -> float:
    err, n = 0.0, 0
    for (h, args, kwargs), ref in zip(inputs, reference):
        out = run_block(block, h, args, kwargs)
        err += float((out.float() - ref.float()).pow(2).sum())
        n += ref.numel()
    return err / n


@torch.no_grad()
def search_scale(block: nn.Module, inputs: BlockInputs, reference: list[torch.Tensor], group: Group,
                 x_mean: torch.Tensor, grid: Grid, n_grid: int = N_GRID) -> tuple[torch.Tensor, float, list]:
    """The per-input-channel scale s of a group, searched over alpha; returns s, alpha and the
    block output error at each alpha tried."""
    mods = [block.get_submodule(n) for n in group.names]
    originals = [weight_of(m) for m in mods]
    losses = []
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.clamp(min=1e-4).pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        for m, w in zip(mods, originals):
            ws = w * s[None, :]
            sc, zr = fit(grouped(ws, grid), grid.maxq)
            set_weight(m, fake_quantize(grouped(ws, grid), sc, zr, grid.maxq).reshape(ws.shape) / s[None, :])
        losses.append(block_error(block, inputs, reference))
    for m, w in zip(mods, originals):
        set_weight(m, w)
    best = min(range(n_grid), key=losses.__getitem__)
    alpha = best / n_grid
    s = x_mean.clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt(), alpha, losses


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, grid: Grid, chunk: int = 256) -> torch.Tensor:
    """Per (output row, group) clip ratio of CLIP_RATIOS that minimizes the layer's output error
    ||X_g (W_g - Q_g)^T||^2 on sampled inputs x (n, in). Returns (out, G)."""
    out, inp = w.shape
    gl = grid.group_len(inp)
    xg = x.float().reshape(x.shape[0], inp // gl, gl)                      # (n, G, g)
    best = torch.ones(out, inp // gl, device=w.device)
    for r0 in range(0, out, chunk):
        wc = w[r0:r0 + chunk].float().reshape(-1, inp // gl, gl)           # (c, G, g)
        ref = torch.einsum("ngk,cgk->ncg", xg, wc)
        best_err = None
        for ratio in CLIP_RATIOS:
            flat = wc.reshape(-1, gl)
            sc, zr = fit(flat, grid.maxq, ratio)
            q = fake_quantize(flat, sc, zr, grid.maxq).reshape(wc.shape)
            e = (torch.einsum("ngk,cgk->ncg", xg, q) - ref).pow(2).sum(0)   # (c, G)
            if best_err is None:
                best_err = e
                continue
            better = e < best_err
            best_err = torch.where(better, e, best_err)
            best[r0:r0 + chunk] = torch.where(better, torch.full_like(e, ratio), best[r0:r0 + chunk])
    return best


@torch.no_grad()
def awq_block(block: nn.Module, inputs: BlockInputs, grid: Grid, *, n_grid: int = N_GRID, clip: bool = True,
              dtype: torch.dtype = torch.float32) -> tuple[BlockInputs, list[dict]]:
    """Scale, clip and quantize one block in place; returns the next block's inputs and, per
    group, what was chosen."""
    from part1_quantize_scratch import set_module
    reference = [run_block(block, h, a, k) for h, a, k in inputs]          # the float block's outputs
    groups = find_groups(block, inputs)
    explicit: dict[str, torch.Tensor] = {}
    hooks = []
    report = []
    for group in groups:
        x_mean = layer_inputs(block, inputs, group.names[:1])[group.names[0]][0]
        s, alpha, losses = search_scale(block, inputs, reference, group, x_mean, grid, n_grid)
        for name in group.names:                                           # W diag(s)
            m = block.get_submodule(name)
            set_weight(m, weight_of(m) * s[None, :])
        if group.prev_kind == "norm":
            divide_norm_output(block.get_submodule(group.prev_name), s)
        elif group.prev_kind == "linear":
            scale_output_rows(block.get_submodule(group.prev_name), s)
        else:
            for name in group.names:                                       # x / s at run time
                explicit[name] = 1 / s
                hooks.append(block.get_submodule(name).register_forward_pre_hook(
                    lambda mod, a, inv=1 / s: (a[0] * inv.to(a[0].dtype), *a[1:])))
        report.append({"layers": group.names, "folded_into": group.prev_name or "kept explicitly",
                       "fold": group.prev_kind, "alpha": alpha, "block_mse_by_alpha": losses})
    next_inputs = inputs.run(block)                                        # scaled, not yet rounded
    clipped = [n for g in groups for n in g.names if clip and not NO_CLIP.search(n)]
    samples = layer_inputs(block, inputs, clipped) if clipped else {}     # all before any rounding
    for group, row in zip(groups, report):
        clips = []
        for name in group.names:
            m = block.get_submodule(name)
            w = weight_of(m)
            ratio: torch.Tensor | float = 1.0
            if name in samples:
                ratio = search_clip(w, samples[name][1], grid)
                clips.append(float(ratio.mean()))
                ratio = ratio.reshape(-1)
            q, sc, zr = round_to_nearest(w, grid, ratio)
            set_module(block, name, QuantLinear.from_codes(q, sc, zr, m.bias, grid, dtype, explicit.get(name)))
        row["mean_clip_ratio"] = sum(clips) / len(clips) if clips else 1.0
    for hk in hooks:
        hk.remove()
    return next_inputs, report
