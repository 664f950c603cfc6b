"""Steps as programs: static buffers, run eagerly or replayed from a CUDA graph.

FastDecoder runs greedy decode and prefill over a static-cache model (speed/static_cache.py),
each step captured once as a CUDA graph; tune_tiles picks the fused step's tiles by timing the
whole step.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

import evaluate as ev
from speed import kernels
from speed.fused_step import FusedStep
from speed.static_cache import static_model

# -----------------------------------------------------------------------------
# 3. Steps as programs: static buffers, run eagerly or replayed from a CUDA graph

class FastDecoder:
    """Greedy decode and prefill over a static-cache model, each step captured as a CUDA graph
    (graphs=True, CUDA only) or run eagerly on the same buffers (graphs=False). fused=True:
    the decode step is FusedStep's kernels (the prompt pass and the prefill stay as they are);
    compiled=MODE: the decode step under torch.compile(mode=MODE), as gpt-fast does.
    batch=B > 1: B prompts of one length decoded in step (the model's modules see B rows; the
    fused step and the prefill are batch 1 only); tokens is then (new_tokens, B)."""

    def __init__(self, model, prompt_tokens: int, new_tokens: int, prefill_tokens: int = 0, graphs: bool = True,
                 no_graph_reason: str | None = None, fused: bool = False, compiled: str | None = None,
                 batch: int = 1):
        if batch > 1 and (fused or prefill_tokens):
            raise ValueError("the fused step and the prefill run at batch 1 only")
        self.net = static_model(model, max(prompt_tokens + new_tokens, prefill_tokens), batch)
        dev = self.net.device
        self.graphs = graphs and dev.type == "cuda"
        self.P, self.n, self.S, self.B = prompt_tokens, new_tokens, prefill_tokens, batch
        self.prompt = torch.zeros(batch, prompt_tokens, dtype=torch.long, device=dev)
        self.prefill_ids = torch.zeros(1, max(prefill_tokens, 1), dtype=torch.long, device=dev)
        self.next = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # the tokens fed to the next step
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)          # their position (shared)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)         # how many tokens made
        self.tokens = torch.zeros(new_tokens, *((batch,) if batch > 1 else ()), dtype=torch.long, device=dev)
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
        nxt = logits[:, -1].argmax(-1)                                    # (B,)
        self.tokens.index_copy_(0, self.step, nxt.view(self.tokens[:1].shape))
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
        step than this decoder's, e.g. weights_from_l2's). prompt: (P,) or (B, P)
        -> (new_tokens,), or (new_tokens, B) at batch B > 1"""
        decode = decode or self.programs["decode"]
        self.prompt.copy_(prompt.reshape(self.B, -1))
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
    """Pin a tile (dec.fused.tiles) for each weight-reading kernel of dec's fused step, chosen
    by timing the whole decode step as the bench runs it (one CUDA graph, PDL between the
    kernels), not the kernel alone as Triton's autotuner does. One tile key at a time, in the
    step's order, the others at their current tile: the step is captured once per candidate
    tile (kernels.TILE_CHOICES), then the candidates run round-robin `rounds` times (the prompt
    pass, then new_tokens - 1 decode steps, timed with CUDA events); the lowest median wins.
    Call before dec.capture(). -> {layer (block 0's, or lm_head): {"layers", "tile" [BN, BK,
    warps] (and split-K parts, where more than one), "step_ms": {tile_label: median ms per decode step}}}"""
    step, n = dec.fused, dec.n - 1
    dec.prompt.copy_(prompt.reshape(1, -1))
    chosen = {}
    for key, layers in step.tile_keys.items():
        graphs = {}
        for tile in kernels.TILE_CHOICES[key[0]]:
            step.tiles[key] = tile
            try:
                on_side_stream([dec.reset, step])                  # compiles the tile (before capture)
            except Exception:                                     # a tile this GPU cannot run (resources)
                torch.cuda.synchronize()
                continue
            graphs[tile] = dec._graph(step)
        times = time_steps({tile: (dec.start, g.replay) for tile, g in graphs.items()}, n, rounds)
        median = {tile: t["median"] for tile, t in times.items()}
        best = min(median, key=median.get)
        step.tiles[key] = best
        chosen[layers[0].split(".", 1)[-1]] = {
            "layers": len(layers), "tile": list(best),
            "step_ms": {tile_label(tile): round(ms, 5) for tile, ms in median.items()}}
        del graphs
    dec.reset()
    return chosen


def tile_label(tile: tuple) -> str:
    """'BNxBK/warps', and '/sS' for a split-K tile of S parts (kernels.TILE_CHOICES)."""
    bn, bk, w = tile[:3]
    return f"{bn}x{bk}/{w}" + (f"/s{kernels.split_of(tile)}" if kernels.split_of(tile) > 1 else "")


@torch.no_grad()
def fused_step_logits(dec: FastDecoder, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy with dec's fused decode step, reading each decode step's logits (FusedStep.logits)
    after it runs. -> tokens (new_tokens,), logits (new_tokens - 1, vocab) float32: row k-1 is
    decode step k's, which read tokens[k-1] at position prompt_tokens + k - 1 and made tokens[k]."""
    dec.prompt.copy_(prompt.reshape(1, -1))
    dec.step.zero_()
    dec.programs["prompt"]()
    rows = []
    for _ in range(dec.n - 1):
        dec.programs["decode"]()
        rows.append(dec.fused.logits())
    return dec.tokens.clone(), torch.stack(rows)


@torch.no_grad()
def teacher_logits(model, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """model's logits for the same steps as fused_step_logits, in one forward over the prompt
    and the tokens made: (new_tokens - 1, vocab) float32."""
    seq = torch.cat([prompt.reshape(-1), tokens[:-1]])[None].to(model.device)     # (1, P + n - 1)
    p = prompt.numel()
    return model(seq).logits[0, p:].float()


def logit_agreement(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """got's logits against ref's, step by step (both (steps, vocab)): the largest absolute
    difference, KL(ref || got) in nats, and whether the most likely tokens agree."""
    got, ref = got.float().cpu(), ref.float().cpu()
    diff = (got - ref).abs().amax(-1)                                              # (steps,)
    lr, lg = ref.log_softmax(-1), got.log_softmax(-1)
    kld = (lr.exp() * (lr - lg)).sum(-1).clamp_min(0)                              # (steps,)
    top = got.argmax(-1) == ref.argmax(-1)
    return {"steps": len(got), "max_abs_logit_diff": float(diff.max()), "kld_mean": float(kld.mean()),
            "kld_max": float(kld.max()), "top1_agree": int(top.sum()),
            "per_step_max_abs_diff": [round(float(v), 5) for v in diff],
            "per_step_kld": [float(f"{float(v):.4g}") for v in kld]}


def leading_equal(got: torch.Tensor, ref: torch.Tensor) -> int:
    """How many leading greedy tokens of got equal ref's."""
    return int((got == ref).long().cumprod(0).sum())


def generate_tokens(model, tokenizer, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The same model's own greedy generate(): the reference for the fast path's tokens."""
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                         generation_config=ev.greedy_config(tokenizer, new_tokens))
    return out[0, prompt.shape[1]:]


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


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
