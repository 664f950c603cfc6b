"""How a model is measured: EvalConfig, the one place where every default is declared.

The CLI flags, latency() and the benches read their defaults from DEFAULTS, so that every
method of one comparison is measured the same way. No torch: readers import it too.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from results import UserError

MAX_LENGTH_CAP = 1024       # the default window: min(model context, this)


STRIDE_CAP = 512            # the default stride: min(this, window)


def default_stride(max_length: int) -> int:
    return min(STRIDE_CAP, max_length)


@dataclass(frozen=True)
class EvalConfig:
    """How a model is measured; the same for every method of one comparison. The one place
    where each default is declared: the CLI flags, latency() and the benches read them from
    DEFAULTS. Frozen: resolve() and dataclasses.replace() return a new config."""
    max_length: int | None = None      # None: min(model context, MAX_LENGTH_CAP)
    stride: int | None = None          # None: default_stride(max_length)
    max_tokens: int | None = None
    per_line: int = 3000               # 0 skips the per-sample aggregation
    prefill_tokens: int = 512
    prompt_tokens: int = 32
    new_tokens: int = 128
    repeats: int = 10
    warmup: int = 2
    skip_latency: bool = False
    skip_disk: bool = False

    def resolve(self, context: int | None) -> "EvalConfig":
        """A copy with the window defaults filled from the model's context."""
        length = self.max_length if self.max_length is not None else min(context or MAX_LENGTH_CAP, MAX_LENGTH_CAP)
        return replace(self, max_length=length,
                       stride=self.stride if self.stride is not None else default_stride(length))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EvalConfig":
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__ if hasattr(args, k)})


DEFAULTS = EvalConfig()


@dataclass(frozen=True)
class RunOptions(EvalConfig):
    """What one measuring run of any script shares with the others (evaluate.py, the three
    parts, explore_calibrated.py): EvalConfig's settings plus the model, the text and where the
    results go. The command line spreads them as flags (evaluate.add_model_args and
    add_eval_args, with these defaults); each main() takes them as one run=RunOptions(...)
    beside the script's own flags, and study.cli.call() makes one from a command line's."""
    model: str = "gpt2"                # Hub id or local folder
    dtype: str = "float32"             # the baseline's weights and activations
    device: str = "auto"               # auto: cuda if present
    device_map: str | None = None      # 'auto' shards across GPUs (accelerate)
    stand_in: str | None = None        # which model this one stands in for, shown beside its numbers
    random_weights: bool = False       # its perplexity means nothing
    threads: int | None = None         # torch CPU threads; None: torch's choice
    dataset: str = "wikitext2"         # the Hub test split to score
    text_file: str | None = None       # a local text instead
    results_dir: str = "results"
    out: str | None = None             # an exact results file instead of a name from the settings
    quiet: bool = False                # no progress bars
    smoke: bool = False                # a tiny random model made on the spot


RUN_DEFAULTS = RunOptions()

# The tokens a bench tokenizes for its timing inputs: enough for the default prefill (512) and
# prompt + new tokens (32 + 128) many times over, so any timing flag a context allows fits.
TIMING_TEXT_TOKENS = 4096


def check_latency_fits(cfg: "EvalConfig", context: int | None) -> None:
    """The latency lengths against the model's context, before the perplexity pass, not after."""
    if cfg.skip_latency or context is None:
        return
    for what, n in (("--prefill-tokens", cfg.prefill_tokens),
                    ("--prompt-tokens + --new-tokens", cfg.prompt_tokens + cfg.new_tokens)):
        if n > context:
            raise UserError(f"latency: {what} ({n}) is longer than the model's context of {context} tokens "
                            f"(shorten it, or --skip-latency)")
