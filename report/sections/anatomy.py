"""What bounds the fused step: each anatomy record's chain of kernels, as a table and prose.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import plot_results as pr
import plots.speed as ps
from report.common import Study, gemv_ratios
from report.doc import Doc
from report.formats import f_ratio
from speed import readings


def anatomy_by_name(a: dict) -> dict:
    """readings.anatomy_rows by row name ('fp16', 'chain: vector', ...)."""
    return {row["name"]: row for row in readings.anatomy_rows(a)}


def mixed_chain_clause(a: dict) -> str:
    """The bound again with a tighter chain (readings.mixed_chain_ms): the links that read
    less than the whole vector counted as empty links."""
    mixed = readings.mixed_chain_ms(a)
    q8, base = a["steps"]["scratch-int8-fast"], a["steps"]["fp16"]
    if mixed is None or base["floor_ms"] is None:
        return ""
    bound = readings.lowest_ratio(mixed, q8["floor_ms"], base["floor_ms"])
    empty_us = readings.link_us(a, "empty")
    return (f" (attention, the embedding and the token pick read less than the whole vector: counted as empty "
            f"links, {empty_us:.2f} µs each, the chain still takes {mixed:.3f} ms and the bound is {f_ratio(bound)})")


def one_kernel_clause(a: dict, rs: list[dict]) -> str:
    """A paragraph on the step as one persistent kernel (the grid-barrier chain), for a's model
    and the range over every anatomy that measured it: does a grid barrier cost less than a
    launch, and how much room would 0.90x leave one? '' where a's record has no such chain."""
    got = anatomy_by_name(a)
    if "chain: grid-barrier" not in got:
        return ""
    one, sep = got["chain: grid-barrier"]["ms"], got["chain: vector"]["ms"]
    ratios = [readings.chain_ms(r["anatomy"]["chains"], "grid-barrier")
              / readings.chain_ms(r["anatomy"]["chains"], "vector")
              for r in rs if "grid-barrier" in r["anatomy"]["chains"]]
    lo, hi = f_ratio(min(ratios)), f_ratio(max(ratios))
    spread = lo if lo == hi else f"{lo} to {hi}"
    cheaper = one < sep
    text = (f"Written instead as one persistent kernel with a simple software grid barrier in place of each launch "
            "(one program per SM; each adds to one counter on arrival, then polls it with acquire loads), the same "
            f"{a['links']} links take {one:.3f} ms, {f_ratio(one / sep)} the separate kernels' ({spread} over the "
            f"{len(ratios)} model{'s' if len(ratios) > 1 else ''} measured): "
            + ("a link joined by this barrier costs less than one joined by a launch with PDL, so the bound above "
               "counts the chain at the one kernel's time." if cheaper else
               "a link joined by this barrier costs more than one joined by a launch with PDL, so this one-kernel "
               "version lowers the bound nowhere."))
    q8, base = a["steps"]["scratch-int8-fast"], a["steps"]["fp16"]
    floor = base["floor_ms"]
    if floor and q8["floor_ms"] <= readings.TARGET_RATIO * floor < readings.chain_ms(a["chains"]):
        allowed = readings.TARGET_RATIO * floor * 1000 / a["links"]
        read = readings.link_us(a, "vector") - readings.link_us(a, "empty")
        text += (f" For {readings.TARGET_RATIO:.2f}× at {a['links']} links a link may take {allowed:.2f} µs in "
                 f"all; reading the vector that other programs wrote adds {read:.2f} µs to a link (the vector chain "
                 f"against the empty one), which would leave {max(allowed - read, 0):.2f} µs for any barrier "
                 "(inferred from the measured chains).")
    return text


