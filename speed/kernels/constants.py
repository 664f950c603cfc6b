"""The kernels' constants, defined once: every backend and every caller imports them here.

Tile sizes, the codes of the fused GEMV's norm, activation and weight formats, and the limits
that choose a backend (the pattern of llama.cpp's gguf-py constants.py).
"""
from __future__ import annotations

KERNEL_ROWS = 4          # CPU: the C++ kernel for at most this many activation rows
CHUNK_ROWS = 256         # CPU: output rows dequantized at a time above KERNEL_ROWS
GEMV_ROWS = 4            # CUDA: the GEMV kernels for at most this many activation rows
MM4_ROWS = 16            # CUDA: Part 1's 4-bit kernels up to this many rows (a decode batch; prefill: the reference)
GEMV_BLOCKS = (32, 64, 128)   # 4-bit block sizes the GEMVs take (each divides every BK below, fused too)


# -----------------------------------------------------------------------------
# The fused decode step's operations (speed.fused_step.FusedStep calls them; one token, batch 1)

NORM_LAYER, NORM_RMS = 1, 2                              # _fused_gemv's NORM
ACT_GELU_NEW, ACT_GELU_TANH, ACT_SILU_GATE = 1, 2, 3     # _fused_gemv's ACT
W_DENSE, W_INT8, W_4BIT = 0, 1, 2                        # _fused_gemv's WFMT
HEAD_PROGRAMS_PER_SM = 8                                 # the argmax head's programs on a GPU, per SM

# The tiles (BN rows, BK columns, warps) the fused step's two weight-reading kernels may use:
# Triton's autotuner picks one per shape by timing the kernel alone; speed.decoder.tune_tiles
# picks one per tile key (tile_key) by timing the whole decode step, and pins it in the step's tiles.
# BK >= 128 keeps whole 4-bit blocks; the larger head tiles keep as many bytes in flight for
# one-byte weights as the smaller ones do for two-byte weights. A fourth number splits K into
# that many parts, each its own program (split-K: fewer dependent loads per program, for a long
# K and few rows, as a down projection has; its last program adds the parts).
TILE_CHOICES = {
    "fused_gemv": ((1, 1024, 4), (2, 1024, 4), (4, 1024, 8), (1, 2048, 4), (2, 2048, 8), (1, 4096, 8), (2, 512, 4),
                   (4, 256, 4), (4, 512, 4), (8, 128, 4), (8, 256, 4), (8, 512, 8), (16, 128, 4), (32, 128, 8),
                   (2, 1024, 4, 2), (2, 512, 4, 4), (4, 512, 4, 2), (4, 256, 4, 4), (8, 256, 4, 2)),
    "argmax_head": ((4, 256, 2), (8, 256, 4), (16, 256, 4), (32, 256, 8), (8, 512, 4), (16, 512, 8), (4, 1024, 4),
                    (8, 1024, 8), (16, 128, 4), (32, 128, 4), (32, 512, 8), (64, 256, 8), (64, 128, 4)),
}


def split_of(tile: tuple) -> int:
    """A fused-GEMV tile's split-K parts: its fourth number, 1 where it has three."""
    return tile[3] if len(tile) > 3 else 1


L2_ROWS = 4          # the weights-from-L2 diagnostic: each weight read from its first L2_ROWS rows
BARRIER_SPINS = 1 << 22  # a grid barrier's polls before it gives up (seconds; never reached when all programs fit)
