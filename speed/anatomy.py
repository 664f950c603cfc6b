"""The fused step's anatomy (speed/fast_decode.py --anatomy): where a step's time goes.

Each method's fused step, and the same step with its weights in L2, is timed round-robin
beside chains of as many links that do none of its work (separate kernels, and one
persistent kernel with grid barriers), and each link is profiled: the least that a step of
that many dependent links can take on this GPU, whatever its weights.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

import evaluate as ev
import results
from speed import kernels
from speed.decoder import FastDecoder, generate_tokens, leading_equal, on_side_stream, time_steps, tune_tiles
from speed.fused_step import FUSED_PATH
from speed.gpu_bench import load_method
from speed.readings import CHAIN_DEFINITIONS, anatomy_text, chain_ms, decode_floor_ms, hbm_bytes_per_s, lowest_ratio

# -----------------------------------------------------------------------------
# 4c. The fused step's anatomy (--anatomy): where a step's time goes, and the least that a
#     step of as many links can take on this GPU, whatever its weights

ANATOMY_METHODS = ("fp16", "scratch-int8-fast", "scratch-int4-fast", "scratch-nf4-fast")   # served whole
PROFILE_REPLAYS = 50         # decode steps seen by the profiler, per method
CHAINS = {  # name: (each program reads the vector the link before wrote, with PDL, as one persistent kernel)
    "empty": (False, True, False),
    "vector": (True, True, False),
    "vector-no-pdl": (True, False, False),
    "grid-barrier": (True, False, True),
}


def profile_kernels(run: Callable[[], None]) -> list[tuple[str, float, float]]:
    """The GPU kernels that run() launches (CUDA graph replays included), as torch.profiler
    (CUPTI) sees them, in start order: (name, start us, duration us)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(str(Path(d) / "trace.json"))
        events = json.loads((Path(d) / "trace.json").read_text())["traceEvents"]
    seen = [(e["name"], float(e["ts"]), float(e["dur"])) for e in events if e.get("cat") == "kernel"]
    return sorted(seen, key=lambda k: k[1])


def link_times(seen: list[tuple[str, float, float]], roles: list[str]) -> dict:
    """Per link of a step, from the kernels that a profiler saw over several steps (profile_kernels):
    the kernel, its median duration, and the median time it adds to the step: its end minus
    the end of the link before (the first link: its duration). With PDL a kernel starts
    before the one before ends, so durations overlap; the added times sum to the step's span.
    -> {"steps_profiled", "links": [{"role", "kernel", "us", "adds_us"}]}, or {"why_not"}
    where the kernels do not split into whole steps of len(roles), named alike."""
    n = len(roles)
    if not seen or len(seen) % n:
        return {"why_not": f"the profiler saw {len(seen)} kernels, not a multiple of the step's {n}"}
    steps = [seen[i:i + n] for i in range(0, len(seen), n)]
    names = [k[0] for k in steps[0]]
    if any([k[0] for k in s] != names for s in steps):
        return {"why_not": "the profiled steps launch different kernels"}
    end = lambda k: k[1] + k[2]                                                        # noqa: E731
    links = [{"role": role, "kernel": names[j],
              "us": ev.summarize([s[j][2] for s in steps])["median"],
              "adds_us": ev.summarize([end(s[j]) - (end(s[j - 1]) if j else s[j][1]) for s in steps])["median"]}
             for j, role in enumerate(roles)]
    return {"steps_profiled": len(steps), "links": links}


def chain_graph(links: int, width: int, read: bool, pdl: bool, programs: int,
                persistent: bool = False) -> Callable[[], None]:
    """A CUDA graph of `links` chain links over a vector of `width`, each link with `programs`
    programs: separate kernels (kernels.chain_link), or one persistent kernel with a grid
    barrier between links (kernels.barrier_chain); -> its replay. A chain that reads is
    checked once, uncaptured, from zeros: every element of the last vector is `links`."""
    x = torch.zeros(2, width + 1, device="cuda")
    cnt = torch.zeros(3, dtype=torch.int32, device="cuda")

    def run():
        if persistent:
            kernels.barrier_chain(x, cnt, links, programs)
            return
        for i in range(links):
            kernels.chain_link(x[i % 2], x[(i + 1) % 2], programs, read, pdl)
    on_side_stream([run])                                             # compiles (before capture)
    if read and (bool(cnt[2]) or not bool((x[links % 2, :width] == links).all())):
        raise RuntimeError(f"the chain of {links} links did not compute what it should "
                           f"({'a grid barrier timed out' if cnt[2] else 'wrong values'})")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    return lambda g=g, x=x, cnt=cnt: g.replay()                       # x, cnt live as long as the graph


