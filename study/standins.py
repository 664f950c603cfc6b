"""The stand-in models of the committed results: what each one is, said once.

scripts/make_standins.py builds them into folders of these names; scripts/standin_study.py
labels every run with the stand-in's NOTE (--stand-in, stored as model.stand_in) and marks the
random ones (--random-weights); the report reads what a stand-in's own rounding does to its
numbers from ORIGIN, by the record's model id (a local folder's name), never from the words of
its label. No torch: readers import it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StandIn:
    folder: str               # its folder under models/ (the record's model.id)
    note: str                 # the --stand-in label of its runs
    real: bool                # pretrained: its perplexity means something (else random weights)
    origin: str | None        # the GGUF type its float32 weights were dequantized from (None: random)


def _gpt2_size(size: str) -> StandIn:
    folder = f"gpt2-{size}-random"
    return StandIn(folder, f"{folder} (GPT-2 {size} shapes, random weights) stands in for gpt2-{size} for memory "
                           "and latency; its perplexity means nothing", False, None)


STANDINS = {s.folder: s for s in (
    StandIn("smollm2-135m", "smollm2-135m (SmolLM2-135M-Instruct, dequantized from Q4_1) stands in for gpt2 for "
                            "perplexity", True, "Q4_1"),
    StandIn("gemma3-270m", "gemma3-270m (Gemma 3 270M base, dequantized from Q4_K_M: a milder rounding origin than "
                           "smollm2's), a second real model", True, "Q4_K_M"),
    StandIn("gpt2-random", "gpt2-random (GPT-2 small shapes, random weights) stands in for gpt2 for memory and "
                           "latency; its perplexity means nothing", False, None),
    *(_gpt2_size(size) for size in ("medium", "large", "xl")),
    StandIn("gemma3-270m-random", "gemma3-270m-random (Gemma 3 270M shapes, random weights, GPT-2's tokenizer) "
                                  "stands in for gemma3-270m for GPU latency; its perplexity means nothing", False,
            None),
    StandIn("llama-1b-random", "llama-1b-random (Llama 3.2 1B shapes, random weights, GPT-2's tokenizer) stands in "
                               "for Llama-3.2-1B for memory and latency; its perplexity means nothing", False, None),
)}


def origin(rec: dict) -> str | None:
    """The GGUF type a record's stand-in was dequantized from, or None (a Hub model, a folder
    this study did not build, or random weights)."""
    model = rec.get("model") or {}
    s = STANDINS.get(str(model.get("id")))
    return s.origin if s is not None and model.get("local") else None


def requantizes_origin(rec: dict) -> bool:
    """A run that rounds a stand-in back to the very format its float32 weights came from (a
    GGUF of its origin type: llama.cpp picks the same type for each tensor, on the same grid).
    It nearly restores the origin's codes, so it measures the origin, not the scheme: readers
    show it apart and leave it off the frontier."""
    gguf_type = ((rec.get("method") or {}).get("settings") or {}).get("gguf_type")
    return gguf_type is not None and gguf_type == origin(rec)