def anatomy_section(doc: Doc, s: Study) -> None:
    """What bounds the fused step: each anatomy (speed/fast_decode.py --anatomy) as a table row, the
    figure, and what the smallest and the largest model say."""
    rs = [r for r in s.anatomies if "scratch-int8-fast" in r["anatomy"]["steps"]]
    if not rs:
        return
    doc.h2("What bounds the fused step: its chain of kernels")
    rows, int4_same = [], True
    for r in rs:
        a = r["anatomy"]
        got = anatomy_by_name(a)
        q8, q4 = got["scratch-int8-fast"], got.get("scratch-int4-fast")
        int4_same = (int4_same and q4 is not None and None not in (q4["lowest_ratio"], q8["lowest_ratio"])
                     and round(q4["lowest_ratio"], 2) == round(q8["lowest_ratio"], 2))
        one = got.get("chain: grid-barrier")
        rows.append([escape(pr.short_model(r)) + (" (stand-in)" if r["model"].get("stand_in") else ""),
                     str(a["links"]), f"{got['fp16']['ms']:.3f}", f_ratio(q8["vs_fp16"]),
                     "–" if q4 is None else f_ratio(q4["vs_fp16"]), f"{got['chain: vector']['ms']:.3f}",
                     "–" if one is None else f"{one['ms']:.3f}",
                     "–" if got["fp16"]["floor_ms"] is None else f"{got['fp16']['floor_ms']:.3f}",
                     "–" if q8["lowest_ratio"] is None else f_ratio(q8["lowest_ratio"]),
                     "–" if q8["most_links"] is None else str(q8["most_links"])])
    doc.table(["model", "links", "fp16 ms", "INT8", "int4", "chain ms", "one kernel ms", "fp16 bytes ms",
               "INT8 bound", f"links for {readings.TARGET_RATIO:.2f}×"], rows,
              "fast_decode.py --anatomy (python scripts/standin_study.py --machine cuda --steps cuda-anatomy), one "
              "round-robin run per model, ms per decode step. links: the step's "
              "kernels, each waiting for the one before; INT8, int4: Part 1's fused step against fp16's; chain: "
              "as many links that do no model work, each only reading the vector the link before wrote and "
              "writing its share of the next (one program per SM), as separate kernels with PDL; one kernel: the "
              "same links as one persistent kernel, a simple software grid barrier between links; the faster of "
              "the two is the least measured for that many links, taken as the bound; fp16 bytes: "
              "fp16's weight bytes at the GPU's peak bandwidth; INT8 bound: the lowest INT8 time against fp16's "
              "that a step of this chain could reach, if both hid their weight reads behind the chain alike, "
              "max(chain, INT8 bytes) / max(chain, fp16 bytes)"
              + (" (int4's is the same in every row)" if int4_same else "") + "; links for "
              "0.90×: the most links a step could have for that bound to reach "
              f"{readings.TARGET_RATIO:.2f}×, at the chain's measured time per link.",
              widths=[3.2, None, 1.3, None, None, 1.3, 1.5, 1.5, 1.3, 1.5])
    doc.figure(ps.ANATOMY_FIGURE, "Each method's fused step, as the time each kind of link adds to it (torch.profiler "
               "over CUDA graph replays), beside the chain of as many links that only read the vector, as separate "
               "kernels (dashed) and as one kernel with grid barriers between them (dash-dot), and the time the "
               "fp16 and INT8 weights' bytes take at peak bandwidth. The lines are totals, to compare with a bar's "
               "length, not moments within the step.", max_height_cm=17)
    lo, hi = rs[0], rs[-1]
    la, ha = lo["anatomy"], hi["anatomy"]
    low = anatomy_by_name(la)
    text = (f"A fused decode step is a chain of kernels, each waiting for the one before. On "
            f"{escape(pr.short_model(lo))}'s shapes the step is {la['links']} links, and a chain of {la['links']} "
            "links that only waits and reads the vector the link before wrote, as each GEMV's programs must, "
            f"takes {readings.chain_ms(la['chains']):.3f} ms on the {escape(pr.device_of(lo))}")
    if low["fp16"]["floor_ms"] is not None:
        q8 = low["scratch-int8-fast"]
        outlasts = readings.chain_ms(la["chains"]) >= low["fp16"]["floor_ms"]
        text += (f", against {low['fp16']['floor_ms']:.3f} ms to read every fp16 weight at peak bandwidth. "
                 + ("The chain outlasts the bytes: a step that hid its weight reads behind its chain would be bound "
                    "by the chain for fp16 as for INT8, and " if outlasts else "")
                 + f"the lowest INT8 time such a step could reach is {f_ratio(q8['lowest_ratio'])} that of an fp16 "
                 f"step built as well, whatever its GEMV kernels, as long as it keeps {la['links']} such links"
                 + mixed_chain_clause(la)
                 + (f"; {readings.TARGET_RATIO:.2f}× needs a step of at most {q8['most_links']} links (at the "
                    f"chain's {readings.link_us(la):.2f} µs a link), "
                    f"{(q8['most_links'] - 3) / ((la['links'] - 3) / 5):.2f} a block once the embedding, the head "
                    "and the token pick take their 3, where the fused step has 5"
                    if q8["most_links"] is not None and q8["most_links"] < la["links"] else "")
                 + f". Measured, INT8 takes {f_ratio(q8['vs_fp16'])} fp16's time"
                 + (" (below the bound because the measured fp16 step does not hide its weight reads, and the bound "
                    "compares with an fp16 step that does)" if q8["lowest_ratio"] is not None
                    and q8["vs_fp16"] < q8["lowest_ratio"] else "")
                 + (f" and int4 {f_ratio(low['scratch-int4-fast']['vs_fp16'])}" if "scratch-int4-fast" in low else "")
                 + ".")
    else:
        text += "."
    doc.p(text)
    one = one_kernel_clause(la, rs)
    if one:
        doc.p(one)
    if hi is not lo:
        high = anatomy_by_name(ha)
        q8 = high["scratch-int8-fast"]
        text = (f"On {escape(pr.short_model(hi))}'s shapes ({ha['links']} links) the chain takes "
                f"{readings.chain_ms(ha['chains']):.3f} ms")
        if q8["lowest_ratio"] is not None:
            text += (f" against {high['fp16']['floor_ms']:.3f} ms of fp16 bytes; the bound is "
                     f"{f_ratio(q8['lowest_ratio'])} and INT8 measures {f_ratio(q8['vs_fp16'])}")
        gain, lose = ([f"{lbl} {f_ratio(x)}" for lbl, x in part] for part in gemv_ratios(ha, "scratch-int8-fast"))
        text += (f": there the kernels, not the chain, keep INT8 from its bytes. Each kind of GEMV's profiled time "
                 f"a step ({(ha['links'] - 3) // 5} layers), INT8's against fp16's: " + ", ".join(gain + lose)
                 + (f"; every one is far from the {f_ratio(q8['floor_ms'] / high['fp16']['floor_ms'])} its bytes "
                    "would allow." if q8["floor_ms"] and high["fp16"]["floor_ms"] else "."))
        doc.p(text)
