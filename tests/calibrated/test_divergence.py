"""KL divergence and top-1 agreement against the unquantized model."""
import copy

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from study.perplexity import divergence, window_plan


def test_the_unquantized_model_has_zero_divergence(gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 300), generator=torch.Generator().manual_seed(0))
    d = divergence(model, model, ids, 64, 32, progress=False)
    assert d["kld_mean"] == 0 and d["kld_p99"] == 0 and d["top1_agreement"] == 1
    assert d["n_tokens_scored"] == 299


def test_divergence_matches_a_direct_computation(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, model.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(1))
    got = divergence(other, model, ids, 64, 32, progress=False)
    # direct: every scored position, its own window, KL summed over the vocabulary in float64
    kl, agree = [], 0
    with torch.no_grad():
        for begin, end, score_from in window_plan(200, 64, 32):
            x = ids[:, begin:end]
            p = F.log_softmax(model(x).logits[0].double(), -1)[score_from - begin - 1:]
            q = F.log_softmax(other(x).logits[0].double(), -1)[score_from - begin - 1:]
            kl += (p.exp() * (p - q)).sum(-1).tolist()
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
    kl = torch.tensor(kl, dtype=torch.float64)
    assert abs(got["kld_mean"] - kl.mean().item()) < 1e-5 * max(1.0, kl.mean().item())
    assert abs(got["kld_p99"] - torch.quantile(kl, 0.99).item()) < 1e-4
    assert got["top1_agreement"] == agree / kl.numel()
    assert got["kld_mean"] > 0
