"""The CPU bench: Part 1 on its static-cache path beside llama.cpp, same model, same threads.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import evaluate as ev
import results
from speed.decoder import FastDecoder, generate_tokens, leading_equal
from speed.fused_step import fused_architecture

# -----------------------------------------------------------------------------
# 4b. The CPU bench: Part 1 on its static-cache path beside llama.cpp, same model, same threads

CPU_METHODS = ("fp32", "scratch-int8-fast", "bnb-int8", "bnb-nf4", "gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_0")
CPU_PATH = ("static KV cache, eager (no CUDA graphs on a CPU), one forward per token, argmax in place: "
            "generate()'s per-token work is gone; Part 1's int8 layers read int8 in a threaded C++ kernel")
CPU_FUSED_PATH = ("the static path with the decode step as FusedStep's C++ kernels, the same five calls a block "
                  "as on CUDA (norm+QKV GEMV, attention over the filled cache, out-projection GEMV+residual, "
                  "norm+up GEMV+activation, down GEMV+residual; final norm+output layer+argmax), float32 and "
                  "Part 1's int8 rows read in place, other layers as the model's modules; the prompt pass "
                  "stays on the static path")


def cpu_method(name: str, model_id: str):
    """A Hugging Face method on the CPU, fp32 activations."""
    import part1_quantize_scratch as p1
    if name.startswith("bnb-"):
        import part2_bnb_nf4 as p2
        return p2.load_bnb(model_id, name[4:], "cpu", "float32")[0]
    m = ev.load_model(model_id, "float32", "cpu")[0]
    if name == "scratch-int8-fast":
        p1.quantize_model(m, "whole", 8, "per_channel")
        p1.set_path(m, "fast")
    return m


@torch.no_grad()
def cpu_bench(model_id: str, tokenizer, ids: torch.Tensor, methods: list[str], prefill_tokens: int,
              prompt_tokens: int, new_tokens: int, repeats: int, warmup: int, gguf_dir: str,
              progress: bool = True) -> dict:
    """Every method round-robin on this CPU: Hugging Face methods on the static-cache path
    (fp32 also through generate(), for scale), llama.cpp's GGUF files of the same model
    (made here by bonus_gguf.py's converter and quantizer), the same prompt, new tokens and
    threads. Decode ratios against fp32 on the static path."""
    import bonus_gguf as bg
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    prefill_ids, prompt = ev.timing_inputs(ids, prefill_tokens, prompt_tokens, cpu)
    timed, rows = {}, {}
    for name in methods:
        if name.startswith("gguf-"):
            t = name[5:].upper()
            folder = bg.local_model_dir(model_id)
            path = bg.make_gguf_files(folder, Path(gguf_dir), [t], bg.gguf_stem(model_id, folder), True)[t]
            with bg.native_output_hidden(not progress):
                lm = bg.LlamaCppLM(path, max(prefill_tokens, prompt_tokens + new_tokens), threads)
            p = prompt[0].tolist()
            timed[name] = {"prefill": lambda lm=lm: lm(prefill_ids),
                           "decode": lambda lm=lm, p=p: lm.decode_timing(p, new_tokens)}
            info = bg.inspect_gguf(path)
            rows[name] = {"path": f"llama.cpp (llama-cpp-python {results.package_version('llama-cpp-python')}), "
                                  "greedy: the prompt in one eval, then one token per eval",
                          "weights_bytes": info["tensor_bytes"], "weights_mib": info["tensor_bytes"] / ev.MiB,
                          "file": path.name, "bytes_by_ggml_type": info["bytes_by_type"]}
            print(f"  {name}: {info['tensor_bytes'] / ev.MiB:.1f} MiB ({path.name})", file=sys.stderr, flush=True)
            continue
        m = cpu_method(name, model_id)
        ev.check_timing_lengths(m, prefill_tokens, prompt_tokens, new_tokens, repeats)
        weights = ev.tensor_bytes(m)
        ref = generate_tokens(m, tokenizer, prompt, new_tokens)
        fast = FastDecoder(m, prompt_tokens, new_tokens, prefill_tokens, graphs=False)
        same = leading_equal(fast.generate(prompt), ref)
        timed[name] = {"prefill": lambda f=fast: f.prefill(prefill_ids), "decode": lambda f=fast: f.generate(prompt)}
        rows[name] = {"path": CPU_PATH, "weights_bytes": weights["bytes"], "weights_mib": weights["mib"],
                      "leading_tokens_equal": same}
        why_not_fused = fused_architecture(m)
        if why_not_fused is not None:
            rows[name]["why_not_fused"] = why_not_fused
        else:
            # the fused step on its own copy of the model: it re-lays out GPT-2's Conv1D weights in place
            fused = FastDecoder(cpu_method(name, model_id), prompt_tokens, new_tokens, prefill_tokens, graphs=False,
                                fused=True)
            same_fused = leading_equal(fused.generate(prompt), ref)
            timed[f"{name}·fused"] = {"prefill": lambda f=fused: f.prefill(prefill_ids),
                                      "decode": lambda f=fused: f.generate(prompt)}
            rows[f"{name}·fused"] = {"path": CPU_FUSED_PATH, "weights_bytes": weights["bytes"],
                                     "weights_mib": weights["mib"], "leading_tokens_equal": same_fused,
                                     "fused_layers": len(fused.fused.fused_layers),
                                     "module_layers": fused.fused.module_layers}
        if name == "fp32":
            timed["fp32·generate"] = ev.hf_calls(m, tokenizer, prefill_ids, prompt, new_tokens)
            rows["fp32·generate"] = {"path": ev.DECODE_DEFINITION, "weights_bytes": weights["bytes"],
                                     "weights_mib": weights["mib"]}
        print(f"  {name}: {weights['mib']:.1f} MiB, tokens = generate tokens: static path {same}/{new_tokens}, "
              + (f"fused step {same_fused}/{new_tokens}" if why_not_fused is None
                 else f"no fused step ({why_not_fused})"),
              file=sys.stderr, flush=True)
    result = ev.side_by_side(timed, cpu, new_tokens, repeats, warmup, "fp32", progress)
    for name, row in rows.items():
        result["table"][name].update(row)
    dec = {k: v["decode_ms_per_token"]["median"] for k, v in result["table"].items()}
    if "scratch-int8-fast·fused" in dec:            # Part 1 INT8 on its fastest path, the fused step
        result["int8_targets"] = {k: dec["scratch-int8-fast·fused"] / dec[ref_] for k, ref_ in
                                  (("vs_llama_cpp_q8_0", "gguf-q8_0"), ("vs_fp32", "fp32·fused"),
                                   ("vs_fp32_static", "fp32")) if ref_ in dec}
    return {**result, "threads": threads, "prefill_tokens": prefill_tokens, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "static_path": CPU_PATH,
            "decode_definition": "wall time of the prompt pass + new_tokens-1 decode steps / new tokens, every row",
            "note": "ratios against fp32 on the static path; llama.cpp's files converted and quantized from the "
                    "same model folder; leading_tokens_equal: the static path's or the fused step's greedy tokens "
                    "against the same model's generate()", "cpu_fused_path": CPU_FUSED_PATH}
