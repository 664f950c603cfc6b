"""The study's run plan, said once: which runs make each part, with which keywords.

run_study.py runs this plan on one model (`study_runs`); scripts/standin_study.py runs the
same runs on the stand-ins, each machine's steps built from the same lists (PART1, BNB_MODES,
GGUF_TYPES) and budgets. A run is (label, keywords of its script's main()). Adding a run to a
part is one line here, and both studies take it. No torch: it imports nothing of the project.
"""
from __future__ import annotations

# Part 1: the INT8 schemes on the whole model, two blocks alone, and scratch 4-bit.
PART1 = (("INT8 whole, per-channel", {"mode": "whole", "scheme": "per_channel"}),
         ("INT8 whole, per-tensor", {"mode": "whole", "scheme": "per_tensor"}),
         ("INT8 whole, asymmetric", {"mode": "whole", "scheme": "asymmetric"}),
         ("INT8 whole, group-64", {"mode": "whole", "scheme": "group", "group_size": 64}),
         ("INT8 blocks 0,1 attn+ffn", {"mode": "selective", "blocks": "0,1", "components": "attn,ffn"}),
         ("4-bit NF4 (scratch)", {"bits": 4, "scheme": "nf4"}),
         ("4-bit int4 (scratch)", {"bits": 4, "scheme": "int4"}))
SENSITIVITY = ("INT8 sensitivity", {"sensitivity": True})
BNB_MODES = ("int8", "fp4", "nf4", "nf4-dq")          # part2_bnb_nf4.MODES: every bitsandbytes mode
COMPARE = ("NF4 vs linear 4-bit", {"compare": True})
GGUF_TYPES = ("F32", "F16", "Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0")

# The exploration directions: BF16 (evaluate.py's cast), and round-to-nearest, GPTQ and AWQ
# (explore_calibrated.py) on three grids: 4-bit per output channel (group size 0), 4-bit and
# 3-bit in groups of 64. The papers group by 128, but SmolLM2-135M's width, 576 = 4.5 x 128,
# takes no groups of 128; 64 divides it, its 1536, and every GPT-2 and Llama width. No latency
# in these runs: evaluate()'s layers dequantize at each call (the reference path); the storage's
# fast GEMV is timed in the GPU bench (speed/gpu_bench.py, CALIBRATED_STORAGE).
BF16 = ("BF16 cast", {"dtype": "bfloat16"})
CALIBRATED_GROUP = 64
CALIBRATED_GRIDS = ((4, 0), (4, CALIBRATED_GROUP), (3, CALIBRATED_GROUP))
# One of them is timed, to show what the reference path costs: round-to-nearest per channel.
CALIBRATED = tuple((f"{m.upper()} {b}-bit {'per channel' if g == 0 else f'g{g}'}",
                    {"method": m, "bits": b, "group_size": g,
                     **({} if (m, b, g) == ("rtn", 4, 0) else {"skip_latency": True})})
                   for m in ("rtn", "gptq", "awq") for b, g in CALIBRATED_GRIDS)
ACT_ORDER = ("GPTQ 4-bit per channel, act-order",
             {"method": "gptq", "bits": 4, "group_size": 0, "act_order": True, "skip_latency": True})
# Gemma 3 270M is 640 = 5 x 128 wide (its MLP 2048): it takes the papers' groups of 128, the grid
# the assignment names, on the GPU (the second model's GPU plan, scripts/standin_study.py).
PAPER_GROUP = 128
PAPER_GRIDS = ((4, 0), (4, PAPER_GROUP), (3, PAPER_GROUP))
CALIBRATED_G128 = tuple((f"{m.upper()} {b}-bit {'per channel' if g == 0 else f'g{g}'}",
                         {"method": m, "bits": b, "group_size": g, "skip_latency": True})
                        for m in ("rtn", "gptq", "awq") for b, g in PAPER_GRIDS)
# A CPU runs this subset (AWQ's search runs the block 80 times per layer group: hours on 2 cores).
CPU_CALIBRATED = tuple(run for run in CALIBRATED if run[1]["group_size"] == CALIBRATED_GROUP
                       and run[1]["bits"] == 4 and run[1]["method"] != "awq")
# How much the calibration text moves the result: the same method calibrated on a novel (another
# domain) and on the scored file's own tail (the same encyclopedia, disjoint tokens: only where the
# scored text is a prefix of a local file, a CPU's budget), beside the default Wikipedia articles.
CALIBRATION_SOURCES = tuple((f"GPTQ 4-bit g{CALIBRATED_GROUP}, calibrated on {words}",
                             {"method": "gptq", "bits": 4, "group_size": CALIBRATED_GROUP, "calib_source": source,
                              "skip_latency": True})
                            for source, words in (("botchan", "a novel"),
                                                  ("wikitext2-test-tail", "the test split's tail")))

# Budgets: a CPU scores this prefix of the text (32 windows of 1024 at stride 512), so that the
# study finishes in about an hour on 2 cores; on a GPU the sensitivity scan (34 perplexities: the
# float model, each block, each component) scores this prefix, the other runs the whole text.
CPU_TOKEN_BUDGET = 16384
SENSITIVITY_GPU_TOKENS = 65536

STEPS = ("baseline", "part1", "sensitivity", "part2", "gguf", "explore", "plots", "report")


def study_runs(steps: list[str], gguf_dir: str = "gguf", cpu: bool = False) -> list[tuple[str, str, dict]]:
    """run_study.py's runs: (step, label, keywords of that step's script's main()), in order.
    cpu: the exploration step takes the CPU's subset."""
    runs = []
    if "baseline" in steps:
        runs.append(("baseline", "baseline fp32", {}))
    if "part1" in steps:
        runs += [("part1", label, kw) for label, kw in PART1]
    if "sensitivity" in steps:
        runs.append(("sensitivity", *SENSITIVITY))
    if "part2" in steps:
        runs += [("part2", f"bitsandbytes {m}", {"mode": m}) for m in BNB_MODES]
        runs.append(("part2", *COMPARE))
    if "gguf" in steps:
        runs += [("gguf", f"GGUF {t}", {"types": t, "gguf_dir": gguf_dir}) for t in GGUF_TYPES]
    if "explore" in steps:
        runs.append(("baseline", *BF16))
        runs += [("explore", label, kw) for label, kw in (CPU_CALIBRATED if cpu else (*CALIBRATED, ACT_ORDER))]
    return runs
