"""Two models on one text: bits per byte against weight MiB (the frontier drawn), and against decode time.

The assignment asks whether a larger quantized model beats a smaller unquantized one. Two
models' perplexities do not compare (their tokenizers cut the text differently); bits per byte
does: the same total negative log-likelihood, in bits, over the UTF-8 bytes of the text the
scored tokens spell (study/perplexity.tokenizer_free). Every eval record of a real model (not
random weights) with that figure enters, grouped by text, window, stride and device; a group
with at least two models makes the figures. Its frontier: the points that no point of less or
equal memory beats; they and each model's baselines are named on the figure.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import plot_results as pr
import results
from study import registry, standins

MODEL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
PART_MARKERS = {"baseline": "o", "part1": "s", "part2": "^", "bonus": "D", "explore": "v"}


def model_groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """(text, window, stride, device, device kind, token budget) -> the eval records of real models
    with bits per byte."""
    groups = defaultdict(list)
    for r in records:
        p = r.get("perplexity") or {}
        if results.kind_of(r) != "eval" or results.random_weights(r) or p.get("bits_per_byte") is None:
            continue
        key = (r["dataset"].get("sha256"), p["max_length"], p["stride"], pr.device_of(r), pr.device_kind(r),
               r["dataset"].get("max_tokens") or 0)
        groups[key].append(r)
    return {k: rs for k, rs in groups.items() if len({pr.short_model(r) for r in rs}) >= 2}


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (cost, bits per byte) that no point of less or equal cost beats, by cost."""
    best, out = float("inf"), []
    for x, y in sorted(points):
        if y < best:
            best = y
            out.append((x, y))
    return out


def frontier_runs(rs: list[dict], cost=lambda r: r["memory"]["weights_mib"]) -> set[tuple[float, float]]:
    """The frontier's (cost, bits per byte) over the runs that measure their scheme: a run that rounds
    a stand-in back to its own origin format (standins.requantizes_origin) is left off."""
    return set(frontier([(cost(r), r["perplexity"]["bits_per_byte"]) for r in rs
                         if not standins.requantizes_origin(r)]))


OFFSETS = ((4, 3, "left"), (4, -11, "left"), (-4, 3, "right"), (-4, -11, "right"))   # points, alignment
# a baseline or the point where the frontier changes model, with no room at its corners (a crowded
# memory, where the answer's comparison lies), is named further out, joined to its point by a line
FAR_OFFSETS = tuple(sorted(((dx, dy, "center" if dx == 0 else "left" if dx > 0 else "right")
                           for dy in (30, -38, 50, -58, 70, -78) for dx in (0, 40, -40)),
                          key=lambda o: abs(o[0]) + abs(o[1])))


def label_points(ax, points: list[tuple[float, float, dict]], colors: dict[str, str], front: set,
                 every: list[tuple[float, float, dict]] | None = None) -> None:
    """Name these points: where the frontier changes model first, then the frontier's, then the rest,
    each only where its name would overprint no name placed before it and no other point (the text's
    own drawn box is what is checked); RESULTS.md's two-model table names every point."""
    from matplotlib.text import Text
    fig = ax.figure
    fig.tight_layout()                      # the layout it is saved in: the boxes are checked in it
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    marks = [ax.transData.transform((x, y)) for x, y, _ in (every or points)]     # no name hides any point
    frame = ax.get_window_extent(renderer)                         # a name stays inside the axes
    placed = []
    on = sorted((p for p in points if (p[0], p[1]) in front), key=lambda p: p[0])
    turns = {(b[0], b[1]) for a, b in zip(on, on[1:]) if pr.short_model(a[2]) != pr.short_model(b[2])}
    named = set()                          # points already named with another on the same spot
    for x, y, r in sorted(points, key=lambda p: ((p[0], p[1]) not in turns, (p[0], p[1]) not in front, p[0])):
        if id(r) in named:
            continue
        own = ax.transData.transform((x, y))
        # one model's points whose markers coincide (fp16 and bf16 at one memory) take one name
        same = [q for q in points if pr.short_model(q[2]) == pr.short_model(r) and q[2] is not r
                and abs(ax.transData.transform((q[0], q[1])) - own).max() < 3]
        named.update(id(q[2]) for q in same)
        name = " / ".join(q[2]["method"]["name"] + (" (origin)" if standins.requantizes_origin(q[2]) else "")
                          for q in [(x, y, r), *same])
        far = FAR_OFFSETS if registry.is_baseline(r) or (x, y) in turns else ()    # the answer's points: a line
        for dx, dy, ha in OFFSETS + far:                           # above right first, then the other corners
            line = {} if (dx, dy, ha) in OFFSETS else {"arrowprops": {"arrowstyle": "-", "lw": 0.5, "shrinkB": 3,
                                                                      "color": colors[pr.short_model(r)]}}
            text = ax.annotate(pr.short_model(r) + " " + name if line else name, (x, y), xytext=(dx, dy),
                               textcoords="offset points", fontsize=8, ha=ha, color=colors[pr.short_model(r)],
                               **line)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).expanded(1.05, 1.2)      # the words, not the line
            near = box.padded(4)                                   # a marker's half-width, in pixels
            hits_point = any(near.contains(mx, my) for mx, my in marks
                             if abs(mx - own[0]) + abs(my - own[1]) > 0.5)
            if not line:                   # a name with no line must sit nearer its own point than any other
                cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
                mine = (cx - own[0]) ** 2 + (cy - own[1]) ** 2
                hits_point = hits_point or any((cx - mx) ** 2 + (cy - my) ** 2 < mine for mx, my in marks
                                               if abs(mx - own[0]) + abs(my - own[1]) > 0.5)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not hits_point and not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            text.remove()


