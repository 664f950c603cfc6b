"""Shared fixtures: tiny random models, a tokenizer and a text, all made offline."""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")        # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return tiny_models.synthetic_text(n_lines=120, seed=1)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory, tiny_text) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    # CRLF line ends, like the shared WikiText file, to exercise universal newlines.
    path.write_bytes(tiny_text.replace("\n", "\r\n").encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", arch="gpt2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory) -> Path:
    """Gemma 3's shape: one KV head, sliding windows, a scaled tied embedding, (1 + w) norms."""
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gemma3", arch="gemma3")


@pytest.fixture(params=["gpt2", "llama", "gemma3"])
def tiny_dir(request, gpt2_dir, llama_dir, gemma3_dir) -> Path:
    return {"gpt2": gpt2_dir, "llama": llama_dir, "gemma3": gemma3_dir}[request.param]


@pytest.fixture()
def cli_error(capsys):
    """cli_error(module, argv): run that script's CLI on argv, check that it ends in one line
    on stderr, a non-zero exit and no traceback, and return the line."""
    import evaluate as ev

    def run(module, argv) -> str:
        with pytest.raises(SystemExit) as e:
            ev.run_cli(module.main, module.build_parser(), argv)
        assert e.value.code != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err
    return run


# -----------------------------------------------------------------------------
# A fixture set of results files, as the scripts write them (only the fields read), one malformed.

def record(method, ppl, mib, model="m-small", device="cpu: test", stand_in=None, memory_disk=None, **extra):
    from study import registry
    identity = registry.identity(method.removesuffix("-sensitivity"))      # as the writer stamps it
    return {"schema_version": 3, "kind": "sensitivity" if "sensitivity" in extra else "eval",
            "method": {"name": method, "settings": {"scheme": "per_channel"},
                                            "identity": identity},
            "model": {"id": f"/x/{model}", "stand_in": stand_in},
            "dataset": {"id": "file:/t/wiki.test.raw", "sha256": "0" * 64},
            "perplexity": {"ppl": ppl, "max_length": 64, "stride": 32, "n_tokens_scored": 999},
            "memory": {"weights_mib": mib, "disk_mib": memory_disk},
            "environment": {"device": "cpu" if device.startswith("cpu") else "cuda:0", "device_name": device},
            "timestamp": "2026-11-23T10:00:00+00:00", **extra}


def timing(prefill_ms, decode_ms):
    """A run's own latency block, as evaluate.py writes it (1x333 prefill, 77 tokens after 11)."""
    def stat(x):
        return {"median": x, "p10": 0.9 * x, "p90": 1.1 * x, "min": 0.8 * x, "max": 1.2 * x, "n": 3}
    return {"unit": "ms", "prefill": {"tokens": 333, **stat(prefill_ms)},
            "decode": {"prompt_tokens": 11, "new_tokens": 77, "definition": "generate() wall time / new tokens",
                       "ms_per_token": stat(decode_ms)}, "repeats": 3, "warmup": 1}


KERNEL_OF = {"embed": "_embed", "attention": "_decode_attention", "lm_head": "_argmax_head",
             "pick token": "_argmax_emit"}                    # a link's kernel, by role (the rest: GEMVs)
BLOCK_US = {"fp16": (2.5, 2.7, 1.5, 4.2, 3.0), "scratch-int8-fast": (2.3, 2.7, 1.6, 3.9, 3.1)}   # a block's links


