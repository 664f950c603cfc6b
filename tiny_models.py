"""Tiny random models, a tokenizer and a text, made offline in a second or two.

The tests and every `--smoke` run use these instead of anything from the Hub.
The numbers they give mean nothing; they only show that the pipeline runs and
that its arithmetic is right.

    make_tiny_model(folder, arch="gpt2")    # GPT-2 style: Conv1D, tied wte/lm_head
    make_tiny_model(folder, arch="llama")   # Llama style: nn.Linear, RMSNorm, rotary
    make_tiny_model(folder, arch="gemma3")  # Gemma 3 style: one KV head, sliding windows, tied head
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there had been one all we can has their if would what so "
         "model weight quantization memory latency token layer block attention network scale zero "
         "point integer float precision error channel group bits byte matrix vector compute cache").split()


def synthetic_text(n_lines: int = 400, seed: int = 0) -> str:
    """Pseudo-English lines of 3..30 words, with blank lines and headings, like WikiText."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 25 == 0:
            lines.append(f" = {rng.choice(WORDS).title()} {rng.choice(WORDS)} = ")
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 30))]
        lines.append(" " + " ".join(words) + " .")
        if rng.random() < 0.3:
            lines.append("")
    return "\n".join(lines) + "\n"


def make_tokenizer(text: str, vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on `text`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def tiny_config(arch: str, vocab_size: int, n_ctx: int = 128, n_layer: int = 2, **overrides):
    from transformers import GPT2Config, LlamaConfig

    if arch == "gpt2":
        cfg = dict(vocab_size=vocab_size, n_positions=n_ctx, n_ctx=n_ctx, n_embd=32, n_layer=n_layer, n_head=2,
                   bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2Config(**{**cfg, **overrides})
    if arch == "llama":
        cfg = dict(vocab_size=vocab_size, max_position_embeddings=n_ctx, hidden_size=32,
                   intermediate_size=64, num_hidden_layers=n_layer, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        return LlamaConfig(**{**cfg, **overrides})
    if arch == "gemma3":                       # Gemma 3's shape: one KV head, sliding windows, tied head
        from transformers import Gemma3TextConfig
        cfg = dict(vocab_size=vocab_size, max_position_embeddings=n_ctx, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=n_layer, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                   query_pre_attn_scalar=64, sliding_window=16,
                   layer_types=["sliding_attention"] * (n_layer - 1) + ["full_attention"],
                   tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return Gemma3TextConfig(**{**cfg, **overrides})
    raise ValueError(f"unknown tiny arch '{arch}' (gpt2, llama or gemma3)")


def make_tiny_model(folder: str | Path, arch: str = "gpt2", seed: int = 0, n_ctx: int = 128,
                    text: str | None = None, **overrides) -> Path:
    """Save a tiny random causal LM of the given family, with its tokenizer, in folder."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = make_tokenizer(text or synthetic_text())
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer), n_ctx, **overrides)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger than the default init, so outputs differ visibly between tokens
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
