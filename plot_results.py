#!/usr/bin/env python3
"""Figures of the study, drawn only from results/*.json, into report/figures/ (PNG).

    python plot_results.py                         # results/ -> report/figures/
    python plot_results.py --results DIR --out DIR

Figures (each one names its model, its text and its device; a stand-in is named as such):
  memory_<group>.png        weight MiB by method
  perplexity_<group>.png    perplexity by method, with the change against fp32
  pareto_<group>.png        every method: weight MiB against perplexity
  latency_<bench>.png       prefill and decode, side by side from one bench run, as ratios
  sensitivity.png           perplexity change with one block / one component type quantized
  nf4_levels.png            a real layer's w/absmax histogram under the 16 NF4 and 16 uniform levels
  reconstruction_error.png  per-layer 4-bit reconstruction error, NF4/FP4/int4

A group is the runs of one model on the same text, windows, token count and device, so
every bar in a figure is comparable. A file that does not parse, or lacks what a figure
needs, is skipped with a warning.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import results
from results import load_results  # noqa: F401  (the one reader, used by the report and the tables too)
from study import cli, registry

# -----------------------------------------------------------------------------
# Reading

def short_model(rec: dict) -> str:
    return str(rec["model"]["id"]).rstrip("/").split("/")[-1]


def device_of(rec: dict) -> str:
    return rec.get("environment", {}).get("device_name", "unknown device")


TEXT_NAMES = {"wiki.test.raw": "WikiText-2 (raw), test split", "wikitext-2-raw-v1": "WikiText-2 (raw), test split",
              "ptb.test.txt": "Penn Treebank, test split", "ptb_text_only": "Penn Treebank, test split"}


def text_words(ident: str, description: str = "", short: bool = False) -> str:
    """A text's name in words, from a dataset id (a Hub config or 'file:<name>') and its
    description; short drops ', split' to ' test'-style for captions."""
    words = next((w for key, w in TEXT_NAMES.items() if key in ident or key in description),
                 ident.removeprefix("file:").split("/")[-1])
    return words.replace(", test split", " test") if short else words


def text_name(rec: dict, short: bool = False) -> str:
    """The dataset of a record in words."""
    d = rec.get("dataset") or {}
    return text_words(str(d.get("id", "?")), str(d.get("description", "")), short)


def caption(rec: dict, extra: str = "") -> str:
    """model (stand-in), text, device: on every figure."""
    model = short_model(rec) + (" (stand-in)" if rec["model"].get("stand_in") else "")
    text = text_name(rec, short=True)
    return f"{model} · {text}{extra}\n{device_of(rec)}"


def eval_groups(records: list[dict]) -> dict[tuple, list[dict]]:
    groups = defaultdict(list)
    for r in records:
        try:
            if results.kind_of(r) != "eval":
                continue
            p = r["perplexity"]
            key = (short_model(r), r["dataset"]["id"].split("/")[-1], p["max_length"], p["stride"],
                   p["n_tokens_scored"], device_of(r), device_kind(r))
            r["memory"]["weights_mib"]                                      # must exist
            registry.of(r)                                                  # and say what it is
            groups[key].append(r)
        except (KeyError, TypeError) as e:
            warnings.warn(f"skipping {r.get('_file')}: missing {e}", stacklevel=2)
    return groups


def perplexity_means_something(rec: dict) -> bool:
    """False for a model with random weights (model.random_weights)."""
    return not results.random_weights(rec)


def device_kind(rec: dict) -> str:
    """'cpu' or 'cuda': the kind of device a record ran on (environment.device, as torch names it)."""
    return "cpu" if str((rec.get("environment") or {}).get("device", "")).startswith("cpu") else "cuda"


def group_slug(key: tuple) -> str:
    model, text, L, S, n, dev, kind = key
    return results.slug(f"{model}_{text}_L{L}-S{S}-N{n}_{kind}")


# File names of the figures, one place, so that the report can find them.
def group_figures(key: tuple) -> dict[str, str]:
    return {k: f"{k}_{group_slug(key)}.png" for k in ("memory", "perplexity", "pareto", "bits")}


def layer_bits(rec: dict) -> float | None:
    """Bits per weight of the quantized layers, from the bytes stored: the record's own figure
    where it has one (bits_per_weight.quantized_layers); else, for a record with a byte breakdown
    (quantization) and nominal bits, bits x (codes + scales and zero points) / codes; a float
    baseline's own bits; None where the record cannot tell (llama.cpp's files)."""
    own = (rec.get("bits_per_weight") or {}).get("quantized_layers")
    if own:
        return own["bits_per_weight"]
    ident = registry.of(rec)
    if ident["part"] == "baseline":
        return float(ident["bits"])
    q = rec.get("quantization")
    if not q or not ident["bits"] or not q.get("quantized_weights"):
        return None
    return ident["bits"] * (q["quantized_weights"] + q["scales_and_zero_points"]) / q["quantized_weights"]


def _fused(rec: dict) -> str:
    """'_fused' in the figure names of a fused-step bench, '_calibrated' in those of the calibrated
    storage's (one model has three GPU benches)."""
    from speed.readings import calibrated_bench
    return "_calibrated" if calibrated_bench(rec) else "_fused" if "fused_path" in rec["bench"] else ""


