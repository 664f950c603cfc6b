"""fast_decode.py on the CPU: the static-cache path makes the same greedy tokens as
generate(), its prefill the same logits; the fused Triton kernels (under Triton's
interpreter) equal dequantize-then-matmul; bad input is one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate as ev
import fast_decode as fd
import part1_quantize_scratch as p1


def prompt_of(tokenizer, n=12):
    ids = ev.tokenize(tokenizer, "the quick brown fox jumps over the lazy dog " * 4)
    return ids.reshape(-1)[:n][None]


@pytest.mark.parametrize("arch,quant", [("gpt2", None), ("gpt2", "int8"), ("gpt2", "nf4"),
                                        ("llama", None), ("llama", "int8")])
def test_fast_path_tokens_equal_generate(gpt2_dir, llama_dir, arch, quant):
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    if quant == "int8":
        p1.quantize_model(model, "whole", 8, "per_channel")
    elif quant == "nf4":
        p1.quantize_model(model, "whole", 4, "nf4")
    prompt = prompt_of(tok)
    ref = fd.generate_tokens(model, tok, prompt, 20)
    fast = fd.FastDecoder(model, prompt.shape[1], 20, graphs=True)      # no CUDA: runs eagerly
    fast.capture()
    assert not fast.graphs and fast.why_no_graph
    got = fast.generate(prompt)
    assert torch.equal(got, ref)
    assert torch.equal(fast.generate(prompt), ref)                      # a second run starts clean


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fast_prefill_logits_equal_the_model(gpt2_dir, llama_dir, arch):
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    ids = prompt_of(tok, 24)
    fast = fd.FastDecoder(model, 4, 4, prefill_tokens=24)
    got = fast.prefill(ids)
    with torch.no_grad():
        ref = model(ids).logits
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_kernel_error_catches_a_layer_that_computes_the_wrong_thing(gpt2_dir):
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    assert fd.kernel_error(model) is None                               # no Part 1 layers
    p1.quantize_model(model, "whole", 8, "per_channel")
    assert fd.kernel_error(model) < 1e-5                                # fp32: the same numbers
    fc = model.transformer.h[0].mlp.c_fc
    meant = fc.dequantized_weight(torch.float32)
    fc.dequantized_weight = lambda dtype=None: meant.to(dtype)          # what the weights mean ...
    fc.scale.mul_(1.01)                                                 # ... and a layer 1% off it
    assert 0.009 < fd.kernel_error(model) < 0.011


def test_other_architectures_are_refused_in_one_line(llama_dir):
    model, _ = ev.load_model(str(llama_dir), device="cpu")
    model.config.model_type = "mistral"
    with pytest.raises(ev.UserError, match="GPT-2 and Llama models only .* is 'mistral'"):
        fd.static_model(model, 16)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_timed_layers_are_the_blocks_linears(gpt2_dir, llama_dir, arch):
    """Every linear layer of block 0 and lm_head, each with the width its input really has."""
    model, _ = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    p1.quantize_model(model, "whole", 8, "per_channel")
    layers = list(fd.timed_layers(model))
    block = {n for n, m in model.named_modules() if isinstance(m, p1.Int8Linear)
             and n.startswith(("transformer.h.0.", "model.layers.0."))}
    assert {fd.block_layers(model.config)[0] + "." + n for n, _, _ in layers[:-1]} == block
    for _, mod, width in layers:
        assert mod.in_features == width


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_bench_without_cuda_is_one_clear_line(cli_error):
    assert "needs CUDA" in cli_error(fd, ["--smoke"])


def test_unknown_method_is_rejected():
    with pytest.raises(ev.UserError, match="unknown method 'int3'"):
        fd.parse_methods("fp16,int3")


def test_the_anatomy_is_a_gpu_run(cli_error):
    assert "--anatomy is the GPU's fused step" in cli_error(fd, ["--anatomy", "--device", "cpu"])


KERNEL_CHECK = r"""
import torch, torch.nn as nn, torch.nn.functional as F
import part1_quantize_scratch as p1
torch.manual_seed(0)
worst = 0.0
for M in (1, 3, 7, 33):                         # GEMV (<= 4 rows), then the tiled int8 kernel
    lin = nn.Linear(192, 80)                       # 80 outputs: not a multiple of the tile
    x = torch.randn(M, 192).half()
    mods = [p1.Int8Linear.from_float(lin).half()] + [p1.Linear4bit.from_float(lin, k).half() for k in ("int4", "nf4")]
    for m in mods:
        m.path = "fast"
        ref = F.linear(x.float(), m.dequantized_weight(torch.float16).float(), m.bias.float())
        if isinstance(m, p1.Int8Linear):           # the int8 scale is applied after the matmul
            ref = F.linear(x.float(), m.qweight.float()) * m.scale.float() + m.bias.float()
        y = m(x)
        assert y.dtype == torch.float16 and y.shape == (M, 80)
        worst = max(worst, ((y.float() - ref).abs().max() / ref.abs().max()).item())
