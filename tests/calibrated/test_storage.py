"""The shared storage: codes that round-trip, and bits per weight counted exactly."""
import torch
import torch.nn as nn

from calibrated.quantizer import Grid, QuantLinear, dequantize, pack, round_to_nearest, unpack
from study.memory import bits_per_weight


def test_pack_round_trips_every_code_and_odd_widths():
    q = torch.randint(0, 16, (5, 33))
    assert torch.equal(unpack(pack(q), 33), q.to(torch.uint8))
    assert pack(q).shape == (5, 17)


def test_round_to_nearest_is_within_half_a_step_and_keeps_zero():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    w[3, 7] = 0.0
    for grid in (Grid(4, 0), Grid(4, 32), Grid(3, 64)):
        q, s, z = round_to_nearest(w, grid)
        assert q.min() >= 0 and q.max() <= grid.maxq
        err = (dequantize(q, s, z) - w).abs().reshape(16, s.shape[1], -1)
        assert torch.all(err <= s[..., None] / 2 + 1e-6)
        assert dequantize(q, s, z)[3, 7] == 0.0


def test_quant_linear_computes_its_dequantized_weight():
    torch.manual_seed(1)
    lin = nn.Linear(64, 8)
    q, s, z = round_to_nearest(lin.weight.detach(), Grid(4, 32))
    inv = torch.rand(64) + 0.5
    m = QuantLinear.from_codes(q, s, z, lin.bias, Grid(4, 32), torch.float32, input_scale=inv)
    x = torch.randn(3, 64)
    want = (x * inv) @ dequantize(q, s, z).t() + lin.bias
    assert torch.allclose(m(x), want, atol=1e-5)


def test_bits_per_weight_is_exact_for_a_hand_built_model():
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 64)                        # 640 float32 weights, unquantized
            lin = nn.Linear(64, 8, bias=True)
            q, s, z = round_to_nearest(lin.weight.detach(), Grid(4, 32))
            self.q = QuantLinear.from_codes(q, s, z, lin.bias, Grid(4, 32), torch.float32)
            lin3 = nn.Linear(64, 8, bias=False)
            q3, s3, z3 = round_to_nearest(lin3.weight.detach(), Grid(3, 0))
            self.q3 = QuantLinear.from_codes(q3, s3, z3, None, Grid(3, 0), torch.float32)

    net = Net()
    # q:  8 x 64 codes in 4-bit containers = 256 B; 8 x 2 fp32 scales = 64 B; 8 x 2 uint8 zeros = 16 B
    # q3: 8 x 64 codes = 256 B; 8 fp32 scales = 32 B; 8 zeros = 8 B
    stored = 256 + 64 + 16 + 256 + 32 + 8
    n_params = 640 + 8 * 64 + 8 + 8 * 64                           # the float model: emb, q (+ bias), q3
    b = bits_per_weight(net, n_params)
    assert b["quantized_layers"]["stored_bytes"] == stored
    assert b["quantized_layers"]["weights"] == 2 * 8 * 64
    assert b["quantized_layers"]["bits_per_weight"] == 8 * stored / 1024
    assert b["model"]["stored_bytes"] == stored + 640 * 4 + 8 * 4     # + the embedding, + q's bias
    assert b["model"]["bits_per_weight"] == 8 * (stored + 2592) / n_params