def bench_figure(rec: dict) -> str:
    return (f"latency_{results.slug(rec['method']['name'])}{_fused(rec)}_{results.slug(short_model(rec))}_"
            f"{device_kind(rec)}.png")


def fast_figure(rec: dict) -> str:
    return f"fast_path{_fused(rec)}_{results.slug(short_model(rec))}_{device_kind(rec)}.png"


def fused_figure(rec: dict) -> str:
    from speed.readings import calibrated_bench
    return f"fused_step{'_calibrated' if calibrated_bench(rec) else ''}_{results.slug(short_model(rec))}_" \
           f"{device_kind(rec)}.png"


def sensitivity_figure(rec: dict) -> str:
    return f"sensitivity_{results.slug(short_model(rec))}.png"


def compare_figures(rec: dict) -> dict[str, str]:
    m = results.slug(short_model(rec))
    return {"levels": f"nf4_levels_{m}.png", "error": f"reconstruction_error_{m}.png"}


# -----------------------------------------------------------------------------
# Drawing

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


DPI = 130
MIN_FONT_KEY = "min_font_pt"          # PNG text chunk: the figure's smallest font size, in points


def _save(fig, out: Path, name: str, made: list[Path], layout: bool = True) -> None:
    """Write the figure; layout=False for one whose axes are placed by hand (no tight_layout)."""
    path = out / name
    if layout:
        fig.tight_layout()
    # the smallest text in it, in points at the figure's own size: the report scales the image to the
    # page and reads this back, to hold every figure's text to a legible size in print (report/doc.py)
    sizes = [t.get_fontsize() for t in fig.findobj(_plt().Text) if t.get_visible() and t.get_text().strip()]
    fig.savefig(path, dpi=DPI, bbox_inches="tight",          # text set outside the axes stays in
                metadata={MIN_FONT_KEY: f"{min(sizes, default=0):g}"})
    _plt().close(fig)
    made.append(path)


def by_family(rs: list[dict]) -> list[dict]:
    """Baselines, Part 1 INT8, Part 1 4-bit, bitsandbytes, GGUF (registry.FAMILIES' order, from
    each record's method.identity); within each, larger first."""
    return sorted(rs, key=lambda r: (registry.family_rank(r), -r["memory"]["weights_mib"], r["method"]["name"]))


def ordered(rs: list[dict]) -> list[dict]:
    return sorted(rs, key=lambda r: (not registry.is_baseline(r), r["memory"]["weights_mib"] * -1,
                                     r["method"]["name"]))


PARETO_HEIGHT_CM = 19.3       # memory against perplexity: two panels, one above the other, printed at full size


