"""speed/readings.py and speed/anatomy.py's pure parts: the tables, ratios and bounds read from
records, computed independently here."""
import json

import pytest
import torch

from speed import anatomy, readings


def test_the_decode_floor_uses_the_gpus_own_bandwidth():
    """An H200 is not an H100: the floor comes from the device's spec peak, or is absent."""
    assert readings.hbm_bytes_per_s("NVIDIA H200") == 4.8e12
    assert readings.hbm_bytes_per_s("NVIDIA H100 80GB HBM3") == 3.35e12
    assert readings.hbm_bytes_per_s("NVIDIA H100 PCIe") == 2.0e12
    assert readings.hbm_bytes_per_s("NVIDIA GeForce RTX 4090") is None
    assert readings.decode_floor_ms(4_800_000_000, 4.8e12) == 1.0
    assert readings.decode_floor_ms(1, None) is None
    old = {"environment": {"device_name": "NVIDIA H200"}, "bench": {"hbm_bytes_per_s": 3.35e12}}
    assert readings.bench_bandwidth(old) == 4.8e12             # a bench made before the table assumed an H100


def test_the_bound_is_the_faster_of_the_chains_that_do_a_links_least_work():
    """bound_chain: separate kernels (vector) or one persistent kernel (grid-barrier), whichever
    measured faster; the empty and no-PDL chains never bound (the one does less than a link
    must, the other is a slower way to the same); a record from before the grid-barrier chain
    has the vector chain alone."""
    ch = lambda **ms: {c.replace("_", "-"): {"step_ms": {"median": v}} for c, v in ms.items()}   # noqa: E731
    assert readings.bound_chain(ch(empty=0.04, vector=0.08, vector_no_pdl=0.1, grid_barrier=0.1)) == "vector"
    assert readings.bound_chain(ch(empty=0.04, vector=0.08, grid_barrier=0.06)) == "grid-barrier"
    assert readings.bound_chain(ch(empty=0.04, vector=0.08, vector_no_pdl=0.07)) == "vector"


def test_link_times_split_the_profile_into_steps_and_what_each_link_adds():
    """Three steps of three kernels, each starting 0.5 us before the one before ends (PDL): a
    link adds its end minus the end of the link before, and the added times sum to the span."""
    seen, t = [], 100.0
    for _ in range(3):
        for name, dur in (("_embed", 2.0), ("_fused_gemv", 3.0), ("_argmax_emit", 1.0)):
            seen.append((name, t, dur))
            t += dur - 0.5
        t += 20.0
    roles = ["embed", "0.attn.c_attn", "1.attn.c_attn"]
    got = anatomy.link_times(seen, roles)
    assert got["steps_profiled"] == 3
    assert [(x["kernel"], x["us"], x["adds_us"]) for x in got["links"]] == [
        ("_embed", 2.0, 2.0), ("_fused_gemv", 3.0, 2.5), ("_argmax_emit", 1.0, 0.5)]
    assert readings.link_groups(got["links"]) == {"embed": {"links": 1, "adds_us": 2.0},
                                            "attn.c_attn": {"links": 2, "adds_us": 3.0}}
    assert "not a multiple" in anatomy.link_times(seen[:-1], roles)["why_not"]
    swapped = seen[:3] + [seen[4], seen[3], seen[5]] + seen[6:]
    assert "different kernels" in anatomy.link_times(swapped, roles)["why_not"]
    assert "saw 0 kernels" in anatomy.link_times([], roles)["why_not"]


def test_the_lowest_ratio_and_the_links_it_allows():
    """A step takes at least the longer of its chain and its weight bytes: with fp16's bytes
    52 us and INT8's 26 us, a 40 us chain allows 40/52, an 80 us chain 1.0, a 10 us chain
    26/52; most_links is the largest chain (in links of 1.3 us) whose ratio reaches 0.9."""
    assert readings.lowest_ratio(0.080, 0.026, 0.052) == 1.0
    assert readings.lowest_ratio(0.040, 0.026, 0.052) == pytest.approx(40 / 52)
    assert readings.lowest_ratio(0.010, 0.026, 0.052) == pytest.approx(0.5)
    n = readings.most_links(0.9, 1.3, 0.026, 0.052)
    assert n == 36
    lowest = readings.lowest_ratio
    assert lowest(n * 1.3e-3, 0.026, 0.052) <= 0.9 < lowest((n + 1) * 1.3e-3, 0.026, 0.052)
    assert readings.most_links(0.9, 1.3, 0.050, 0.052) is None       # bytes alone keep the ratio above 0.9


