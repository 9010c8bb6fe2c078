import math

import pytest
import torch

from tritium.eval import EvalInputError, perplexity


def hand_nll(model, chunk):
    """Mean next-token NLL by explicit log-softmax and indexing, token by token."""
    logits = model(chunk[None]).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return -sum(logprobs[t, chunk[t + 1]].item() for t in range(len(chunk) - 1)) / (len(chunk) - 1)


def test_matches_hand_computed_nll(llama):
    ids = torch.randint(0, 512, (1, 3 * 32 + 5))  # three chunks; the tail is dropped
    result = perplexity(llama, ids, seqlen=32, progress=False)
    assert result.n_chunks == 3 and result.available_chunks == 3
    expected = [hand_nll(llama, ids[0, i * 32 : (i + 1) * 32]) for i in range(3)]
    assert result.chunk_nll == pytest.approx(expected, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(sum(expected) / 3), rel=1e-5)


def test_limit_and_batching(llama):
    ids = torch.randint(0, 512, (1, 4 * 16))
    full = perplexity(llama, ids, seqlen=16, progress=False)
    limited = perplexity(llama, ids, seqlen=16, limit=2, progress=False)
    batched = perplexity(llama, ids, seqlen=16, batch_size=3, progress=False)
    assert limited.n_chunks == 2 and limited.ppl == pytest.approx(full.ppl_first(2), rel=1e-6)
    assert batched.chunk_nll == pytest.approx(full.chunk_nll, rel=1e-5)


def test_bad_inputs(llama):
    ids = torch.randint(0, 512, (1, 100))
    with pytest.raises(EvalInputError, match="exceeds the model's context of 256"):
        perplexity(llama, ids, seqlen=512, progress=False)
    with pytest.raises(EvalInputError, match="fewer than one chunk"):
        perplexity(llama, ids, seqlen=128, progress=False)
    with pytest.raises(EvalInputError, match="positive"):
        perplexity(llama, ids, seqlen=16, limit=0, progress=False)


def test_non_finite_model_output_is_reported(llama):
    with torch.no_grad():
        llama.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        perplexity(llama, torch.randint(0, 512, (1, 32)), seqlen=16, progress=False)
