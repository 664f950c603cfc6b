"""Block by block from the captured inputs gives the model's own hidden states."""
import torch
from transformers import AutoModelForCausalLM

from calibrated.capture import capture
from part1_quantize_scratch import decoder_blocks


def test_blocks_run_from_captured_inputs_reproduce_the_model(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    _, blocks = decoder_blocks(model)
    ids = torch.randint(0, model.config.vocab_size, (5, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids, output_hidden_states=True).hidden_states
        inputs = capture(model, blocks, ids, batch_size=2)          # batches of 2, 2 and 1
        assert len(inputs.batches) == 3
        assert torch.equal(inputs.hidden(), want[0])
        for i, block in enumerate(blocks[:-1]):
            inputs = inputs.run(block)
            assert torch.allclose(inputs.hidden(), want[i + 1], atol=1e-5)
    assert blocks[0].__class__.__name__ != "_Catcher"                 # the model is given back whole