def test_an_anatomy_record_is_read_and_a_broken_one_is_refused():
    from conftest import anatomy_result

    import results
    rec = results.new_record("anatomy", "step-anatomy", {"methods": ["fp16"]}, {"id": "m"}, torch.device("cpu"),
                             anatomy=anatomy_result())
    assert results.record_problem(json.loads(json.dumps(rec))) is None
    rows = readings.anatomy_rows(rec["anatomy"])
    assert [r["name"] for r in rows] == ["fp16", "scratch-int8-fast", "chain: empty", "chain: vector",
                                         "chain: vector-no-pdl", "chain: grid-barrier"]
    assert rows[1]["most_links"] == int(0.9 * 0.05 * 1000 / (0.08 * 1000 / 63))
    assert "chain = the vector chain (the faster of vector and grid-barrier)" in readings.anatomy_text(rec["anatomy"])
    assert rows[3]["vs_fp16"] == pytest.approx(0.08 / rec["anatomy"]["steps"]["fp16"]["step_ms"]["median"])
    assert "all links" in readings.anatomy_text(rec["anatomy"])
    # 48 GEMVs and the head read the whole vector; 12 attentions, the embedding and the pick do not
    assert readings.mixed_chain_ms(rec["anatomy"]) == pytest.approx((49 * 0.08 + 14 * 0.04) / 63)
    broken = json.loads(json.dumps(rec))
    broken["anatomy"]["chains"]["vector"]["step_ms"]["median"] = 0
    assert "chains.vector.step_ms.median" in results.record_problem(broken)


def test_the_fused_table_keeps_every_method_and_peer_and_says_why_one_did_not_run():
    """fused_rows, which the terminal, RESULTS.md and the report all format: a method's fast
    path, fused step and weights-from-L2 step, the peers after them, and a reason where one
    did not run."""
    path = lambda ms, ratio: {"decode_ms_per_token": {"median": ms}, "vs_fp16_fused": ratio, "x_floor": 4.0}  # noqa: E731
    record = {"fused_path": "five kernels a block", "new_tokens": 4, "table": {
        "fp16": {"fast_path": path(0.8, 4.0), "leading_tokens_equal": 4, "fused_path": path(0.2, 1.0),
                 "fused_leading_tokens_equal": 3, "fused_kernels_per_step": 63,
                 "fused_l2_path": {**path(0.17, 0.85), "x_floor": None, "weight_bytes_share": 0.15}},
        "bnb-int8": {"fast_path": path(0.9, 4.5), "leading_tokens_equal": 4, "fused_path": None,
                     "why_not_fused": "LLM.int8() is not capturable"}},
        "peers": {"torchao-int8wo": {"why_not": "no GPU"},
                  "hf-static-compile": {**path(2.0, 10.0), "leading_tokens_equal": 2, "why_not": None}}}
    rows = readings.fused_rows(record)
    assert [(r["method"], r["path"]) for r in rows] == [
        ("fp16", "fast"), ("fp16", "fused"), ("fp16", "l2"), ("bnb-int8", "fast"), ("bnb-int8", "fused"),
        ("torchao-int8wo", "peer"), ("hf-static-compile", "peer")]
    assert (rows[1]["ms"], rows[1]["tokens"], rows[1]["kernels"], rows[1]["vs_fp16_fused"]) == (0.2, 3, 63, 1.0)
    assert (rows[2]["ms"], rows[2]["tokens"], rows[2]["x_floor"], rows[2]["weight_bytes_share"]) == (0.17, None, None,
                                                                                                   0.15)
    assert rows[4]["why_not"] == "not run: LLM.int8() is not capturable" and rows[4]["ms"] is None
    assert rows[5]["why_not"] == "cannot run: no GPU" and rows[6]["why_not"] is None and rows[6]["tokens"] == 2
    text = readings.fused_table_text(record)
    assert "not run: LLM.int8() is not capturable" in text and "cannot run: no GPU" in text and "3/4" in text
    assert "weights' bytes: 15% of the fused step" in text
    assert readings.fused_rows({"table": {}}) == [] and readings.fused_table_text({"table": {}}) == ""