@torch.no_grad()
def anatomy(model_id: str, tokenizer, ids: torch.Tensor, methods: list[str], prompt_tokens: int, new_tokens: int,
            repeats: int, warmup: int, tune: bool = True, replays: int = PROFILE_REPLAYS) -> dict:
    """Each method's fused decode step, and the same step with its weights in L2, timed
    round-robin beside chains of as many links (CHAINS), each link of the step
    profiled, and the lowest ratio to fp16 that a step of that many links could reach."""
    dev = torch.device("cuda")
    prompt = ev.timing_inputs(ids, 1, prompt_tokens, dev)[1]
    bandwidth = hbm_bytes_per_s(torch.cuda.get_device_name())
    entries, rows, keep, roles = {}, {}, [], None
    methods = ["fp16"] + [m for m in methods if m != "fp16"]                # the baseline first
    for name in methods:
        m = load_method(name, model_id, "cuda")
        dec = FastDecoder(m, prompt_tokens, new_tokens, fused=True)
        if dec.fused.kernels_per_step() is None:
            raise ev.UserError(f"{name}: the fused step runs {', '.join(dec.fused.module_layers)} as the model's "
                               "modules, so its links are not one kernel each (choose methods the fused step "
                               "serves whole)")
        ref = generate_tokens(m, tokenizer, prompt, new_tokens)
        tiles = tune_tiles(dec, prompt) if tune else None
        dec.capture()
        same = leading_equal(dec.generate(prompt), ref)
        entries[name] = (dec.start, dec.programs["decode"])
        entries[f"{name}·l2"] = (dec.start, dec.weights_from_l2())

        def profiled(d=dec):
            for _ in range(min(replays, new_tokens - 1)):
                d.programs["decode"]()
        dec.start()                                           # the prompt pass, outside the profile
        seen = profile_kernels(profiled)
        roles = dec.fused.roles
        weights = ev.tensor_bytes(m)
        rows[name] = {"weights_bytes": weights["bytes"], "weights_mib": weights["mib"],
                      "floor_ms": decode_floor_ms(weights["bytes"], bandwidth),
                      "fused_leading_tokens_equal": same, "fused_tiles": tiles, **link_times(seen, roles)}
        keep.append((m, dec))                                     # loaded until the round-robin is done
        print(f"  {name}: {weights['mib']:.1f} MiB, {len(roles)} links, fused tokens = generate tokens: "
              f"{same}/{new_tokens}, profiler: {len(seen)} kernels", file=sys.stderr, flush=True)
    width = keep[0][1].fused.x.numel()
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    for chain, (read, pdl, persistent) in CHAINS.items():
        entries[f"chain·{chain}"] = (None, chain_graph(len(roles), width, read, pdl, sms, persistent))
    times = time_steps(entries, new_tokens - 1, repeats, warmup)
    chains = {c: {"step_ms": times[f"chain·{c}"], "definition": CHAIN_DEFINITIONS[c]} for c in CHAINS}
    base, fp16_floor = times["fp16"]["median"], rows["fp16"]["floor_ms"]
    bound = chain_ms(chains)
    for name, row in rows.items():
        row.update({"step_ms": times[name], "l2_step_ms": times[f"{name}·l2"],
                    "vs_baseline": times[name]["median"] / base,
                    "l2_vs_baseline": times[f"{name}·l2"]["median"] / base,
                    "lowest_ratio": None if fp16_floor is None else lowest_ratio(bound, row["floor_ms"], fp16_floor)})
    return {"steps": rows, "chains": chains, "baseline": "fp16", "links": len(roles), "width": width,
            "chain_programs": sms, "pdl": kernels.pdl_on(dev), "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup, "hbm_bytes_per_s": bandwidth,
            "order": f"round-robin: each repeat times {', '.join(entries)} in turn",
            "step_definition": f"ms per decode step: after the prompt pass (untimed), {new_tokens - 1} replays of "
                               "the step's CUDA graph timed with CUDA events; median of the repeats",
            "l2_definition": f"the fused step with every weight read from its first {kernels.L2_ROWS} rows, which "
                             "stay in L2 (fast_decode's diagnostic): the step without its HBM weight bytes",
            "profile_definition": f"torch.profiler (CUPTI) over {min(replays, new_tokens - 1)} graph replays of the "
                                  "decode step: per link, the median of its kernel's duration (us) and of the time it "
                                  "adds to the step (adds_us: its end minus the end of the link before)",
            "lowest_ratio_definition": "the lowest decode-time ratio to the baseline that any step of this many "
                                       "links could reach if both hid their weight bytes behind the chain equally: "
                                       "max(chain, floor) / max(chain, baseline floor), chain = the faster of the "
                                       "vector and grid-barrier chains' ms per step, floor = weight bytes / peak "
                                       "bandwidth",
            "tiles_definition": ("each weight-reading kernel's tile chosen by tune_tiles (the whole decode step timed "
                                 "per candidate tile)" if tune else "Triton's autotuner (--no-tune-tiles)")}


def save_anatomy(result: dict, methods: list[str], source, args) -> results.Record:
    """Write the anatomy as a results record of kind 'anatomy' (step-anatomy__<model>__cuda__<hash>.json),
    print it, return the record."""
    record = ev.save_timing_record("anatomy", "step-anatomy", {"methods": methods, "fused_path": FUSED_PATH},
                                   {"id": args.model}, source, result, args, torch.device("cuda"),
                                   ("prompt_tokens", "new_tokens", "repeats", "warmup"))
    print(f"fused step anatomy on {record['environment']['device_name']}:")
    print(anatomy_text(result))
    print(f"wrote {record.path}")
    return record
