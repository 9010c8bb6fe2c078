import pytest
import torch

from tritium.models import UnsupportedArchitectureError, decoder_layout, tiny_model
from tritium.models.rotation import RotationSettings, check_rotatable, rotate_model_, rotation_settings

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma"]


def _randomize_norms_and_biases(model, seed=0):
    """Tiny models start with unit norms and zero biases, which would hide a wrong fold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or (name.endswith(".bias")):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_rotated_model_computes_the_same_logits(family, tied):
    model = _randomize_norms_and_biases(tiny_model(family, tie_word_embeddings=tied))
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    before = _logits(model, ids)
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = rotate_model_(model, RotationSettings(seed=0))
    after = _logits(model, ids)
    assert torch.allclose(after, before, atol=2e-4, rtol=1e-4), (after - before).abs().max()
    # the weights really changed (not a no-op), and the architecture did not
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(dict(model.named_parameters())[q_proj], weights_before[q_proj])
    assert report.residual_rotation == "hadamard" and report.head_rotation == "hadamard"
    assert report.untied_head is tied
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_norms_are_unit_after_the_fold():
    model = _randomize_norms_and_biases(tiny_model("gemma"))
    rotate_model_(model)
    layout = decoder_layout(model)
    # Gemma's norm multiplies by (1 + w): unit scale is w = 0
    for block in layout.blocks:
        assert torch.all(block.input_layernorm.weight == 0)
        assert torch.all(block.post_attention_layernorm.weight == 0)
    assert torch.all(layout.final_norm.weight == 0)


def test_rotation_spreads_an_outlier_channel():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:, 5] *= 50  # one outlier input channel
    w = model.model.layers[0].self_attn.q_proj.weight
    ratio_before = (w.abs().amax() / w.abs().mean()).item()
    rotate_model_(model)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert (w.abs().amax() / w.abs().mean()).item() < ratio_before / 4


def test_widths_without_hadamard_fall_back_with_a_note():
    # hidden 40 = 2·20 has a Hadamard; its head size 10 has none
    model = _randomize_norms_and_biases(tiny_model("llama", hidden_size=40, num_attention_heads=4,
                                                   num_key_value_heads=2))
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    before = _logits(model, ids)
    report = rotate_model_(model)
    assert report.residual_rotation == "hadamard" and report.head_rotation == "random"
    assert any("order 10" in note for note in report.notes)
    assert torch.allclose(_logits(model, ids), before, atol=2e-4, rtol=1e-4)


def test_random_rotation_kind():
    model = _randomize_norms_and_biases(tiny_model("qwen2"))
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    before = _logits(model, ids)
    report = rotate_model_(model, RotationSettings(kind="random", seed=4))
    assert report.residual_rotation == "random" and not report.notes
    assert torch.allclose(_logits(model, ids), before, atol=2e-4, rtol=1e-4)


def test_rotated_model_saves_and_loads_as_the_same_architecture(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _randomize_norms_and_biases(tiny_model("llama", tie_word_embeddings=True))
    rotate_model_(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded) is type(model)
    assert not loaded.config.tie_word_embeddings
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_sandwich_norm_models_are_refused():
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match="without --rotate"):
        check_rotatable(model)


def test_recipe_values():
    assert rotation_settings(None) is None and rotation_settings(False) is None
    assert rotation_settings(True) == RotationSettings()
    assert rotation_settings({"seed": 3, "heads": False}) == RotationSettings(seed=3, heads=False)
    with pytest.raises(ValueError, match="unknown option"):
        rotation_settings({"sed": 3})
    with pytest.raises(ValueError, match="must be true, false"):
        rotation_settings("yes")
    with pytest.raises(ValueError, match="true or false"):
        rotation_settings({"heads": "no"})