def test_the_size_rows_compare_each_run_within_itself_smallest_model_first():
    """size_rows, which RESULTS.md, the figure and the report read: one row per CUDA bench with
    fp16 fused, sorted by parameters (fp16's bytes / 2); each method's l2 ratio is its own
    weights-in-L2 step over fp16's in the same run; a run without the diagnostic, a CPU bench
    and a bench without a fused step give no ratio they cannot back."""
    def path(ms, ratio=None):
        return {"decode_ms_per_token": {"median": ms}, "vs_fp16_fused": ratio, "x_floor": 2.0}

    def bench(model, n_bytes, fp16_l2, int8_l2, device="cuda:0"):
        table = {"fp16": {"weights_bytes": n_bytes, "fused_kernels_per_step": 63, "fused_path": path(1.0, 1.0),
                          "fused_l2_path": fp16_l2 and {**path(fp16_l2), "weight_bytes_share": 1 - fp16_l2}},
                 "scratch-int8-fast": {"fused_path": path(0.9, 0.9),
                                       "fused_l2_path": int8_l2 and {**path(int8_l2), "weight_bytes_share": 0.1}},
                 "scratch-int4-fast": {"fused_path": None}}
        return {"model": {"id": model, "stand_in": "x"}, "environment": {"device": device}, "bench": {"table": table}}
    calibrated = bench("calibrated", 1_000, 0.8, None)              # its own question, not a size point
    calibrated["bench"]["table"]["rtn-w4-g64-fast"] = {"fused_path": path(5.0, 5.0)}
    assert readings.calibrated_bench(calibrated) and not readings.calibrated_bench(bench("big", 3_000, 0.6, 0.72))
    rows = readings.size_rows([bench("big", 3_000, 0.6, 0.72), bench("small", 1_000, 0.8, None), calibrated,
                         bench("cpu", 10, 0.5, 0.5, device="cpu"),
                         {"model": {"id": "old"}, "environment": {"device": "cuda"},
                          "bench": {"table": {"fp16": {"fused_path": None}}}}])
    assert [(r["model"], r["params"]) for r in rows] == [("small", 500), ("big", 1_500)]
    assert rows[1]["scratch-int8-fast"]["l2_vs_fp16_l2"] == pytest.approx(1.2)     # 0.72 / 0.6
    assert rows[1]["scratch-int8-fast"]["free_unpack_vs_fp16_fused"] == pytest.approx(0.78)   # 0.6 + 0.9 - 0.72
    assert rows[1]["fp16_bytes_share"] == pytest.approx(0.4) and rows[1]["scratch-int4-fast"] is None
    assert rows[0]["scratch-int8-fast"]["l2_vs_fp16_l2"] is None and rows[0]["stand_in"]


def test_the_batch_table_reads_each_method_at_each_batch():
    """Ratios as the bench stored them; tokens/s and the sequences that decode as alone, per cell."""
    ms = lambda m: {"median": m, "p10": 0.9 * m, "p90": 1.1 * m}                        # noqa: E731
    cell = lambda m, b, vs, v1, eq: {"decode_ms_per_step": ms(m), "tokens_per_s": b / (m / 1e3), "vs_fp16": vs,  # noqa
                                     "vs_batch_1": v1, "rows_leading_tokens_equal": eq}
    result = {"baseline": "fp16", "new_tokens": 8, "batches": [1, 4], "decode_definition": "d", "note": "n",
              "table": {"fp16": {"batches": {"1": cell(2.0, 1, 1.0, 1.0, [8]), "4": cell(2.2, 4, 1.0, 1.1, [8] * 4)}},
                        "scratch-int4-fast": {"batches": {"1": cell(1.0, 1, 0.5, 1.0, [8]),
                                                          "4": cell(2.6, 4, 2.6 / 2.2, 2.6, [8, 3, 8, 8])}}}}
    rows = readings.batch_rows(result)
    assert [(r["method"], r["batch"]) for r in rows] == [("fp16", 1), ("fp16", 4), ("scratch-int4-fast", 1),
                                                         ("scratch-int4-fast", 4)]
    assert rows[3]["rows_alike"] == 3 and rows[3]["vs_base"] == pytest.approx(2.6 / 2.2)
    text = readings.batch_table_text(result)
    assert "| scratch-int4-fast | 4 | 2.600 (2.340-2.860) | 1538 | 1.18 | 2.60 | 3/4 |" in text
