"""scripts/greedy_samples.py: the same prompts, greedy, by fp32 and by quantized schemes."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import greedy_samples as gs  # noqa: E402

import evaluate as ev  # noqa: E402
import results  # noqa: E402


def argmax_loop(model, ids: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding written out: the whole sequence again each step, the argmax appended."""
    out = ids[0].tolist()
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[ids.shape[1]:]


def test_the_baseline_completions_are_greedy_decoding_and_int8_is_recorded_beside_them(gpt2_dir, tmp_path):
    rec = gs.main(model=str(gpt2_dir), device="cpu", methods="scratch-int8-per_channel,rtn-w4-pc", new_tokens=6,
                  results_dir=str(tmp_path), quiet=True)
    assert results.record_problem(dict(rec)) is None and rec.path.parent == tmp_path
    smp = rec["samples"]
    assert smp["prompts"] == list(gs.PROMPTS) and list(smp["completions"]) == ["baseline-fp32",
                                                                             "scratch-int8-per_channel", "rtn-w4-pc"]
    model, tok = ev.load_model(str(gpt2_dir), device="cpu")
    for prompt, text in zip(gs.PROMPTS, smp["completions"]["baseline-fp32"]):
        want = argmax_loop(model, ev.tokenize(tok, prompt), 6)
        assert text == tok.decode(want, skip_special_tokens=True)
    assert smp["leading_tokens_equal"]["baseline-fp32"] == [6, 6, 6]
    assert all(0 <= e <= 6 for m in smp["leading_tokens_equal"].values() for e in m)


@pytest.mark.parametrize("argv,says", [(["--methods", "int7"], "unknown method 'int7'"),
                                       (["--methods", ","], "--methods is empty"),
                                       (["--new-tokens", "0"], "--new-tokens must be between 1 and 256")])
def test_bad_input_is_one_line_before_any_model_is_loaded(cli_error, argv, says):
    assert says in cli_error(gs, ["--model", "no/such-model", *argv])


def test_a_group_wider_than_the_models_rows_is_one_line(cli_error, gpt2_dir):
    """The tiny GPT-2's rows are 32 wide: groups of 64 do not fit, said before any completion."""
    assert "64" in cli_error(gs, ["--model", str(gpt2_dir), "--device", "cpu", "--methods", "rtn-w3-g64"])