def anatomy_result():
    """A fused-step anatomy (anatomy.anatomy's result) of GPT-2 small's shape, fp16 and INT8:
    63 links (12 blocks of BLOCK_US), each step the sum of its links; the vector chain 0.08
    ms (the grid-barrier chain 0.1), fp16's bytes 0.05 ms at peak, INT8's 0.025."""
    summ = lambda ms: {"median": ms, "p10": ms, "p90": ms, "min": ms, "max": ms, "n": 3}     # noqa: E731
    roles = ("attn.c_attn", "attention", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    steps = {}
    for name, b, head in (("fp16", 2.4e8, 22.0), ("scratch-int8-fast", 1.2e8, 19.0)):
        links = ([("embed", 1.5)] + [(f"{i}.{r}", us) for i in range(12) for r, us in zip(roles, BLOCK_US[name])]
                 + [("lm_head", head), ("pick token", 2.0)])
        ms = sum(us for _, us in links) / 1000
        steps[name] = {"weights_bytes": b, "weights_mib": b / 2**20, "floor_ms": b / 4.8e9,
                       "fused_leading_tokens_equal": 8, "fused_tiles": None, "steps_profiled": 2,
                       "links": [{"role": r, "kernel": KERNEL_OF.get(r.split(".")[-1], "_fused_gemv"), "us": us,
                                  "adds_us": us} for r, us in links],
                       "step_ms": summ(ms), "l2_step_ms": summ(ms * 0.9)}
    base = steps["fp16"]["step_ms"]["median"]
    for s in steps.values():
        s.update(vs_baseline=s["step_ms"]["median"] / base, l2_vs_baseline=s["l2_step_ms"]["median"] / base,
                 lowest_ratio=1.0)
    chains = {c: {"step_ms": summ(ms), "definition": c} for c, ms in (("empty", 0.04), ("vector", 0.08),
                                                                     ("vector-no-pdl", 0.1), ("grid-barrier", 0.1))}
    return {"steps": steps, "chains": chains, "baseline": "fp16", "links": 63, "width": 768, "repeats": 3,
            "new_tokens": 8, "hbm_bytes_per_s": 4.8e12, "profile_definition": "profiled",
            "lowest_ratio_definition": "max(chain, floor) / max(chain, fp16 floor)"}


def bench_table(names):
    stat = {"median": 2.0, "p10": 1.9, "p90": 2.1}
    return {n: {"prefill_ms": stat, "decode_ms_per_token": stat, "prefill_ratio": 1.0 + i / 10,
                "decode_ratio": 1.0 - i / 10, "weights_mib": 10.0 / (i + 1)} for i, n in enumerate(names)}


def fast_bench_table():
    """fast_decode.py's table for three methods: the fast path, per-layer times, the kernel check."""
    table = bench_table(["fp16", "scratch-int4-fast", "scratch-nf4-fast"])
    for (_, v), decode_ms, lin, err in zip(table.items(), (0.8, 0.6, 0.9), (240.0, 170.0, 260.0), (None, 4e-4, 5e-4)):
        layer = {"median": lin / 10}
        v.update({"floor_ms": 0.05, "cuda_graph": True, "why_no_graph": None, "tokens_equal_generate": True,
                  "leading_tokens_equal": 77, "peak_bytes": 2**20, "kernel_max_rel_err": err,
                  "linear_us_per_token": lin,
                  "layers_us": {"graph": True, "attn.c_attn": layer, "attn.c_proj": layer, "mlp.c_fc": layer,
                                "mlp.c_proj": layer, "lm_head": layer},
                  "fast_path": {"prefill_ms": {"median": 1.5}, "decode_ms_per_token": {"median": decode_ms},
                                "prefill_ratio": 1.0, "decode_ratio": decode_ms / 0.8, "x_floor": decode_ms / 0.05}})
    return table


@pytest.fixture()
def results_dir(tmp_path, gpt2_dir):
    import evaluate as ev
    import part2_bnb_nf4 as p2
    d = tmp_path / "results"
    d.mkdir()
    files = {
        "a.json": record("baseline-fp32", 20.0, 100.0, latency=timing(12.34, 5.67)),
        "b.json": record("scratch-int8-per_channel", 20.1, 26.0, latency=timing(9.87, 4.32)),
        "c.json": record("bnb-nf4", 25.0, 14.0),
        "d.json": record("bnb-fp4", 31.25, 14.0),
        "e.json": record("scratch-int4-int4", 27.5, 14.5),
        "f.json": record("gguf-q8_0", 20.2, 27.0, memory_disk=28.25),
        "inspect.json": {"schema_version": 3, "kind": "gguf-inspect", "stand_in": "m-small (stand-in)",
                         "gguf_inspection": {
            "file": "m-small-Q8_0.gguf", "file_bytes": 29622272, "tensor_bytes": 28311552,
            "header": {"magic": "GGUF", "version": 3, "tensor_count": 2, "kv_count": 2},
            "metadata": {"general.architecture": "gpt2", "gpt2.block_count": 2},
            "tensors": [{"name": "token_embd.weight", "type": "Q8_0", "shape": [64, 256], "bytes": 17408},
                        {"name": "blk.0.attn_qkv.weight", "type": "Q8_0", "shape": [64, 192], "bytes": 13056}],
            "bytes_by_type": {"Q8_0": 28311552}}},
        "other.json": record("baseline-fp32", 9.0, 5.0, model="lonely"),          # a group of one: no figure
        "bench.json": {"schema_version": 3, "kind": "bench", "method": {"name": "bnb-bench"},
                       "model": {"id": "g", "stand_in": "x"},
                       "dataset": {"id": "t"}, "environment": {"device": "cuda:0", "device_name": "NVIDIA Test GPU"},
                       "bench": {"table": bench_table(["fp16", "bnb-nf4"]), "baseline": "fp16", "repeats": 3,
                                 "prefill_tokens": 333, "prompt_tokens": 11, "new_tokens": 77}},
        "fast.json": {"schema_version": 3, "kind": "bench", "method": {"name": "gpu-decode-bench"},
                      "model": {"id": "/x/g2", "stand_in": "g2 (stand-in)"}, "dataset": {"id": "t"},
                      "environment": {"device": "cuda:0", "device_name": "NVIDIA Test GPU"},
                      "bench": {"table": fast_bench_table(), "baseline": "fp16", "repeats": 3, "prefill_tokens": 333,
                                "prompt_tokens": 11, "new_tokens": 77, "fast_path": "static KV cache, CUDA graphs",
                                "layers_definition": "50 calls per graph", "hbm_bytes_per_s": 1.23e12}},
        "batch.json": {"schema_version": 3, "kind": "batch", "method": {"name": "batch-decode-bench"},
                       "model": {"id": "/x/l1", "stand_in": "l1 (stand-in)"}, "dataset": {"id": "t"},
                       "environment": {"device": "cuda:0", "device_name": "NVIDIA Test GPU"},
                       "batch": batch_result()},
        "sens.json": record("scratch-int8-per_channel-sensitivity", 20.0, 100.0, sensitivity={
            "baseline_ppl": 20.0, "block": [{"block": "0", "delta_pct": 0.1}, {"block": "1", "delta_pct": -0.02}],
            "component": [{"component": "qkv", "delta_pct": 0.2}]}),
        "cmp.json": {"schema_version": 3, "kind": "compare", "method": {"name": "nf4-vs-linear-4bit"},
                     "model": {"id": "tiny"},
                     "environment": {"device": "cpu", "device_name": "cpu"}},
    }
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    files["cmp.json"]["compare"] = p2.compare_4bit(model)
    for name, rec in files.items():
        (d / name).write_text(json.dumps(rec))
    (d / "broken.json").write_text('{"schema_version": 3, "method": ')                # cut off mid-write
    return d




def batch_result() -> dict:
    """A batch bench's result (speed/batch_bench.py's shape): fp16 and int4 at batch 1 and 4."""
    ms = lambda m: {"median": m, "p10": 0.9 * m, "p90": 1.1 * m, "min": 0.8 * m, "max": 1.2 * m, "n": 3}  # noqa
    cell = lambda m, b, vs, v1: {"decode_ms_per_step": ms(m), "tokens_per_s": b / (m / 1e3), "vs_fp16": vs,  # noqa
                                 "vs_batch_1": v1, "rows_leading_tokens_equal": [77] * b,
                                 "cuda_graph": True, "why_no_graph": None}
    return {"baseline": "fp16", "compute_dtype": "float16", "batches": [1, 4], "repeats": 3, "warmup": 1,
            "prompt_tokens": 11, "new_tokens": 77, "order": "round-robin", "decode_definition": "ms per step",
            "note": "vs_fp16: at the same batch", "hbm_bytes_per_s": 1.23e12,
            "table": {"fp16": {"weights_mib": 2357.0, "batches": {"1": cell(4.0, 1, 1.0, 1.0),
                                                                  "4": cell(4.4, 4, 1.0, 1.1)}},
                      "scratch-int4-fast": {"weights_mib": 700.0, "batches": {"1": cell(2.0, 1, 0.5, 1.0),
                                                                             "4": cell(5.5, 4, 1.25, 2.75)}}}}


def prompt_of(tokenizer, n=12):
    """The first n tokens of a fixed sentence, (1, n): the speed tests' prompt."""
    import evaluate as ev
    ids = ev.tokenize(tokenizer, "the quick brown fox jumps over the lazy dog " * 4)
    return ids.reshape(-1)[:n][None]
