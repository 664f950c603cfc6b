"""The speed figures, one bench record each or several across models: prefill and decode as
ratios (a Part 1 or bitsandbytes bench), the fast decode path against generate(), the fused step
beside its peers, the fused step against model size, and the fused step's anatomy link by link.

plot_results.plot_all draws them; the figures' names and the records' grouping are its own.
"""
from __future__ import annotations

import math
from pathlib import Path

import results
from plot_results import (
    _plt,
    _save,
    bench_figure,
    caption,
    device_of,
    fast_figure,
    fused_figure,
    label_points,
    short_model,
)


def plot_bench(rec: dict, out: Path, made: list[Path]) -> None:
    """Prefill and decode as ratios of the baseline; each method's milliseconds in a column to
    the right of the plot, clear of the bars and of the baseline's dashed line."""
    plt = _plt()
    b = rec["bench"]
    names = list(b["table"])
    pre = [b["table"][n]["prefill_ratio"] for n in names]
    dec = [b["table"][n]["decode_ratio"] for n in names]
    fig, ax = plt.subplots(figsize=(5.0, 0.32 * len(names) + 1.7))
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], pre, height=0.4, label=f"prefill 1x{b['prefill_tokens']}")
    ax.barh([i + 0.2 for i in y], dec, height=0.4, label=f"decode ({b['new_tokens']} tokens)")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    column = ax.get_yaxis_transform()                # x in axes fractions, y in data
    for i, n in enumerate(names):
        row = b["table"][n]
        ax.text(1.02, i, f"{row['prefill_ms']['median']:.1f} | {row['decode_ms_per_token']['median']:.2f}",
                transform=column, va="center", fontsize=8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_xlabel(f"time / {b.get('baseline', 'fp32')} time (median of {b['repeats']} round-robin repeats)\n"
                  "right of the plot: prefill ms | decode ms/token", fontsize=9)
    ax.set_xlim(0, max(pre + dec) * 1.05)
    from matplotlib.transforms import offset_copy
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=2, frameon=False,
              bbox_transform=offset_copy(ax.transAxes, fig=fig, y=-46, units="points"))   # under the 2-line x label
    fig.suptitle(f"Latency side by side\n{caption(rec)}", fontsize=9)
    _save(fig, out, bench_figure(rec), made)


def plot_fast(rec: dict, out: Path, made: list[Path]) -> None:
    """The fast decode path: ms per token of every method, generate() beside it, and the
    floor (weight bytes / the GPU's peak bandwidth) as a tick on each bar."""
    from speed import readings
    plt = _plt()
    b = rec["bench"]
    names = [n for n, v in b["table"].items() if v.get("fast_path")]
    fast_t = [b["table"][n]["fast_path"]["decode_ms_per_token"] for n in names]
    hf_t = [b["table"][n]["decode_ms_per_token"] for n in names]
    fast, hf = [t["median"] for t in fast_t], [t["median"] for t in hf_t]

    def spread(ts):                        # p10-p90 as error bars about the median, where the record has them
        if not all("p10" in t and "p90" in t for t in ts):
            return None
        return [[t["median"] - t["p10"] for t in ts], [t["p90"] - t["median"] for t in ts]]
    bw = readings.bench_bandwidth(rec)
    fig, ax = plt.subplots(figsize=(6.3, 0.26 * len(names) + 1.5))     # printed near its own size: 8 pt stays 8
    y = list(range(len(names)))
    ax.set_xscale("log")                      # 0.03 ms floors, 3 ms fast steps, 100 ms LLM.int8()
    bars = dict(height=0.4, error_kw=dict(lw=0.8, capsize=2, ecolor="#333333"))
    ax.barh([i - 0.2 for i in y], fast, xerr=spread(fast_t), color="#55a868", label="fast path", **bars)
    ax.barh([i + 0.2 for i in y], hf, xerr=spread(hf_t), color="#a0a0a0", label="Hugging Face generate()", **bars)
    lo = min(fast)
    if bw:
        floors = [readings.decode_floor_ms(b["table"][n]["weights_mib"] * 2**20, bw) for n in names]
        ax.scatter(floors, [i - 0.2 for i in y], marker="|", s=90, color="k", zorder=3,
                   label=f"floor: weight bytes / {bw / 1e12:.1f} TB/s")
        lo = min(lo, *floors)
    for i in y:                            # each value right of its whisker; the fast path's inside its bar's
        fx, hx = fast_t[i].get("p90", fast[i]), hf_t[i].get("p90", hf[i])    # end where the two would meet
        if abs(math.log10(hx / fx)) < 0.4:
            ax.text(fast[i] / 1.08, i - 0.2, f"{fast[i]:.2f}", va="center", ha="right", fontsize=8, color="white")
        else:
            ax.text(fx, i - 0.2, f" {fast[i]:.2f}", va="center", fontsize=8)
        ax.text(hx, i + 0.2, f" {hf[i]:.1f}", va="center", fontsize=8)
    ax.set_xlim(lo / 2, max(hf + fast) * 4)
    ax.set_xlabel("ms per decoded token (log scale)", fontsize=9)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    from matplotlib.transforms import ScaledTranslation  # below the axis label, whatever the axes' height
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.4, 0), ncol=3, frameon=False,
              bbox_transform=ax.transAxes + ScaledTranslation(0, -0.42, fig.dpi_scale_trans))
    fig.suptitle(f"Decode, {b['new_tokens']} tokens after {b['prompt_tokens']}: median of {b['repeats']} "
                 f"round-robin repeats, whiskers p10–p90\n{caption(rec)}", fontsize=9)
    _save(fig, out, fast_figure(rec), made)


