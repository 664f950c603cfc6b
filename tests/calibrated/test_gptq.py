"""GPTQ against an independent, naive computation, and against round-to-nearest."""
import torch

from calibrated.gptq import gptq, proxy_error
from calibrated.quantizer import Grid, dequantize, fit, grouped, round_to_nearest


def spd(n: int, seed: int = 0) -> torch.Tensor:
    """A positive-definite Hessian with correlated inputs, as real activations give."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    return (2 * x.t() @ x / x.shape[0]).float()


def naive_gptq(w: torch.Tensor, h: torch.Tensor, grid: Grid, damp: float) -> torch.Tensor:
    """The optimal-brain-quantizer update written plainly, in float64, with static groups:
    quantize column i, push its error onto the later columns through the explicit inverse
    Hessian, then remove column i from that inverse (a Gaussian elimination step)."""
    w = w.double().clone()
    h = h.double().clone()
    h += damp * h.diag().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    out, inp = w.shape
    gl = grid.group_len(inp)
    scale, zero = fit(grouped(w.float(), grid), grid.maxq)
    scale, zero = scale.double().reshape(out, -1), zero.double().reshape(out, -1)
    q_all = torch.zeros_like(w)
    for i in range(inp):
        s, z = scale[:, i // gl], zero[:, i // gl]
        q = (torch.clamp(torch.round(w[:, i] / s) + z, 0, grid.maxq) - z) * s
        q_all[:, i] = q
        err = (w[:, i] - q) / hinv[i, i]
        w[:, i:] -= err[:, None] * hinv[i, i:][None, :]
        hinv = hinv - hinv[:, i:i + 1] @ hinv[i:i + 1, :] / hinv[i, i]
    return q_all


def gptq_weight(w, h, grid, **kw):
    q, s, z = gptq(w, h, grid, **kw)
    return dequantize(q, s, z)


def test_block_size_one_equals_the_naive_sequential_update():
    torch.manual_seed(0)
    w, h = torch.randn(24, 64), spd(64)
    for grid in (Grid(4, 0), Grid(3, 0)):                   # one group per row: static by definition
        ours = gptq_weight(w, h, grid, damp=0.01, block_size=1)
        ref = naive_gptq(w, h, grid, damp=0.01).float()
        same = torch.isclose(ours, ref, atol=1e-4).float().mean()
        assert same > 0.995, f"{grid}: only {same:.3%} of the weights agree"


def test_lazy_batches_change_nothing():
    torch.manual_seed(1)
    w, h = torch.randn(32, 256), spd(256, seed=1)
    for grid in (Grid(4, 0), Grid(4, 64), Grid(3, 64)):
        a = gptq_weight(w, h, grid, block_size=1)
        b = gptq_weight(w, h, grid, block_size=128)
        assert torch.isclose(a, b, atol=1e-4).float().mean() > 0.995


def test_gptq_beats_round_to_nearest_on_its_own_loss():
    torch.manual_seed(2)
    w, h = torch.randn(64, 128), spd(128, seed=2)
    for grid in (Grid(4, 0), Grid(4, 32), Grid(3, 32)):
        for act_order in (False, True):
            rtn = dequantize(*round_to_nearest(w, grid))
            ours = gptq_weight(w, h, grid, act_order=act_order)
            assert proxy_error(w, ours, h) < 0.8 * proxy_error(w, rtn, h), (grid, act_order)


def test_codes_fit_the_grid_and_groups_stay_contiguous_with_act_order():
    torch.manual_seed(3)
    w, h = torch.randn(16, 128), spd(128, seed=3)
    q, s, z = gptq(w, h, Grid(3, 32), act_order=True)
    assert q.min() >= 0 and q.max() <= 7 and q.shape == w.shape
    assert s.shape == z.shape == (16, 4)
    # static groups: each group's grid is the one round-to-nearest fits on the original weights
    _, s_rtn, z_rtn = round_to_nearest(w, Grid(3, 32))
    assert torch.equal(s, s_rtn) and torch.equal(z, z_rtn)


def test_a_dead_input_gets_a_zero_column():
    w, h = torch.randn(8, 32), spd(32)
    h[5, :] = 0
    h[:, 5] = 0
    assert torch.all(gptq_weight(w, h, Grid(4, 0))[:, 5] == 0)