def models_figure(key: tuple, what: str) -> str:
    """The figure's file: the text's sha256, the window, the token budget, the device (its name's
    sha256, so two GPUs of one kind do not share a file)."""
    import hashlib
    sha, L, S, device, kind, budget = key
    dev = hashlib.sha256(device.encode()).hexdigest()[:6]
    return f"models_bpb_vs_{what}_{str(sha)[:8]}_L{L}-S{S}-T{budget or 'all'}_{kind}-{dev}.png"


def plot_models(records: list[dict], out: Path, made: list[Path]) -> None:
    for key, rs in sorted(model_groups(records).items(), key=lambda kv: str(kv[0])):
        plot_one(key, rs, "mib", lambda r: r["memory"]["weights_mib"], "weight MiB (log)", out, made)
        timed = [r for r in rs if r.get("latency")]
        if len({pr.short_model(r) for r in timed}) >= 2:
            plot_one(key, timed, "decode", lambda r: r["latency"]["decode"]["ms_per_token"]["median"],
                     "decode ms per token (generate(), median; separate runs, log)", out, made)


def plot_one(key: tuple, rs: list[dict], what: str, cost, xlabel: str, out: Path, made: list[Path]) -> None:
    plt = pr._plt()
    models = sorted({pr.short_model(r) for r in rs})
    fig, ax = plt.subplots(figsize=(7.4, 4.1))
    points, colors = [], {}
    for i, model in enumerate(models):
        mine = [r for r in rs if pr.short_model(r) == model]
        colors[model] = MODEL_COLORS[i % len(MODEL_COLORS)]
        span = {r["perplexity"].get("n_bytes") for r in mine}
        for r in mine:
            x, y = cost(r), r["perplexity"]["bits_per_byte"]
            ident, hollow = registry.of(r), standins.requantizes_origin(r)
            ax.scatter([x], [y], color="none" if hollow else colors[model], marker=PART_MARKERS.get(ident["part"], "o"),
                       s=36, zorder=3, linewidth=0.8,
                       edgecolor=colors[model] if hollow else "k" if ident["part"] == "baseline" else "none")
            points.append((x, y, r))
        ax.scatter([], [], color=colors[model], marker="o",
                   label=f"{model} ({', '.join(f'{b:,}' for b in sorted(span))} bytes scored)")
    if any(standins.requantizes_origin(r) for _, _, r in points):
        ax.scatter([], [], color="none", edgecolor="#777777", marker="D", linewidth=0.8,
                   label="hollow: back to its stand-in's origin format (off the frontier)")
    front = sorted(frontier_runs([r for _, _, r in points], cost))
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=0.9, ls="--",
            label="frontier: nothing cheaper scores lower", zorder=2)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    xs = [x for x, _, _ in points]
    ax.xaxis.set_major_locator(FixedLocator([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                                         10000, 20000) if min(xs) / 1.5 <= t <= max(xs) * 1.5]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("bits per byte (lower is better)", fontsize=9)
    ax.tick_params(which="both", labelsize=8.5)
    for part, marker in PART_MARKERS.items():
        if any(registry.of(r)["part"] == part for r in rs):
            ax.scatter([], [], color="#777777", marker=marker, label=part)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, borderaxespad=0,
              frameon=False)                                            # below the axes: no point hidden
    ax.set_title(f"Two models, one text: bits per byte against {'memory' if what == 'mib' else 'decode time'}\n"
                 f"{pr.text_name(rs[0], short=True)}, L={key[1]} S={key[2]} · {key[3]}", fontsize=9)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.07 * (hi - lo), hi)                            # room for a name under the lowest points
    label_points(ax, [(x, y, r) for x, y, r in points if (x, y) in set(front) or registry.is_baseline(r)   # last:
                      or standins.requantizes_origin(r)], colors, set(front), points)    # in the final layout
    pr._save(fig, out, models_figure(key, what), made)
