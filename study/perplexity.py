"""Perplexity, corpus-level and token-weighted: sliding windows over one tokenized text.

The text is tokenized once and scored with windows of max_length tokens moved by stride;
every token after the first is scored exactly once, with all the context its window allows:
ppl = exp(sum of NLL / number of scored tokens). per_line_perplexity is the per-sample mean.
"""
from __future__ import annotations

import math
import statistics
import sys

import torch
import torch.nn.functional as F

from results import UserError
from study.loading import input_device, model_context

# -----------------------------------------------------------------------------
# Perplexity

def window_plan(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows as (begin, end, score_from). Window inputs are ids[begin:end]
    (at most max_length tokens) and predict the targets ids[begin+1:end+1]; the
    window scores the targets at positions score_from..end. Windows start every
    `stride` tokens; each scores only targets no earlier window scored, so every
    position 1..n_tokens-1 is scored exactly once (position 0 has no context), with
    the most context any window gives it. stride == max_length is the usual
    non-overlapping evaluation, and then no token is lost at window edges."""
    plan, last = [], 0                       # last: the last target position scored so far
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + max_length, n_tokens - 1)
        plan.append((begin, end, last + 1))
        last = end
        if end == n_tokens - 1:
            break
    return plan


def check_windows(max_length: int, stride: int, context: int | None) -> None:
    if max_length < 2:
        raise UserError(f"--max-length must be at least 2 (got {max_length})")
    if context is not None and max_length > context:
        raise UserError(f"--max-length {max_length} is longer than the model's context of {context} tokens")
    if stride <= 0 or stride > max_length:
        raise UserError(f"--stride must be in 1..max-length ({max_length}); got {stride}")


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood in float32. logits (..., V), targets (...)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(targets.shape)


@torch.no_grad()
def perplexity(model, input_ids: torch.Tensor, max_length: int, stride: int,
               progress: bool = True) -> dict:
    """Corpus-level, token-weighted sliding-window perplexity of input_ids (1, N)."""
    check_windows(max_length, stride, model_context(model.config))
    dev = input_device(model)  # under a device_map, the embedding's device
    ids = input_ids[0]
    plan = window_plan(ids.numel(), max_length, stride)
    nll_sum, n_scored, per_window = 0.0, 0, []
    from tqdm.auto import tqdm
    for begin, end, score_from in tqdm(plan, desc="perplexity", unit="win", disable=not progress,
                                       file=sys.stderr):
        window = ids[begin:end + 1].to(dev)                         # (T+1,) inputs and targets
        logits = model(window[None, :-1], use_cache=False).logits[0]  # (T, V): row j predicts window[j+1]
        first = score_from - begin - 1                             # row that predicts score_from
        nll = token_nll(logits[first:], window[first + 1:])
        window_sum = nll.double().sum().item()
        nll_sum += window_sum
        n_scored += nll.numel()
        per_window.append(window_sum)
    mean_nll = nll_sum / n_scored
    if not math.isfinite(mean_nll) or mean_nll > 700:      # exp() would overflow: no number to report
        half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16) if hasattr(model, "parameters") \
            else False
        raise UserError(f"the model's loss is not finite ({mean_nll:.4g}): its weights or activations hold NaN "
                        f"or infinity" + (" (in half precision, try --dtype float32)" if half else ""))
    return {"ppl": math.exp(mean_nll), "mean_nll": mean_nll, "n_tokens_scored": n_scored,
            "n_tokens_total": ids.numel(), "n_windows": len(plan), "max_length": max_length,
            "stride": stride, "aggregation": "corpus-level, token-weighted: exp(sum NLL / tokens)",
            # the windows one by one, in order (window_plan): what a bootstrap over windows resamples
            "windows": {"nll_sum": per_window, "n_scored": [end - score_from + 1 for _, end, score_from in plan]}}


TOKENIZER_FREE_DEFINITION = ("bits_per_byte: sum of NLL / ln 2 / UTF-8 bytes of the scored text; word_perplexity: "
                             "exp(sum of NLL / whitespace-separated words of the scored text) (lm-eval's wikitext "
                             "measures); the scored text is what the scored tokens add to the first one's decoding")


def tokenizer_free(ppl: dict, tokenizer, input_ids: torch.Tensor) -> dict:
    """Measures that compare models with different tokenizers, from perplexity()'s block: the
    same total NLL over the bytes, and over the words, of the text the scored tokens spell.
    The scored tokens are every one after the first (window_plan), so that text is the whole
    decoding less the first token's: its bytes and words are counted as that difference.
    With perplexity()'s windows, each window's bytes too (windows.n_bytes, in order: where each
    window's text lies in the file), which pair two models' windows by the bytes they scored."""
    ids = input_ids[0].tolist()                 # special tokens (a BOS) spell nothing
    whole, first = (tokenizer.decode(t, skip_special_tokens=True) for t in (ids, ids[:1]))
    n_bytes = len(whole.encode("utf-8")) - len(first.encode("utf-8"))
    n_words = len(whole.split()) - len(first.split())
    nll_sum = ppl["mean_nll"] * ppl["n_tokens_scored"]
    out = {"bits_per_byte": nll_sum / math.log(2) / n_bytes, "word_perplexity": math.exp(nll_sum / n_words),
           "n_bytes": n_bytes, "n_words": n_words, "tokenizer_free_definition": TOKENIZER_FREE_DEFINITION}
    if ppl.get("windows"):
        plan = window_plan(len(ids), ppl["max_length"], ppl["stride"])
        out["windows"] = {**ppl["windows"], "n_bytes": window_bytes(tokenizer, ids, plan, n_bytes)}
    return out


WINDOW_BYTES_MARGIN = 64       # tokens of context decoded before a boundary (a tokenizer's decoding is local)


def window_bytes(tokenizer, ids: list[int], plan: list[tuple[int, int, int]], n_bytes: int) -> list[int]:
    """UTF-8 bytes of the text each window's scored tokens add (window_plan's windows, in order):
    the differences of the decoded length at the windows' ends. The length at a boundary k is
    counted from a short span before it, decoded with and without the tokens up to k, which
    is exact where decoding is local; a boundary that splits a character (the span's decoding
    ends in U+FFFD), and any total that does not add up to n_bytes, is decoded from the start."""
    def prefix_bytes(k: int) -> int:                       # bytes of decode(ids[:k]), exactly
        return len(tokenizer.decode(ids[:k], skip_special_tokens=True).encode("utf-8"))

    ends = [end + 1 for _, end, _ in plan]                 # ids[:k] spells the text up to a window's last target
    cuts, prev = [prefix_bytes(1)], 1
    for k in ends:
        lo = max(0, prev - WINDOW_BYTES_MARGIN)
        head = tokenizer.decode(ids[lo:prev], skip_special_tokens=True)
        span = tokenizer.decode(ids[lo:k], skip_special_tokens=True)
        if lo == 0:                                        # the span is the prefix itself
            cuts.append(len(span.encode("utf-8")))
        elif head.endswith("\ufffd") or not span.startswith(head):
            cuts.append(prefix_bytes(k))
        else:
            cuts.append(cuts[-1] + len(span.encode("utf-8")) - len(head.encode("utf-8")))
        prev = k
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    if sum(sizes) != n_bytes:                                # not local after all: every boundary from the start
        cuts = [prefix_bytes(1)] + [prefix_bytes(k) for k in ends]
        sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    return sizes


KLD_DEFINITION = ("KL(P_reference || P_model) of the next-token distribution, in nats, per scored token of the "
                  "perplexity windows (llama.cpp's KL-divergence statistics); top-1: the two argmax tokens agree")


@torch.no_grad()
def divergence(model, reference, input_ids: torch.Tensor, max_length: int, stride: int,
               progress: bool = True) -> dict:
    """How far model's next-token distributions are from reference's on the same windows as
    perplexity(): per scored token, KL(P_ref || P_model); its mean, median and 99th percentile,
    and how often the two top-1 tokens agree. reference is the unquantized model."""
    dev, ref_dev = input_device(model), input_device(reference)
    ids = input_ids[0]
    plan = window_plan(ids.numel(), max_length, stride)
    klds, agree = [], 0
    from tqdm.auto import tqdm
    for begin, end, score_from in tqdm(plan, desc="divergence", unit="win", disable=not progress,
                                       file=sys.stderr):
        window = ids[begin:end]
        first = score_from - begin - 1
        logp = F.log_softmax(model(window[None].to(dev), use_cache=False).logits[0, first:].float(), dim=-1)
        logr = F.log_softmax(reference(window[None].to(ref_dev), use_cache=False).logits[0, first:].float(),
                             dim=-1).to(logp.device)
        klds.append((logr.exp() * (logr - logp)).sum(-1).clamp(min=0).double().cpu())
        agree += int((logp.argmax(-1) == logr.argmax(-1)).sum())
    kld = torch.cat(klds)
    return {"kld_mean": float(kld.mean()), "kld_median": float(kld.median()),
            "kld_p99": float(torch.quantile(kld, 0.99)) if kld.numel() <= 2**24 else
            float(kld.sort().values[int(0.99 * (kld.numel() - 1))]),
            "top1_agreement": agree / kld.numel(), "n_tokens_scored": int(kld.numel()),
            "max_length": max_length, "stride": stride, "definition": KLD_DEFINITION}


@torch.no_grad()
def per_line_perplexity(model, tokenizer, text: str, n_lines: int = 3000, max_length: int = 1024,
                        max_tokens: int | None = None, batch_size: int = 16,
                        progress: bool = True) -> dict:
    """The sample report's aggregation, kept for comparison only: the plain mean of
    per-line perplexities over the first n_lines non-empty lines (each line scored
    alone, cut to max_length tokens). Short lines weigh as much as long ones, so it
    is not a corpus perplexity. Lines of one token have nothing to score and are
    skipped; with max_tokens, lines stop once that many tokens were used."""
    lines = [ln for ln in text.splitlines() if ln.strip()][:n_lines]
    encoded, used = [], 0
    for line in lines:
        ids = tokenizer(line).input_ids[:max_length]
        if max_tokens is not None and used + len(ids) > max_tokens:
            break
        used += len(ids)
        if len(ids) >= 2:
            encoded.append(ids)
    dev = input_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths batch well
    ppls = [0.0] * len(encoded)
    from tqdm.auto import tqdm
    for start in tqdm(range(0, len(order), batch_size), desc="per-line", unit="batch",
                      disable=not progress, file=sys.stderr):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):                              # right padding
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        logits = model(ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (B, W-1, V)
        nll = token_nll(logits, ids[:, 1:]) * mask[:, 1:]
        per_line = nll.double().sum(1) / mask[:, 1:].sum(1)
        for row, i in enumerate(idx):
            x = per_line[row].item()
            ppls[i] = math.exp(x) if x < 700 else math.inf     # exp() overflows a float past ~709
    finite = bool(ppls) and all(math.isfinite(p) for p in ppls)
    return {"mean_of_line_ppl": statistics.fmean(ppls) if finite else None,   # None: no line, or one overflows
            "median_of_line_ppl": statistics.median(ppls) if ppls and finite else None,
            "n_lines_overflowing": sum(not math.isfinite(p) for p in ppls),
            "n_lines": len(ppls), "n_lines_asked": n_lines, "max_length": max_length,
            "label": "per-sample aggregation of the sample report (mean of per-line perplexities); "
                     "not comparable with the corpus perplexity"}