print(worst)
"""


def test_triton_kernels_equal_dequantize_then_matmul():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 2e-3                  # fp16 output rounding


def test_the_decode_floor_uses_the_gpus_own_bandwidth():
    """An H200 is not an H100: the floor comes from the device's spec peak, or is absent."""
    import fast_decode
    assert fast_decode.hbm_bytes_per_s("NVIDIA H200") == 4.8e12
    assert fast_decode.hbm_bytes_per_s("NVIDIA H100 80GB HBM3") == 3.35e12
    assert fast_decode.hbm_bytes_per_s("NVIDIA H100 PCIe") == 2.0e12
    assert fast_decode.hbm_bytes_per_s("NVIDIA GeForce RTX 4090") is None
    assert fast_decode.decode_floor_ms(4_800_000_000, 4.8e12) == 1.0
    assert fast_decode.decode_floor_ms(1, None) is None
    old = {"environment": {"device_name": "NVIDIA H200"}, "bench": {"hbm_bytes_per_s": 3.35e12}}
    assert fast_decode.bench_bandwidth(old) == 4.8e12             # a bench made before the table assumed an H100


FUSED_CHECK = r"""
import sys, tempfile, torch
import evaluate as ev, fast_decode as fd, part1_quantize_scratch as p1, tiny_models as tm
arch, quant, dtype, width = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3]), int(sys.argv[4])
size = {"n_embd": width} if arch == "gpt2" else {"hidden_size": width, "intermediate_size": 2 * width}
d = tm.make_tiny_model(tempfile.mkdtemp(), arch, **size)
model, tok = ev.load_model(str(d), device="cpu")
model = model.to(dtype)
if quant == "int8":
    p1.quantize_model(model, "whole", 8, "per_channel")
elif quant == "asym":                       # a kind the fused GEMV does not read: the model's modules run
    p1.quantize_model(model, "whole", 8, "asymmetric")
elif quant in ("nf4", "int4"):
    p1.quantize_model(model, "whole", 4, quant)
p1.set_path(model, "fast")
prompt = ev.tokenize(tok, "the quick brown fox jumps over the lazy dog " * 4).reshape(-1)[:12][None]
fused = fd.FastDecoder(model, 12, 16, fused=True)       # first: it re-lays out weights in place
ref = fd.generate_tokens(model, tok, prompt, 16)
got = fused.generate(prompt).clone()
fused.generate(prompt, decode=fused.weights_from_l2())  # the diagnostic step, then the real one again
again = fused.generate(prompt).clone()                  # a second run starts clean
step = fused.fused
print("RESULT", torch.equal(got, ref), torch.equal(again, ref), len(step.fused_layers), len(step.module_layers),
      step.kernels_per_step(), model.config.num_hidden_layers,
      ",".join(str(len(v)) for v in step.tile_keys.values()), ",".join(step.roles))
"""