def plot_group(key: tuple, rs: list[dict], out: Path, made: list[Path]) -> None:
    plt = _plt()
    rs = ordered(rs)
    names = [r["method"]["name"] for r in rs]
    first = rs[0]
    L, S, n = key[2], key[3], key[4]
    cap = caption(first, f", L={L} S={S}, {n:,} tokens")
    names_of = group_figures(key)
    base = next((r["perplexity"]["ppl"] for r in rs if r["method"]["name"] == "baseline-fp32"), None)

    idents = {r["method"]["name"]: registry.of(r) for r in rs}
    labels = [idents[n]["label"] for n in names]
    mib = [r["memory"]["weights_mib"] for r in rs]
    fig, ax = plt.subplots(figsize=(5.4, 0.3 * len(rs) + 1.6))
    ax.barh(labels, mib, color="#4c72b0")
    column = ax.get_yaxis_transform()                # values in a column right of the axes
    for i, v in enumerate(mib):
        ax.text(1.02, i, f"{v:.1f}", transform=column, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_xlabel("weights (MiB)", fontsize=9)
    fig.suptitle(f"Memory by method\n{cap}", fontsize=9)
    _save(fig, out, names_of["memory"], made)

    if not perplexity_means_something(first):
        return
    fig, ax = plt.subplots(figsize=(5.4, 0.3 * len(rs) + 1.6))
    ppl = [r["perplexity"]["ppl"] for r in rs]
    ax.barh(labels, ppl, color="#dd8452")
    column = ax.get_yaxis_transform()
    for i, v in enumerate(ppl):
        label = f"{v:.3f}" + (f" ({100 * (v / base - 1):+.2f}%)" if base else "")
        ax.text(1.02, i, label, transform=column, va="center", fontsize=8)
    if base:
        ax.axvline(base, color="k", lw=0.8, ls="--")
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_xlabel("perplexity (corpus-level, token-weighted)", fontsize=9)
    fig.suptitle(f"Perplexity by method\n{cap}", fontsize=9)
    _save(fig, out, names_of["perplexity"], made)

    # Two panels, one above the other: every method, named in a column to its right (the 4-bit
    # runs crowd just above the best), then the cluster near the best perplexity, where the 8-bit
    # schemes sit on top of each other. Colours say the family, markers the member.
    fig, (ax, zoom) = plt.subplots(2, 1, figsize=(6.5, PARETO_HEIGHT_CM / 2.54),
                                   gridspec_kw={"height_ratios": [1.4, 1]})
    fig.subplots_adjust(left=0.1, right=0.6, top=0.885, bottom=0.07, hspace=0.28)
    # 6.5 in: 16.5 cm wide in the PDF, so 8 pt stays 8 pt
    front, best = [], float("inf")
    for x, y in sorted(zip(mib, ppl)):
        if y < best:
            front.append((x, y))
            best = y
    near = [(x, y, n) for x, y, n in zip(mib, ppl, names) if y <= min(ppl) * 1.03]
    for a in (ax, zoom):
        seen = {}
        for x, y, name in zip(mib, ppl, names):
            color, fam = idents[name]["color"], idents[name]["family"]
            k = seen[fam] = seen.get(fam, -1) + 1
            a.scatter([x], [y], marker="osD^v<>pPX*h"[k % 11], s=36, color=color, zorder=3)
        a.plot(*zip(*front), color="grey", lw=0.8, ls="--", zorder=2)
        a.set_xlabel("weights (MiB)", fontsize=9)
        a.tick_params(labelsize=8)
        a.set_ylabel("perplexity" + (" (log scale)" if a is ax else ""), fontsize=9)
    ax.set_yscale("log")                              # 4-bit's crowd near the best, 3-bit's far above
    ax.set_yticks(ticks := nice_log_ticks(min(ppl), max(ppl)), [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    pad_x = 0.08 * (max(x for x, _, _ in near) - min(x for x, _, _ in near) or 10)
    pad_y = 0.3 * (max(y for _, y, _ in near) - min(y for _, y, _ in near) or 0.05)
    zoom.set_xlim(min(x for x, _, _ in near) - 2 * pad_x, max(x for x, _, _ in near) + 2 * pad_x)
    zoom.set_ylim(min(y for _, y, _ in near) - pad_y, max(y for _, y, _ in near) + pad_y)
    column_labels(ax, [(x, y, n, f"{y:.2f}") for x, y, n in zip(mib, ppl, names) if (x, y, n) not in near],
                  idents, size=8)
    label_points(zoom, near, idents, spill="right")
    ax.set_title(f"every method but the {len(near)} below (dashed: Pareto front)", fontsize=9)
    zoom.set_title(f"zoom: within 3% of the best ({len(near)})", fontsize=9)
    fig.suptitle(f"Memory against perplexity\n{cap}", fontsize=9)
    _save(fig, out, names_of["pareto"], made, layout=False)
    plot_bits(rs, idents, cap, out, names_of["bits"], made)


# The bits figure splits its axis here: the 3- to 5-bit schemes apart from 8 bits and more, so that
# the crowd near 4 bits is not squeezed into a tenth of the width.
SPLIT_BITS = 7.0
PART_MARKERS = {"baseline": ("*", "float cast"), "part1": ("o", "Part 1, from scratch"),
                "part2": ("s", "bitsandbytes"), "bonus": ("D", "GGUF, llama.cpp"),
                "explore": ("^", "RTN / GPTQ / AWQ")}
LABEL_PT = 8.4             # label size at the figure's 7.5 in: the report's 16.5 cm column prints it at 7 pt
LINE = 1.12                # a label line, in label sizes: the gap that keeps stacked labels apart


def pct_label(v: float) -> str:
    """A perplexity change beside its point: one decimal from 10% up, two below, the floor as such."""
    return "≤0.01%" if v <= 0.01 else f"{v:+.1f}%" if v >= 10 else f"{v:+.2f}%"


def kld_label(v: float) -> str:
    """A KL divergence beside its point: three decimals, two significant digits below 0.01."""
    return "≤1e-04" if v <= 1e-4 else f"{v:.3f}" if v >= 0.01 else f"{v:.2g}"


def plot_bits(rs: list[dict], idents: dict, cap: str, out: Path, name: str, made: list[Path]) -> None:
    """The study's central picture: for every scheme of every part, the perplexity change against
    the bits per weight of its quantized layers and, for the records that measured it, the KL
    divergence from the unquantized model. Each point is named, with its value, in a column
    beside its panel (no label can sit on another); markers say the part, colours the family."""
    base = next((r for r in rs if r["method"]["name"] == "baseline-fp32"), None)
    if base is None:
        return
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter
    base_ppl = base["perplexity"]["ppl"]
    rows = []                                   # (bits, Δppl %, KLD or None, name, part)
    for r in rs:
        bits = layer_bits(r)
        if r is base or bits is None:
            continue
        kld = r["divergence"]["kld_mean"] if r.get("divergence") else None
        rows.append((bits, max(100 * (r["perplexity"]["ppl"] / base_ppl - 1), 0.01),
                     None if kld is None else max(kld, 1e-4), r["method"]["name"], idents[r["method"]["name"]]["part"]))
    if len(rows) < 2:
        return
    measures = [(1, "perplexity change against fp32 (%, log)", pct_label)]
    if any(row[2] is not None for row in rows):
        measures.append((2, "KL divergence from fp32 (nats, log)", kld_label))
    line_in = LABEL_PT * LINE / 72                                 # one label's height, inches
    counts = [max(sum(1 for row in rows if row[k] is not None and (row[0] < SPLIT_BITS) == low)
                  for low in (True, False)) for k, _, _ in measures]
    pads = [0.65] * (len(measures) - 1) + [0.9]    # ticks below each panel, the axis label under the last only
    heights = [max(2.6, n * line_in + pad) for n, pad in zip(counts, pads)]
    fig = plt.figure(figsize=(7.5, sum(heights) + 1.3))
    total, top = sum(heights) + 1.3, 1.0 - 0.75 / (sum(heights) + 1.3)
    # columns: [plot 3-5 bits][its labels][plot 8+ bits][its labels], in figure fractions
    cols = ((0.10, 0.18), (0.61, 0.10))
    for (k, ylabel, fmt), h, pad in zip(measures, heights, pads):
        bottom = top - h / total
        pts = [row for row in rows if row[k] is not None]
        lo, hi = min(row[k] for row in pts), max(row[k] for row in pts)
        axes = []
        for (x0, w), low in zip(cols, (True, False)):
            ax = fig.add_axes((x0, bottom + (pad - 0.35) / total, w, h / total - (pad - 0.1) / total))
            mine = [row for row in pts if (row[0] < SPLIT_BITS) == low]
            if not mine:
                ax.remove()
                continue
            for row in mine:
                ax.scatter([row[0]], [row[k]], marker=PART_MARKERS.get(row[4], ("o", ""))[0], s=30,
                           color=idents[row[3]]["color"], zorder=3, edgecolors="white", linewidths=0.4)
            ax.set_yscale("log")
            ax.set_ylim(lo / 1.6, hi * 1.6)
            ax.set_yticks(log_ticks(lo / 1.6, hi * 1.6))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(which="both", labelsize=8.5)
            ax.grid(True, which="major", lw=0.3, color="#dddddd")
            ax.set_xlabel(f"{'bits per weight, below 8' if low else '8 bits and more'} (quantized layers)"
                          if pad > 0.65 else "", fontsize=8.5)
            xs = [row[0] for row in mine]
            if low:
                ax.set_xlim(min(xs) - 0.15, max(xs) + 0.15)
            else:
                ax.set_xscale("log", base=2)
                ax.set_xlim(min(xs) / 1.15, max(xs) * 1.15)
                ax.set_xticks([t for t in (8, 16, 32) if min(xs) / 1.2 <= t <= max(xs) * 1.2])
                ax.get_xaxis().set_major_formatter(ScalarFormatter())
            if axes:                                     # the second panel shares the first's y axis
                ax.tick_params(labelleft=False)
            else:
                ax.set_ylabel(ylabel, fontsize=8.5)
            column_labels(ax, [(row[0], row[k], row[3], fmt(row[k])) for row in mine], idents)
            axes.append(ax)
        top = bottom
    handles = [plt.Line2D([], [], marker=m, ls="", color="#555555", label=words)
               for part, (m, words) in PART_MARKERS.items() if any(row[4] == part for row in rows)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.5, frameon=False)
    fig.suptitle(f"What each bit buys: every scheme, named with its value (floored at 0.01%)\n{cap}", fontsize=9)
    _save(fig, out, name, made, layout=False)


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis from lo to hi: 1-2-5 in each decade where that gives a few, else
    the powers of ten alone (so a range within one decade still has numbered ticks)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0 ** d for d in decades for m in (1, 2, 5) if lo <= m * 10.0 ** d <= hi]
    return [t for t in ticks if math.log10(t).is_integer()] if len(ticks) > 7 else ticks


def nice_log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis spanning less than a decade or two: 1, 1.5, 2, 3, 5 and 7 in each
    decade, every other one dropped while there are more than seven."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0 ** d for d in decades for m in (1, 1.5, 2, 3, 5, 7) if lo <= m * 10.0 ** d <= hi]
    while len(ticks) > 7:
        ticks = ticks[::2]
    return ticks or [lo, hi]


def column_labels(ax, points: list[tuple[float, float, str, str]], idents: dict[str, dict],
                  size: float = LABEL_PT) -> None:
    """Name each point in a column right of the axes, in the order of the points' heights,
    each label as near its point's height as the labels above it allow, joined to its point
    by a thin line. points: (x, y, method name, value text)."""
    if not points:
        return
    fig = ax.figure
    fig.canvas.draw()                                # limits settled, so data -> pixels is final
    box = ax.get_window_extent(fig.canvas.get_renderer())
    step = size * LINE * fig.dpi / 72                 # one label's height in pixels
    items = sorted(points, key=lambda p: -ax.transData.transform((p[0], p[1]))[1])
    ys = []
    for x, y, _, _ in items:
        want = min(ax.transData.transform((x, y))[1], box.y1)
        ys.append(min(want, ys[-1] - step) if ys else want)
    if ys[-1] < box.y0:                              # ran off the bottom: push the column up
        ys[-1] = box.y0
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = max(ys[i], ys[i + 1] + step)
    for (x, y, name, value), py in zip(items, ys):
        fy = (py - box.y0) / box.height
        ax.annotate(f"{idents[name]['label']}  {value}", (x, y), xytext=(1.04, fy), textcoords="axes fraction",
                    fontsize=size, va="center", ha="left", color=idents[name]["color"], annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", lw=0.35, color="#bbbbbb", shrinkA=1, shrinkB=3))


def label_points(ax, points: list[tuple[float, float, str]], idents: dict[str, dict] | None = None,
                 size: float = 8, spill: str = "right") -> None:
    """Write each point's name beside it, at the first of a list of nearby places where it
    overlaps no name already written, no marker and nothing outside the axes; a name moved up
    or down is joined to its point by a thin line. Names may run past the axes on the `spill`
    side only (where no other panel is). idents: each method's identity, for its label and
    colour; without it a name is its own label, in grey."""
    if not points:
        return
    from matplotlib.text import Text

    def label(name):
        return idents[name]["label"] if idents else name

    def color(name):
        return idents[name]["color"] if idents else registry.OTHER_COLOR
    fig = ax.figure
    fig.canvas.draw()                                # limits settled, so data -> pixels is final
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    marks = [to_px((x, y)) for x, y, _ in points]
    x_lo = fig.bbox.x0 if spill == "left" else box.x0
    x_hi = fig.bbox.x1 if spill == "right" else box.x1
    taken = []
    tries = [(side * 7, dy) for dy in (0, 9, -9, 18, -18, 27, -27, 36, -36, 45, -45, 54, -54, 66, -66, 80, -80)
             for side in (1, -1)]
    for x, y, name in sorted(points, key=lambda p: -to_px((p[0], p[1]))[1]):
        for dx, dy in tries:
            t = ax.annotate(label(name), (x, y), xytext=(dx, dy), textcoords="offset points",
                            fontsize=size, va="center", ha="left" if dx > 0 else "right",
                            color=color(name),
                            arrowprops=dict(arrowstyle="-", lw=0.4, color="#999999") if dy else None)
            t.update_positions(renderer)
            bb = Text.get_window_extent(t, renderer).expanded(1.02, 1.1)      # the text, not its leader line
            inside = x_lo <= bb.x0 and bb.x1 <= x_hi and box.y0 <= bb.y0 and bb.y1 <= box.y1
            clear = not any(bb.overlaps(o) for o in taken) and \
                not any(bb.x0 - 6 <= mx <= bb.x1 + 6 and bb.y0 - 6 <= my <= bb.y1 + 6 for mx, my in marks)
            if inside and clear:
                taken.append(bb)
                break
            t.remove()
        else:                                        # nowhere free: the plain place, overlap and all
            ax.annotate(label(name), (x, y), xytext=(7, 0), textcoords="offset points", fontsize=size,
                        va="center", color=color(name))


def selective_parts(rec: dict) -> tuple[str, str] | None:
    """(blocks, components) of a selective Part 1 run, as its identity writes them ('0-1',
    'qkv+attn_out'), or None for any other method."""
    sel = registry.of(rec)["selective"]
    return (sel["blocks"], sel["components"]) if sel else None


def plot_sensitivity(rec: dict, out: Path, made: list[Path]) -> None:
    plt = _plt()
    s = rec["sensitivity"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6.2, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    blocks = [r["block"] for r in s["block"]]
    a1.bar(blocks, [r["delta_pct"] for r in s["block"]], color="#8172b3")
    a1.set_xlabel("block quantized alone", fontsize=9)
    a1.set_ylabel("perplexity change (%)", fontsize=9)
    a1.tick_params(labelsize=8)
    a1.set_xticks(blocks[::2] if len(blocks) > 16 else blocks)
    comps = [r["component"] for r in s["component"]]
    a2.bar(comps, [r["delta_pct"] for r in s["component"]], color="#937860")
    a2.set_xlabel("component type, every block", fontsize=9)
    a2.tick_params(labelsize=8)
    a2.tick_params(axis="x", rotation=35)
    for a in (a1, a2):
        a.axhline(0, color="k", lw=0.6)
    p = rec["perplexity"]
    window = f", L={p['max_length']} S={p['stride']}, {p['n_tokens_scored']:,} tokens"
    scheme = rec["method"]["settings"].get("scheme", "")
    fig.suptitle(f"INT8 sensitivity ({scheme}), base ppl {s['baseline_ppl']:.3f}\n{caption(rec, window)}",
                 fontsize=9)
    _save(fig, out, sensitivity_figure(rec), made)


def plot_compare(rec: dict, out: Path, made: list[Path]) -> None:
    plt = _plt()
    c = rec["compare"]
    h = c["histogram"]
    model = short_model(rec) + (" (stand-in)" if rec["model"].get("stand_in") else "")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    lo, hi = h["range"]
    width = (hi - lo) / h["bins"]
    ax.bar([lo + (i + 0.5) * width for i in range(h["bins"])], h["counts"], width=width, color="#cccccc",
           label=f"w / absmax of its block of {h['block_size']}")
    for i, v in enumerate(h["levels"]["nf4"]):
        ax.axvline(v, color="#c44e52", lw=1.2, label="16 NF4 levels" if i == 0 else None)
    for i, v in enumerate(h["levels"]["uniform16"]):
        ax.axvline(v, color="#4c72b0", lw=1, ls=":", label="16 uniform levels" if i == 0 else None)
    e = h["code_entropy_bits"]
    ax.set_title(f"{h['layer']}: NF4 puts its levels where the weights are\n{model} · code entropy NF4 "
                 f"{e['nf4']:.2f} bits, uniform {e['uniform16']:.2f} bits (of 4)\n{device_of(rec)}", fontsize=9)
    ax.set_xlabel("w / absmax(block)", fontsize=9)
    ax.set_ylabel("weights", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper left", framealpha=1.0)
    _save(fig, out, compare_figures(rec)["levels"], made)

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    kinds = c["kinds"]
    for k in kinds:                   # scratch NF4 equals bnb NF4 exactly: dashed, so both show
        library = registry.entry(registry.COMPARE_KINDS[k]).part == "part2"
        ax.plot([r[f"rel_mse_{k}"] for r in c["layers"]], lw=1.6 if library else 1.0,
                ls="-" if library else (0, (4, 3)), label=f"{k} (mean {c['mean_rel_mse'][k]:.2e})")
    ax.set_yscale("log")
    ax.set_xlabel("block linear layer (in model order)", fontsize=9)
    ax.set_ylabel("MSE / mean(w²)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    ax.set_title(f"4-bit reconstruction error per layer, block {c['block_size']}\n{model} · {device_of(rec)}",
                 fontsize=9)
    _save(fig, out, compare_figures(rec)["error"], made)


def plot_all(records: list[dict], out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for key, rs in sorted(eval_groups(records).items()):
        if len(rs) >= 2:                                       # one bar compares nothing
            try:
                plot_group(key, rs, out, made)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                warnings.warn(f"skipping the figures of {group_slug(key)}: {type(e).__name__} {e}", stacklevel=2)
    from plots.models import plot_models
    from plots.speed import plot_anatomy, plot_bench, plot_fast, plot_fused, plot_sizes
    for r in records:
        kind = results.kind_of(r)
        if kind not in ("bench", "sensitivity", "compare"):
            continue
        try:
            {"bench": plot_bench, "sensitivity": plot_sensitivity, "compare": plot_compare}[kind](r, out, made)
            if kind == "bench" and "fast_path" in r["bench"]:
                plot_fast(r, out, made)
            if kind == "bench" and "fused_path" in r["bench"]:
                plot_fused(r, out, made)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            warnings.warn(f"skipping {r['_file']} ({kind}): {type(e).__name__} {e}", stacklevel=2)
    for plot, what in ((plot_sizes, "the model-size figure"), (plot_anatomy, "the anatomy figure"),
                       (plot_models, "the two-model figures")):
        try:
            plot(records, out, made)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            warnings.warn(f"skipping {what}: {type(e).__name__} {e}", stacklevel=2)
    return made


# -----------------------------------------------------------------------------
# CLI

RESULTS_DIR, FIGURES_DIR = "results", "report/figures"      # the defaults of main() and of the CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plot_results.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=RESULTS_DIR, help=f"folder of results JSON (default: {RESULTS_DIR})")
    p.add_argument("--out", default=FIGURES_DIR, help=f"where the PNG figures go (default: {FIGURES_DIR})")
    return p


def main(*, results: str = RESULTS_DIR, out: str = FIGURES_DIR) -> list[Path]:
    """Draw every figure that the records in `results` make into `out`; -> the PNG files."""
    results_dir, out = cli.expand_path(results), cli.expand_path(out)
    cli.check_output_dir(out, "--out")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        records = load_results(results_dir)
        made = plot_all(records, out)
    for path in made:
        print(path)
    print(f"{len(made)} figures from {len(records)} results files in {out}")
    return made


if __name__ == "__main__":
    cli.run_cli(main, build_parser())
