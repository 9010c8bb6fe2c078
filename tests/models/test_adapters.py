import pytest
import torch
from torch import nn

from tritium.models import BLOCK_LINEARS, TINY_FAMILIES, UnsupportedArchitectureError, decoder_layout, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_one_mechanism_finds_blocks_and_linears(family):
    model = tiny_model(family, num_hidden_layers=3)
    layout = decoder_layout(model)
    assert layout.num_blocks == 3
    linears = layout.quantizable_linears()
    assert len(linears) == 3 * len(BLOCK_LINEARS)
    assert all(isinstance(m, nn.Linear) for m in linears.values())
    assert "model.layers.2.mlp.down_proj" in linears
    # Embeddings and the LM head are not decoder linears: they stay float.
    assert layout.lm_head is model.lm_head and all(m is not model.lm_head for m in linears.values())
    assert layout.norm_weight_offset == (1.0 if family.startswith("gemma") else 0.0)


def test_scale_groups_fold_into_existing_ops():
    layout = decoder_layout(tiny_model("llama", num_key_value_heads=4))  # no GQA: v feeds o one to one
    block = layout.blocks[0]
    for group in layout.scale_groups:
        if group.producer:
            block.get_submodule(group.producer)
        for name in group.consumers:
            assert isinstance(block.get_submodule(name), nn.Linear)
    assert layout.scale_groups[1].producer == "self_attn.v_proj"
    gqa = decoder_layout(tiny_model("llama", num_key_value_heads=2))
    assert gqa.scale_groups[1].producer is None


class NotADecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(2)])


def test_unknown_layout_says_what_was_expected():
    with pytest.raises(UnsupportedArchitectureError, match="expects a decoder-only model.*q_proj"):
        decoder_layout(NotADecoder())


def test_model_without_parameters_is_rejected():
    with pytest.raises(UnsupportedArchitectureError, match="no parameters"):
        decoder_layout(nn.Module())


def test_tiny_models_are_deterministic():
    a, b = tiny_model("qwen2", seed=3), tiny_model("qwen2", seed=3)
    x = torch.randint(0, 512, (1, 8))
    assert torch.equal(a(x).logits, b(x).logits)