def fused_run(arch, quant, dtype, width=32):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", FUSED_CHECK, arch, quant, dtype, str(width)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    same, again, fused, modules, kernels_, blocks, tiles, roles = line.split(maxsplit=8)[1:]
    return (same == "True", again == "True", int(fused), int(modules), kernels_, int(blocks),
            [int(t) for t in tiles.split(",")], roles.split(","))


@pytest.mark.parametrize("arch,quant,dtype,width", [
    ("gpt2", "none", "float16", 32), ("gpt2", "int8", "float16", 32), ("gpt2", "nf4", "float16", 64),
    ("llama", "none", "float16", 32), ("llama", "int8", "float32", 32), ("llama", "int4", "float16", 64)])
def test_fused_step_makes_generates_tokens_with_every_layer_fused(arch, quant, dtype, width):
    """The fused decode step (Triton, under the interpreter) computes what the model computes:
    the same greedy tokens as generate(), every layer in a fused kernel, five kernels a block
    plus the embedding and the two of the head."""
    pytest.importorskip("triton")
    same, again, fused, modules, kernels_, blocks, tiles, roles = fused_run(arch, quant, dtype, width)
    assert same and again
    assert modules == 0 and fused == 4 * blocks + 1                      # four GEMVs a block, and the head
    assert int(kernels_) == 5 * blocks + 3
    assert tiles == [blocks] * 4 + [1]            # tune_tiles' keys: each block's GEMV shape once, then the head
    # one role per kernel, in launch order (the anatomy's profile is read by position)
    block = (["attn.c_attn", "attention", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] if arch == "gpt2" else
             ["self_attn.qkv", "attention", "self_attn.o_proj", "mlp.gate_up", "mlp.down_proj"])
    assert roles == ["embed", *[f"{i}.{r}" for i in range(blocks) for r in block], "lm_head", "pick token"]


def test_fused_step_runs_the_models_own_modules_where_it_cannot_read_a_layer():
    """An asymmetric int8 layer is no kind the fused GEMV reads: those layers run as modules,
    around the fused attention and embedding; the tokens are still generate()'s."""
    pytest.importorskip("triton")
    same, again, fused, modules, kernels_, blocks, tiles, _ = fused_run("gpt2", "asym", "float32")
    assert same and again
    # the tied output layer reads the int8 embedding table, one scale a row: that one is fused
    assert modules == 4 * blocks and fused == 1 and kernels_ == "None" and tiles == [1]


@pytest.mark.parametrize("arch,quant", [("gpt2", None), ("gpt2", "int8"), ("llama", None), ("llama", "int8"),
                                        ("gpt2", "nf4")])
def test_cpu_fused_step_makes_generates_tokens(gpt2_dir, llama_dir, arch, quant):
    """On a CPU the fused step's operations are the C++ kernels: the same greedy tokens as
    generate(); float32 and int8 layers all fused (five calls a block, three more), 4-bit
    layers as the model's modules around the fused attention, embedding and head."""
    model, tok = ev.load_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu")
    if quant:
        p1.quantize_model(model, "whole", 8 if quant == "int8" else 4, "per_channel" if quant == "int8" else quant)
        p1.set_path(model, "fast")
    prompt = prompt_of(tok)
    fused = fd.FastDecoder(model, prompt.shape[1], 20, fused=True)      # first: it re-lays out weights
    ref = fd.generate_tokens(model, tok, prompt, 20)
    assert torch.equal(fused.generate(prompt), ref)
    assert torch.equal(fused.generate(prompt), ref)                     # a second run starts clean
    step, blocks = fused.fused, model.config.num_hidden_layers
    if quant == "nf4":
        assert len(step.module_layers) == 4 * blocks and step.kernels_per_step() is None
    else:
        assert not step.module_layers and len(step.fused_layers) == 4 * blocks + 1
        assert step.kernels_per_step() == 5 * blocks + 3


