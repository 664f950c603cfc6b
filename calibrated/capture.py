"""The inputs of each decoder block, captured once from the model and carried block to block.

GPTQ and AWQ quantize one decoder block at a time, on the activations that reach it. The
model is run once on the calibration windows with its first block replaced by a catcher that
stores the block's arguments (the hidden states and whatever the model passes beside them:
attention mask, position embeddings) and stops the forward. Each block is then run by itself
on the stored inputs, and its outputs are the next block's inputs. Nothing here depends on the
architecture beyond `decoder_blocks()`, the ModuleList Part 1's swapper finds.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class _Stop(Exception):
    """Raised by the catcher once it holds the first block's inputs."""


class _Catcher(nn.Module):
    """Stands in for block 0, stores what it is called with, and stops the forward. Attribute
    reads it does not know (a layer's attention_type, say) go to the block it replaces."""

    def __init__(self, block: nn.Module, store: list):
        super().__init__()
        self.block, self.store = block, store

    def forward(self, hidden_states, *args, **kwargs):
        self.store.append((hidden_states, args, kwargs))
        raise _Stop

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)


class BlockInputs:
    """The inputs of one decoder block, batch by batch: hidden states (b, L, d) and the
    arguments the model passed beside them."""

    def __init__(self, batches: list[tuple[torch.Tensor, tuple, dict]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def hidden(self) -> torch.Tensor:
        """Every batch's hidden states, concatenated: (n, L, d)."""
        return torch.cat([h for h, _, _ in self.batches])

    @torch.no_grad()
    def watch(self, block: nn.Module, seen: dict) -> None:
        """Run the block on every batch with seen[name](x) called on the input x of each
        submodule named in seen (a linear's input, say); the outputs are dropped."""
        hooks = [block.get_submodule(name).register_forward_pre_hook(lambda mod, a, f=f: f(a[0]))
                 for name, f in seen.items()]
        try:
            for h, args, kwargs in self.batches:
                run_block(block, h, args, kwargs)
        finally:
            for hk in hooks:
                hk.remove()

    @torch.no_grad()
    def run(self, block: nn.Module) -> "BlockInputs":
        """The block's outputs on these inputs, as the next block's inputs."""
        return BlockInputs([(run_block(block, h, args, kwargs), args, kwargs) for h, args, kwargs in self.batches])


def run_block(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture(model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor, batch_size: int = 8) -> BlockInputs:
    """Block 0's inputs for calibration windows (n, L) of token ids."""
    from study.loading import input_device
    dev = input_device(model)
    store: list = []
    first = blocks[0]
    blocks[0] = _Catcher(first, store)
    try:
        for i in range(0, windows.shape[0], batch_size):
            try:
                model(windows[i:i + batch_size].to(dev), use_cache=False)
            except _Stop:
                pass
    finally:
        blocks[0] = first
    if len(store) != -(-windows.shape[0] // batch_size):
        raise RuntimeError(f"{type(model).__name__} did not call its first decoder block once per batch")
    return BlockInputs([(h, args, {k: v for k, v in kw.items() if k not in ("past_key_values", "past_key_value")})
                        for h, args, kw in store])
