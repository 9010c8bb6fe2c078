import pytest
import torch

from tritium.calib import CalibrationInputError, NonFiniteError, capture_block_inputs, check_calibration_ids
from tritium.models import decoder_layout, tiny_model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_captured_inputs_replay_the_model_block_by_block(family):
    model = tiny_model(family)
    layout = decoder_layout(model)
    ids = torch.randint(0, 512, (3, 12), generator=torch.Generator().manual_seed(0))
    captured = capture_block_inputs(model, layout, ids)
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
        hidden = captured.hidden
        assert torch.equal(hidden, reference[0])
        for block, kwargs, expected in zip(layout.blocks, captured.layer_kwargs, reference[1:-1]):
            hidden = block(hidden, **kwargs)
            assert torch.allclose(hidden, expected, atol=1e-6)
    # The recorders are gone: the model still runs as before.
    assert all(type(b).__name__.endswith("DecoderLayer") for b in layout.blocks)


def test_empty_calibration_set_is_refused():
    model = tiny_model()
    with pytest.raises(CalibrationInputError, match="at least one sample"):
        check_calibration_ids(model, torch.zeros(0, 16, dtype=torch.long))


def test_sequence_longer_than_the_context_is_refused():
    model = tiny_model(max_position_embeddings=32)
    with pytest.raises(CalibrationInputError, match="exceeds the model's context of 32"):
        check_calibration_ids(model, torch.zeros(2, 33, dtype=torch.long))


def test_nan_inputs_are_refused():
    model = tiny_model()
    ids = torch.zeros(2, 8)
    ids[1, 3] = float("nan")
    with pytest.raises(CalibrationInputError, match="NaN"):
        check_calibration_ids(model, ids)


def test_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(CalibrationInputError, match=r"\[0, 512\)"):
        check_calibration_ids(tiny_model(), torch.full((1, 8), 600))


def test_nan_embedding_names_block_zero():
    model = tiny_model()
    layout = decoder_layout(model)
    with torch.no_grad():
        layout.embed_tokens.weight[5] = float("nan")
    ids = torch.full((2, 8), 5)
    with pytest.raises(NonFiniteError, match=r"input of block 0, model\.layers\.0"):
        capture_block_inputs(model, layout, ids)