FUSED_OPS_CHECK = r"""
import torch
import json
import os
import kernels as k
from transformers.activations import NewGELUActivation
TRITON = os.environ.get("TRITON_INTERPRET") == "1"
F = torch.nn.functional
torch.manual_seed(0)
K, N = 96, 40
x, res = torch.randn(K), torch.randn(N)
nw, nb, b = torch.rand(K) + 0.5, torch.randn(K), torch.randn(N)
q = torch.randint(-128, 128, (N, K), dtype=torch.int8)      # the whole int8 range, -128 too
s = torch.rand(N) / 100
fw = k.FusedWeights(k.W_INT8, q, N, K, scale=s, bias=b)
h = F.layer_norm(x, (K,), nw, nb, 1e-5)
want = res + NewGELUActivation()((h @ q.float().t()) * s + b)
# the default tile, then tiles pinned as fast_decode.tune_tiles pins them: three tiles along K
# and a last block of rows half full; two tiles along K, the second half masked
for tile in (None, (16, 32, 4), (16, 64, 2)):
    if tile:
        k.PINNED[k.gemv_key(fw, k.NORM_LAYER, k.ACT_GELU_NEW, res)] = tile
    y = res.clone()
    k.fused_linear(x, fw, y, (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, y)
    assert (y - want).abs().max() < 1e-5 * want.abs().max(), f"LayerNorm + int8 + gelu_new + residual, {tile}"
k.PINNED.clear()
K2 = 90                                          # a row length that no power-of-2 tile divides
q2, nw2 = torch.randint(-128, 128, (N, K2), dtype=torch.int8), torch.rand(K2) + 0.5
y = torch.empty(N)
k.fused_linear(x[:K2], k.FusedWeights(k.W_INT8, q2, N, K2, scale=s), y, (k.NORM_RMS, nw2, None, 1e-6))
want2 = (nw2 * (x[:K2] * torch.rsqrt(x[:K2].pow(2).mean() + 1e-6))) @ q2.float().t() * s
assert (y - want2).abs().max() < 1e-5 * want2.abs().max(), "RMSNorm + int8, K not a multiple of 4"
if TRITON:                                       # the weights-from-L2 diagnostic: row r reads row r % 4
    y = res.clone()
    k.fused_linear(x, fw, y, (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, y, l2_rows=4)
    want4 = res + NewGELUActivation()((h @ q[torch.arange(N) % 4].float().t()) * s + b)
    assert (y - want4).abs().max() < 1e-5 * want4.abs().max(), "weights from L2"
else:
    try:
        k.fused_linear(x, fw, res.clone(), (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, res, l2_rows=4)
        raise SystemExit("the C++ kernels ran the weights-from-L2 diagnostic")
    except ValueError:
        pass
if TRITON:                                       # the pinned tile is the one launched: one Triton cannot make
    k.PINNED[k.gemv_key(fw, k.NORM_LAYER, k.ACT_GELU_NEW, res)] = (16, 48, 4)
    try:
        k.fused_linear(x, fw, res.clone(), (k.NORM_LAYER, nw, nb, 1e-5), k.ACT_GELU_NEW, res)
        raise SystemExit("a pinned tile of 48 columns ran: the pin was not used")
    except Exception as e:
        assert "power of 2" in str(e) or "arange" in str(e), e

w = torch.randn(2 * N, K)
y = torch.empty(N)
k.fused_linear(x, k.FusedWeights(k.W_DENSE, w, N, K), y, (k.NORM_RMS, nw, None, 1e-6), k.ACT_SILU_GATE)
h = nw * (x * torch.rsqrt(x.pow(2).mean() + 1e-6))
g, u = (h @ w.t()).split(N)
want = F.silu(g) * u
assert (y - want).abs().max() < 1e-5 * want.abs().max(), "RMSNorm + gate/up + silu"

H, HKV, D = 4, 2, 8
for T, pos in ((10, 6), (300, 290)):             # one tile of the cache, and two (positions past 256)
    kc, vc = torch.randn(HKV, T, D), torch.randn(HKV, T, D)
    qkv, cos, sin = torch.randn((H + 2 * HKV) * D), torch.randn(T, D), torch.randn(T, D)
    kc0, out = kc.clone(), torch.empty(H * D)
    k.decode_attention(qkv, kc, vc, torch.tensor([pos]), out, H, HKV, D, D ** -0.5, (cos, sin))
    half = lambda t: torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1)
    rot = lambda t: t * cos[pos] + half(t) * sin[pos]
    qh, kh, vh = qkv.split([H * D, HKV * D, HKV * D])
    assert torch.allclose(kc[:, pos], rot(kh.view(HKV, D)), atol=1e-6), "k written at pos, rotated"
    assert torch.equal(vc[:, pos], vh.view(HKV, D)) and torch.equal(kc[:, :pos], kc0[:, :pos]), "v at pos"
    keys = kc[:, :pos + 1].repeat_interleave(H // HKV, 0)
    values = vc[:, :pos + 1].repeat_interleave(H // HKV, 0)
    want = F.scaled_dot_product_attention(rot(qh.view(H, 1, D)), keys, values)
    assert torch.allclose(out, want.reshape(-1), atol=1e-5), f"attention, {T} positions"

V = 50
parts = k.head_programs(x.device, V)       # under the interpreter 4 programs of 2 blocks (BN 8) each
for win, twin, tile in ((37, 45, None), (37, 12, None), (37, 38, (4, 32, 2)), (37, 45, (4, 32, 2)),
                        (37, 12, (4, 32, 2))):
    # the largest logit twice, in one program's run and in two; then with a pinned tile of 4
    # rows x 32 columns (4 programs of 4 blocks each): in one block, two blocks, two programs
    wv = torch.randn(V, K)
    k.PINNED.clear()
    if tile:
        k.PINNED[k.head_key(k.FusedWeights(k.W_DENSE, wv, V, K), parts)] = tile
    wv[win] = 4 * wv[win].abs() * torch.sign(F.layer_norm(x, (K,), nw, nb, 1e-5))
    wv[twin] = wv[win]
    tokens, step, nxt, p = torch.zeros(3, dtype=torch.long), torch.tensor([1]), \
        torch.zeros(1, 1, dtype=torch.long), torch.tensor([5])
    k.fused_argmax_head(x, k.FusedWeights(k.W_DENSE, wv, V, K), (k.NORM_LAYER, nw, nb, 1e-5),
                        torch.empty(parts), torch.empty(parts, dtype=torch.int32), tokens, step, nxt, p)
    first = min(win, twin)
    assert tokens.tolist() == [0, first, 0] and step.item() == 2 and nxt.item() == first and p.item() == 6, \
        f"head: {tokens.tolist()}, want {first} (the first of two equal logits), tile {tile}"
print("OK")
"""


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_fused_step_operations_equal_the_models_ops(backend):
    """Each operation of the fused step (C++ on a CPU; Triton, under its interpreter) against
    the same computation in torch ops: LayerNorm + int8 GEMV + bias + gelu_new + residual;
    RMSNorm + a float gate/up GEMV + silu(g) * u; attention over a cache of one tile and of
    two, with rotary and grouped-query heads, k and v written at pos; the argmax head and its
    bookkeeping."""
    if backend == "triton":
        pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TRITON_INTERPRET", None)
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, "-c", FUSED_OPS_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-2000:]


