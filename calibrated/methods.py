"""The three methods on one grid, applied to a whole model block by block: round-to-nearest,
GPTQ and AWQ. Each swaps every linear layer inside the decoder blocks for a QuantLinear (the
embeddings, the output layer and the norms stay as they were, as in Part 1's 4-bit runs) and
returns what it chose, for the results record.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from calibrated import awq as awq_mod
from calibrated.capture import BlockInputs, capture
from calibrated.gptq import BLOCK_SIZE, DAMP, Hessian, gptq, proxy_error
from calibrated.quantizer import Grid, QuantLinear, dequantize, round_to_nearest

METHODS = ("rtn", "gptq", "awq")
CALIBRATED = ("gptq", "awq")


@dataclass(frozen=True)
class Options:
    """Every knob of the three methods (the ones a method does not use are ignored)."""
    damp: float = DAMP
    block_size: int = BLOCK_SIZE
    act_order: bool = False
    awq_grid: int = awq_mod.N_GRID
    awq_clip: bool = True
    batch_size: int = 8


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    from part1_quantize_scratch import is_linear
    return {n: m for n, m in block.named_modules() if is_linear(m)}


def check_model(model: nn.Module, grid: Grid) -> int:
    """Every linear of every block fits the grid (UserError if not); returns the widest input."""
    from part1_quantize_scratch import decoder_blocks, linear_weight
    from results import UserError
    _, blocks = decoder_blocks(model)
    widest = 0
    for i, block in enumerate(blocks):
        for name, m in block_linears(block).items():
            out_f, in_f = linear_weight(m).shape
            widest = max(widest, in_f)
            try:
                grid.check(in_f, f"block {i} {name}")
            except ValueError as e:
                raise UserError(str(e)) from None
    return widest


@torch.no_grad()
def quantize(model: nn.Module, method: str, grid: Grid, windows: torch.Tensor | None, options: Options,
             progress: bool = True) -> dict:
    """Quantize model's decoder blocks in place with method on grid; windows (n, L) are the
    calibration token ids (unused by rtn). Returns the per-block report and the time taken."""
    from tqdm.auto import tqdm

    from part1_quantize_scratch import decoder_blocks, linear_weight, set_module
    dtype = next(model.parameters()).dtype
    _, blocks = decoder_blocks(model)
    start = time.perf_counter()
    inputs = capture(model, blocks, windows, options.batch_size) if method in CALIBRATED else None
    report = []
    for i, block in enumerate(tqdm(blocks, desc=method, unit="block", file=sys.stderr, disable=not progress)):
        if method == "rtn":
            for name, m in block_linears(block).items():
                q, s, z = round_to_nearest(linear_weight(m).float(), grid)
                set_module(block, name, QuantLinear.from_codes(q, s, z, m.bias, grid, dtype))
            continue
        if method == "awq":
            inputs, groups = awq_mod.awq_block(block, inputs, grid, n_grid=options.awq_grid, clip=options.awq_clip,
                                               dtype=dtype)
            report.append({"block": i, "groups": groups})
            continue
        layers = gptq_block(block, inputs, grid, options, dtype)
        report.append({"block": i, "layers": layers})
        inputs = inputs.run(block)                    # the quantized block's outputs feed the next
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": seconds, "blocks": report}


def gptq_block(block: nn.Module, inputs: BlockInputs, grid: Grid, options: Options, dtype) -> list[dict]:
    """Hessians of every linear of the block from one pass over its inputs, then GPTQ on each."""
    from part1_quantize_scratch import linear_weight, set_module
    linears = block_linears(block)
    hessians = {name: Hessian(linear_weight(m).shape[1], linear_weight(m).device) for name, m in linears.items()}
    inputs.watch(block, {name: h.add for name, h in hessians.items()})
    rows = []
    for name, m in linears.items():
        w = linear_weight(m).float()
        hess = hessians[name].h
        q, s, z = gptq(w, hess, grid, damp=options.damp, block_size=options.block_size, act_order=options.act_order)
        w_gptq = dequantize(q, s, z)
        rows.append({"layer": name, "proxy_error": proxy_error(w, w_gptq, hess),
                     "proxy_error_rtn": proxy_error(w, dequantize(*round_to_nearest(w, grid)), hess)})
        set_module(block, name, QuantLinear.from_codes(q, s, z, m.bias, grid, dtype))
    return rows
