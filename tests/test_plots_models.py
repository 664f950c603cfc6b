"""plots/models.py: two models on one text, by bits per byte, with the frontier."""
import copy

from conftest import record, timing

from plots import models


def test_the_frontier_keeps_what_nothing_cheaper_beats():
    pts = [(10, 1.5), (5, 1.2), (20, 1.1), (8, 1.3), (40, 1.12), (80, 1.0)]
    assert models.frontier(pts) == [(5, 1.2), (20, 1.1), (80, 1.0)]


def two_models():
    recs = []
    for model, base_bpb, n_bytes in (("small", 1.07, 64757), ("large", 1.05, 66890)):
        for method, mib, extra in (("baseline-fp32", 500.0, 0.0), ("bnb-nf4", 150.0, 0.04)):
            r = record(method, 20.0, mib if model == "large" else mib / 2, model=model, latency=timing(10, 5))
            r["dataset"]["sha256"] = "a" * 64
            r["perplexity"].update(bits_per_byte=base_bpb + extra, n_bytes=n_bytes, word_perplexity=40.0)
            recs.append(r)
    return recs


def test_two_models_on_one_text_make_both_figures(tmp_path):
    recs = two_models()
    random = copy.deepcopy(recs[0])
    random["model"] = {"id": "/x/rand", "random_weights": True}                # never on a bits-per-byte figure
    groups = models.model_groups(recs + [random])
    assert len(groups) == 1 and len(next(iter(groups.values()))) == 4
    made = []
    models.plot_models(recs + [random], tmp_path, made)
    assert sorted(p.name.split("_")[3] for p in made) == ["decode", "mib"]
    assert all(p.stat().st_size > 5000 for p in made)


def test_one_model_alone_makes_no_figure(tmp_path):
    made = []
    models.plot_models([r for r in two_models() if r["model"]["id"].endswith("small")], tmp_path, made)
    assert made == []


def test_results_table_lists_both_models_by_memory_with_the_frontier(tmp_path):
    import importlib.util
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "results_table.py"
    spec = importlib.util.spec_from_file_location("results_table", path)
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    recs = two_models()
    text = rt.models_tables(recs)
    rows = [line for line in text.splitlines() if line.startswith("| small") or line.startswith("| large")]
    assert [r.split(" | ")[1] for r in rows] == ["bnb-nf4", "bnb-nf4", "baseline-fp32", "baseline-fp32"]
    assert [r.rstrip(" |").endswith("yes") for r in rows] == [True, True, True, True]
    assert "| small | bnb-nf4 | 75.0 | – | 1.1100 | +3.74% |" in text        # 1.11 / 1.07 - 1
    assert "small: 64,757 bytes" in text and json.dumps(recs)                # the spans are said


def test_a_run_back_to_its_stand_ins_origin_format_is_shown_apart_and_off_the_frontier(tmp_path):
    """gemma3-270m was dequantized from Q4_K_M: its GGUF Q4_K_M run re-rounds onto the same grids and
    scores almost as fp32 at a quarter of the memory. It measures the origin, so it must not become the
    frontier's (and the question's) answer; a Q4_0 run of it, another format, stays on it."""
    import importlib.util
    from pathlib import Path

    from study import standins
    recs = two_models()
    for r in recs:
        r["model"] = {"id": r["model"]["id"].replace("/x/large", "gemma3-270m"), "local": True}
    q4km = record("gguf-q4_k_m", 20.1, 100.0, model="large")
    q4_0 = record("gguf-q4_0", 30.0, 60.0, model="large")
    for r, t, bpb in ((q4km, "Q4_K_M", 1.0501), (q4_0, "Q4_0", 1.2)):
        r["model"] = {"id": "gemma3-270m", "local": True}
        r["method"]["settings"] = {"gguf_type": t}
        r["dataset"]["sha256"] = "a" * 64
        r["perplexity"].update(bits_per_byte=bpb, n_bytes=66890, word_perplexity=40.0)
    assert standins.requantizes_origin(q4km) and not standins.requantizes_origin(q4_0)
    rs = recs + [q4km, q4_0]
    front = models.frontier_runs(rs)
    assert (100.0, 1.0501) not in front and (60.0, 1.2) in front
    path = Path(__file__).resolve().parents[1] / "scripts" / "results_table.py"
    spec = importlib.util.spec_from_file_location("results_table", path)
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    rows = {line.split(" | ")[1]: line for line in rt.models_tables(rs).splitlines() if line.startswith("| ")}
    assert rows["gguf-q4_k_m"].rstrip(" |").endswith("origin") and rows["gguf-q4_0"].rstrip(" |").endswith("yes")
    made = []
    models.plot_models(rs, tmp_path, made)
    assert len(made) == 2                                             # both figures draw with the hollow point


def test_names_stay_inside_the_axes_and_hide_no_point():
    """Crowded points at the bottom edge: every name placed lies inside the axes and covers no point
    (its own excepted), labelled or not; a name that cannot be placed so is left off."""
    import plot_results as pr
    plt = pr._plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = []
    for i, (x, y) in enumerate([(100, 1.05), (104, 1.052), (108, 1.05), (300, 1.06), (310, 1.3), (101, 1.2)]):
        r = record("baseline-fp32" if i < 4 else "bnb-nf4", 20.0, x, model="m")
        ax.scatter([x], [y])
        pts.append((x, y, r))
    ax.set_xscale("log")
    labelled = pts[:4]
    models.label_points(ax, labelled, {"m": "k"}, {(x, y) for x, y, _ in labelled}, pts)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    names = [t for t in ax.texts]
    assert names                                                    # at least one name fits
    from matplotlib.text import Text
    for t in names:
        box = Text.get_window_extent(t, renderer)           # the words (a far name's thin line may pass by)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        own = ax.transData.transform(t.xy)
        for x, y, _ in pts:
            mx, my = ax.transData.transform((x, y))
            if abs(mx - own[0]) + abs(my - own[1]) > 0.5:
                assert not box.contains(mx, my)
    plt.close(fig)


def test_a_crowded_baseline_is_named_further_out_and_coinciding_points_once():
    """Two baselines of one model on one spot (fp16 and bf16 at the same memory) take one name that
    holds both; where no corner is free, a baseline is named further out, joined by a line."""
    import plot_results as pr
    plt = pr._plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = []
    for name, x, y in [("baseline-fp16", 256.6, 1.07), ("baseline-bf16", 256.6, 1.0701),
                       ("scratch-int8-per_channel", 250, 1.0705), ("gguf-q8_0", 262, 1.069), ("gguf-q4_0", 100, 1.3)]:
        r = record(name, 20.0, x, model="m")
        ax.scatter([x], [y])
        pts.append((x, y, r))
    ax.set_xscale("log")
    models.label_points(ax, pts[:2], {"m": "k"}, set(), pts)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["m baseline-fp16 / baseline-bf16"]               # one name, further out: the model too
    assert ax.texts[0].arrow_patch is not None
    plt.close(fig)