CHAIN_CHECK = r"""
import torch
import kernels as k
K = 50
x = torch.zeros(2, K + 1)
for i in range(5):                       # link i reads x[i % 2], writes x[(i + 1) % 2]
    k.chain_link(x[i % 2], x[(i + 1) % 2], programs=7)
print("RESULT", x[1, :K].unique().tolist(), x[1, K].item())
k.chain_link(x[1], x[0], programs=7, read=False)
print("RESULT", x[0, :K].unique().tolist(), x[0, K].item())
"""


def test_a_chain_link_reads_what_the_link_before_wrote():
    """The anatomy's vector chain is a floor only if each link really reads the whole vector the
    link before wrote: after five links from zeros every element is 5, and the sum slot holds
    the sum of the fourth link's output (4 x 50); an empty link writes nothing."""
    assert interpreted(CHAIN_CHECK) == ["RESULT [5.0] 200.0", "RESULT [4.0] 150.0"]


def interpreted(check: str) -> list[str]:
    """The RESULT lines that a check script prints, run with Triton's interpreter on the CPU."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return [x for x in out.stdout.splitlines() if x.startswith("RESULT")]


BARRIER_CHECK = r"""
import torch
import kernels as k
K = 50
x = torch.zeros(2, K + 1)
cnt = torch.zeros(3, dtype=torch.int32)
k.barrier_chain(x, cnt, 5, programs=1)   # link i reads x[i % 2], writes x[(i + 1) % 2]
print("RESULT", x[1, :K].unique().tolist(), x[1, K].item(), cnt.tolist())
k.barrier_chain(x, cnt, 4, programs=1)   # again, from where the first launch left x
print("RESULT", x[1, :K].unique().tolist(), x[0, :K].unique().tolist(), x[0, K].item(), cnt.tolist())
"""


def test_the_grid_barrier_chain_does_the_vector_chains_work_in_one_kernel_and_resets_its_counter():
    """The grid-barrier chain bounds a step written as one persistent kernel only if each of its
    links does a vector link's work: from zeros, five links leave every element 5 and the sum
    slot 4 x 50, as five chain_link calls do; the arrival and departure counters are zero again
    after each launch (a second launch would otherwise pass its barriers at once), and no
    barrier timed out. Under the interpreter programs run one after another, so one program:
    the barriers' waits are exercised on the GPU, where anatomy checks the chain's values."""
    assert interpreted(BARRIER_CHECK) == ["RESULT [5.0] 200.0 [0, 0, 0]", "RESULT [7.0] [8.0] 350.0 [0, 0, 0]"]


def test_the_bound_is_the_faster_of_the_chains_that_do_a_links_least_work():
    """bound_chain: separate kernels (vector) or one persistent kernel (grid-barrier), whichever
    measured faster; the empty and no-PDL chains never bound (the one does less than a link
    must, the other is a slower way to the same); a record from before the grid-barrier chain
    has the vector chain alone."""
    ch = lambda **ms: {c.replace("_", "-"): {"step_ms": {"median": v}} for c, v in ms.items()}   # noqa: E731
    assert fd.bound_chain(ch(empty=0.04, vector=0.08, vector_no_pdl=0.1, grid_barrier=0.1)) == "vector"
    assert fd.bound_chain(ch(empty=0.04, vector=0.08, grid_barrier=0.06)) == "grid-barrier"
    assert fd.bound_chain(ch(empty=0.04, vector=0.08, vector_no_pdl=0.07)) == "vector"


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
    got = fd.link_times(seen, roles)
    assert got["steps_profiled"] == 3
    assert [(x["kernel"], x["us"], x["adds_us"]) for x in got["links"]] == [
        ("_embed", 2.0, 2.0), ("_fused_gemv", 3.0, 2.5), ("_argmax_emit", 1.0, 0.5)]
    assert fd.link_groups(got["links"]) == {"embed": {"links": 1, "adds_us": 2.0},
                                            "attn.c_attn": {"links": 2, "adds_us": 3.0}}
    assert "not a multiple" in fd.link_times(seen[:-1], roles)["why_not"]
    swapped = seen[:3] + [seen[4], seen[3], seen[5]] + seen[6:]
    assert "different kernels" in fd.link_times(swapped, roles)["why_not"]
    assert "saw 0 kernels" in fd.link_times([], roles)["why_not"]


def test_the_lowest_ratio_and_the_links_it_allows():
    """A step takes at least the longer of its chain and its weight bytes: with fp16's bytes
    52 us and INT8's 26 us, a 40 us chain allows 40/52, an 80 us chain 1.0, a 10 us chain
    26/52; most_links is the largest chain (in links of 1.3 us) whose ratio reaches 0.9."""
    assert fd.lowest_ratio(0.080, 0.026, 0.052) == 1.0
    assert fd.lowest_ratio(0.040, 0.026, 0.052) == pytest.approx(40 / 52)
    assert fd.lowest_ratio(0.010, 0.026, 0.052) == pytest.approx(0.5)
    n = fd.most_links(0.9, 1.3, 0.026, 0.052)
    assert n == 36
    assert fd.lowest_ratio(n * 1.3e-3, 0.026, 0.052) <= 0.9 < fd.lowest_ratio((n + 1) * 1.3e-3, 0.026, 0.052)
    assert fd.most_links(0.9, 1.3, 0.050, 0.052) is None       # bytes alone keep the ratio above 0.9


def test_an_anatomy_record_is_read_and_a_broken_one_is_refused():
    import results
    from conftest import anatomy_result
    rec = results.new_record("anatomy", "step-anatomy", {"methods": ["fp16"]}, {"id": "m"}, torch.device("cpu"),
                             anatomy=anatomy_result())
    assert results.record_problem(json.loads(json.dumps(rec))) is None
    rows = fd.anatomy_rows(rec["anatomy"])
    assert [r["name"] for r in rows] == ["fp16", "scratch-int8-fast", "chain: empty", "chain: vector",
                                         "chain: vector-no-pdl", "chain: grid-barrier"]
    assert rows[1]["most_links"] == int(0.9 * 0.05 * 1000 / (0.08 * 1000 / 63))
    assert "chain = the vector chain (the faster of vector and grid-barrier)" in fd.anatomy_text(rec["anatomy"])
    assert rows[3]["vs_fp16"] == pytest.approx(0.08 / rec["anatomy"]["steps"]["fp16"]["step_ms"]["median"])
    assert "all links" in fd.anatomy_text(rec["anatomy"])
    # 48 GEMVs and the head read the whole vector; 12 attentions, the embedding and the pick do not
    assert fd.mixed_chain_ms(rec["anatomy"]) == pytest.approx((49 * 0.08 + 14 * 0.04) / 63)
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
    rows = fd.fused_rows(record)
    assert [(r["method"], r["path"]) for r in rows] == [
        ("fp16", "fast"), ("fp16", "fused"), ("fp16", "l2"), ("bnb-int8", "fast"), ("bnb-int8", "fused"),
        ("torchao-int8wo", "peer"), ("hf-static-compile", "peer")]
    assert (rows[1]["ms"], rows[1]["tokens"], rows[1]["kernels"], rows[1]["vs_fp16_fused"]) == (0.2, 3, 63, 1.0)
    assert (rows[2]["ms"], rows[2]["tokens"], rows[2]["x_floor"], rows[2]["weight_bytes_share"]) == (0.17, None, None,
                                                                                                   0.15)
    assert rows[4]["why_not"] == "not run: LLM.int8() is not capturable" and rows[4]["ms"] is None
    assert rows[5]["why_not"] == "cannot run: no GPU" and rows[6]["why_not"] is None and rows[6]["tokens"] == 2
    text = fd.fused_table_text(record)
    assert "not run: LLM.int8() is not capturable" in text and "cannot run: no GPU" in text and "3/4" in text
    assert "weights' bytes: 15% of the fused step" in text
    assert fd.fused_rows({"table": {}}) == [] and fd.fused_table_text({"table": {}}) == ""


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
    rows = fd.size_rows([bench("big", 3_000, 0.6, 0.72), bench("small", 1_000, 0.8, None),
                         bench("cpu", 10, 0.5, 0.5, device="cpu"),
                         {"model": {"id": "old"}, "environment": {"device": "cuda"},
                          "bench": {"table": {"fp16": {"fused_path": None}}}}])
    assert [(r["model"], r["params"]) for r in rows] == [("small", 500), ("big", 1_500)]
    assert rows[1]["scratch-int8-fast"]["l2_vs_fp16_l2"] == pytest.approx(1.2)     # 0.72 / 0.6
    assert rows[1]["scratch-int8-fast"]["free_unpack_vs_fp16_fused"] == pytest.approx(0.78)   # 0.6 + 0.9 - 0.72
    assert rows[1]["fp16_bytes_share"] == pytest.approx(0.4) and rows[1]["scratch-int4-fast"] is None
    assert rows[0]["scratch-int8-fast"]["l2_vs_fp16_l2"] is None and rows[0]["stand_in"]


def test_a_peer_that_cannot_run_is_a_row_that_says_why(gpt2_dir):
    """No GPU here: torchao's peer cannot load its model on CUDA; the bench gets a row with the
    reason, not a crash."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    prompt = prompt_of(tok)
    calls, row = fd.peer("torchao-int8wo", str(gpt2_dir), tok, prompt, prompt, 12, 4, 12, prompt[0, :4])
    assert calls is None and row["why_not"] and row["recipe"] == fd.PEERS["torchao-int8wo"]