def plot_fused(rec: dict, out: Path, made: list[Path]) -> None:
    """The fused decode step: each method's ms per token on the fast path and on the fused
    step, the peers beside them, and each one's floor as a tick."""
    from speed import readings
    plt = _plt()
    b = rec["bench"]
    bw = readings.bench_bandwidth(rec)
    rows = []                                   # (label, fast ms, fused or peer ms, floor ms)
    for n, v in b["table"].items():
        fused = (v.get("fused_path") or {}).get("decode_ms_per_token", {}).get("median")
        rows.append((n, v["fast_path"]["decode_ms_per_token"]["median"], fused,
                     readings.decode_floor_ms(v["weights_bytes"], bw)))
    for n, p in b.get("peers", {}).items():
        if not p.get("why_not"):
            rows.append((f"{n} (peer)", None, p["decode_ms_per_token"]["median"],
                         readings.decode_floor_ms(p["weights_bytes"], bw)))
    fig, ax = plt.subplots(figsize=(6.2, 0.42 * len(rows) + 1.9))
    ax.set_xscale("log")
    vals = []
    for i, (_, fast, fused, floor) in enumerate(rows):
        if fast is not None:
            ax.barh(i + 0.2, fast, height=0.4, color="#a0a0a0", label="fast path (static cache, graph)" if i == 0
                    else None)
            ax.text(fast, i + 0.2, f" {fast:.3f}", va="center", fontsize=8)
            vals.append(fast)
        if fused is not None:
            peer = fast is None
            ax.barh(i - 0.2 if not peer else i, fused, height=0.4, color="#dd8452" if peer else "#4c72b0",
                    label=None if peer else ("fused step" if i == 0 else None))
            ax.text(fused, i - 0.2 if not peer else i, f" {fused:.3f}", va="center", fontsize=8)
            vals.append(fused)
        if floor is not None:
            ax.scatter([floor], [i], marker="|", s=90, color="k", zorder=3,
                       label=f"floor: weight bytes / {bw / 1e12:.1f} TB/s" if i == 0 else None)
            vals.append(floor)
    ax.set_xlim(min(vals) / 2, max(vals) * 4)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_xlabel("ms per decoded token (log scale); orange: a peer's own recipe", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.4, -0.16), ncol=3, frameon=False)
    fig.suptitle(f"Decode, {b['new_tokens']} tokens after {b['prompt_tokens']}: median of {b['repeats']} "
                 f"round-robin repeats\n{caption(rec)}", fontsize=9)
    _save(fig, out, fused_figure(rec), made)


SIZES_FIGURE = "fused_step_against_model_size_cuda.png"