def test_conv1d_to_linear_keeps_the_models_logits(gpt2_dir):
    """What torchao's peer quantizes: GPT-2's Conv1D layers as nn.Linear compute the same logits."""
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    ids = prompt_of(tok, 20)
    with torch.no_grad():
        before = model(ids).logits
        fd.conv1d_to_linear(model)
        after = model(ids).logits
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)


def test_tensor_bytes_counts_what_a_tensor_subclass_holds(gpt2_dir):
    """torchao's quantized weights are tensor subclasses, whose storage cannot be read:
    evaluate.tensor_bytes counts the plain tensors each one holds (the peer's weights row)."""
    torchao = pytest.importorskip("torchao.quantization")
    model, _ = ev.load_model(str(gpt2_dir), device="cpu")
    plain = {id(p): p for p in [*model.parameters(), *model.buffers()]}          # tied wte/lm_head once
    assert ev.tensor_bytes(model)["bytes"] == sum(p.numel() * p.element_size() for p in plain.values())
    fd.conv1d_to_linear(model)
    torchao.quantize_(model, torchao.Int8WeightOnlyConfig())
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # each quantized weight: its int8 values, fp32 row scales and int8 zero points, not a float matrix
    expect = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.endswith(".weight")
                 or "wte" in n or "wpe" in n or "ln" in n)
    expect += sum(m.weight.qdata.numel() + 4 * m.weight.scale.numel() + m.weight.zero_point.numel() for m in lin)
    assert ev.tensor_bytes(model)["bytes"] == expect


def test_cpu_bench_refuses_a_gguf_dir_it_cannot_use_before_any_work(cli_error, gpt2_dir, tmp_path):
    """--gguf-dir that is a file, or inside the model's own folder: one line, and the model's
    folder is left as it was."""
    pytest.importorskip("llama_cpp")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    base = ["--device", "cpu", "--model", str(gpt2_dir), "--text-file", str(text), "--results-dir", str(tmp_path)]
    assert "is a file, not a folder" in cli_error(fd, base + ["--gguf-dir", str(a_file)])
    before = sorted(p.name for p in gpt2_dir.iterdir())
    assert "inside the model's folder" in cli_error(fd, base + ["--gguf-dir", str(gpt2_dir / "gguf")])
    assert sorted(p.name for p in gpt2_dir.iterdir()) == before
    assert not list(tmp_path.glob("*.json"))