def plot_sizes(records: list[dict], out: Path, made: list[Path]) -> None:
    """The fused step against model size (readings.size_rows, the runs with the weights-in-L2
    diagnostic): left, Part 1 INT8's and int4's fused time against fp16's (filled) and their
    step with the weights in L2 against fp16's (hollow); right, the share of fp16's step that
    its weights' bytes take."""
    from speed import readings
    rows = [r for r in readings.size_rows(records) if r["fp16_bytes_share"] is not None]
    if len(rows) < 2:                                  # the runs with the weights-in-L2 diagnostic
        return
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6.5, 4.0), gridspec_kw={"width_ratios": [3, 2]})
    x = [r["params"] / 1e6 for r in rows]
    for name, label, color in (("scratch-int8-fast", "Part 1 INT8", "#4c72b0"),
                               ("scratch-int4-fast", "Part 1 int4", "#55a868")):
        pts = [(xi, r[name]) for xi, r in zip(x, rows) if r[name]]
        a1.plot([p[0] for p in pts], [p[1]["vs_fp16_fused"] for p in pts], "o-", color=color, lw=1,
                label=f"{label}: fused step")
        l2 = [(p[0], p[1]["l2_vs_fp16_l2"]) for p in pts if p[1]["l2_vs_fp16_l2"] is not None]
        a1.plot([p[0] for p in l2], [p[1] for p in l2], "o--", color=color, mfc="white", lw=1,
                label=f"{label}: weights in L2")
    a1.axhline(1.0, color="k", lw=0.6)
    a1.axhline(0.9, color="#c44e52", lw=0.8, ls=":", label="0.90: 10% faster than fp16")
    a1.set_ylabel("time / fp16's on the same path", fontsize=9)
    shares = [(xi, r["fp16_bytes_share"]) for xi, r in zip(x, rows)]
    a2.plot([p[0] for p in shares], [100 * p[1] for p in shares], "s-", color="#8172b3", lw=1)
    a2.set_ylabel("fp16 step: weights' bytes (%)", fontsize=9)
    a2.set_ylim(0, max(100 * p[1] for p in shares) * 1.25)
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xticks(x, [f"{v:.0f}" for v in x])
        a.minorticks_off()
        a.set_xlim(x[0] / 1.3, x[-1] * 1.3)
        a.set_xlabel("parameters (millions, log scale)", fontsize=9)
        a.tick_params(labelsize=8)
    label_points(a2, [(p[0], 100 * p[1], r["model"].replace("-random", "")) for p, r in zip(shares, rows)], size=8)
    fig.legend(*a1.get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.subplots_adjust(bottom=0.27, top=0.82, wspace=0.35)
    names = ", ".join(r["model"] for r in rows) + (" (stand-ins)" if all(r["stand_in"] for r in rows) else "")
    dev = next(device_of(r) for r in records if r.get("_file") == rows[0]["file"])
    fig.suptitle(f"The fused decode step against model size, each model its own round-robin run, all with\n"
                 f"the weights-in-L2 diagnostic: {names}, {dev}", fontsize=8)
    _save(fig, out, SIZES_FIGURE, made, layout=False)


ANATOMY_FIGURE = "fused_step_anatomy_cuda.png"
# a block's five links by position (GPT-2's and Llama's names differ), then the rest of a step
LINK_LABELS = ("QKV GEMV", "attention", "out-projection GEMV", "up GEMV", "down GEMV")
LINK_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def anatomy_records(records: list[dict]) -> list[dict]:
    """The anatomy records whose every method was profiled, fewest links first."""
    rs = [r for r in records if results.kind_of(r) == "anatomy"
          and all("links" in s for s in r["anatomy"]["steps"].values())]
    return sorted(rs, key=lambda r: r["anatomy"]["links"])


def plot_anatomy(records: list[dict], out: Path, made: list[Path]) -> None:
    """The fused step's anatomy (speed/fast_decode.py --anatomy), one panel per model: each method's
    step as the time its links add, by what they do, beside the chain of as many links that
    does none of the work (separate kernels, and one persistent kernel where measured) and the
    time the weights' bytes take at peak bandwidth."""
    from speed import readings
    rs = anatomy_records(records)
    if not rs:
        return
    plt = _plt()
    fig, axes = plt.subplots(len(rs), 1, figsize=(6.4, 1.2 + 1.55 * len(rs)), squeeze=False)
    for ax, r in zip(axes[:, 0], rs):
        a = r["anatomy"]
        names = list(a["steps"])
        for y, name in enumerate(names):
            block, rest = readings.block_links(a["steps"][name]["links"])
            left = 0.0
            for i, g in enumerate(block + [{"adds_us": sum(g["adds_us"] for g in rest)}]):
                ax.barh(y, g["adds_us"], left=left, color=LINK_COLORS[i], height=0.62,
                        label=(LINK_LABELS + ("embedding, head, token pick",))[i] if y == 0 else None)
                left += g["adds_us"]
        chain = readings.chain_ms(a["chains"], "vector") * 1000
        ax.axvline(chain, color="k", ls="--", lw=1.4, zorder=4,
                   label="as many links, each reading the vector (no weights)")
        if "grid-barrier" in a["chains"]:
            ax.axvline(readings.chain_ms(a["chains"], "grid-barrier") * 1000, color="k", ls="-.", lw=1.6,
                       zorder=4, label="the same links as one kernel, grid barriers between")
        for name, color, ls in (("fp16", "#111111", ":"), ("scratch-int8-fast", "#00e5ff", "-")):
            floor = a["steps"].get(name, {}).get("floor_ms")
            if floor:
                ax.axvline(floor * 1000, color=color, ls=ls, lw=2.2, zorder=4,
                           label=f"{'fp16' if name == 'fp16' else 'INT8'} weights' bytes at peak bandwidth")
        ax.set_yticks(range(len(names)), [n.replace("scratch-", "Part 1 ").replace("-fast", "") for n in names],
                      fontsize=8)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        ax.set_title(f"{short_model(r)}{' (stand-in)' if r['model'].get('stand_in') else ''}: {a['links']} links a "
                     f"step", fontsize=8.5, loc="left")
    axes[-1, 0].set_xlabel("microseconds per decode step (the time each kind of link adds)", fontsize=9)
    axes[-1, 0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, frameon=False)
    fig.suptitle(f"The fused decode step, link by link (torch.profiler over CUDA graph replays), each model its\n"
                 f"own round-robin run; the lines are totals to compare with a bar's length\n{device_of(rs[0])}",
                 fontsize=8)
    _save(fig, out, ANATOMY_FIGURE, made)
