import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from tritium.models import decoder_layout, load_model, tiny_model
from tritium.models.online_rotation import (
    ONLINE_ROTATION_CONFIG_KEY,
    OnlineRotationError,
    OnlineRotationSettings,
    add_online_rotations_,
    check_online_widths,
    install_online_rotations,
    online_rotation_settings,
)
from tritium.models.rotation import RotationSettings, rotate_model_
from tritium.quant.hadamard import HadamardOrderError, HadamardTransform
from tritium.utils.errors import TritiumError

# intermediate 192 = 16·12 and, for Gemma, head size 24 = 2·12 take the Kronecker path
FAMILIES = {
    "llama": dict(intermediate_size=192),
    "qwen2": dict(intermediate_size=192),
    "gemma": dict(intermediate_size=192, hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=24),
}


def _model(family="llama", seed=0, **overrides):
    model = tiny_model(family, seed=seed, **{**FAMILIES.get(family, {}), **overrides})
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # tiny models start with unit norms and zero biases, which hide a wrong fold
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    return model


def _ids(model, batch=2, length=24, seed=1):
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


def _relative_error(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("online_rotation", ["down_proj", "qk", "all"])
def test_rotated_model_with_online_hadamards_computes_the_same_logits(family, online_rotation):
    model = _model(family)
    ids = _ids(model)
    before = _logits(model, ids)
    down_before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    rotate_model_(model, RotationSettings(seed=0))  # R1 and R2 first
    report = add_online_rotations_(model, OnlineRotationSettings(online_rotation=online_rotation))
    after = _logits(model, ids)
    assert torch.allclose(after, before, atol=2e-4, rtol=1e-4), (after - before).abs().max()
    assert model.config._attn_implementation == "tritium_online_sdpa"
    assert report.attention == "tritium_online_sdpa"
    if online_rotation in ("down_proj", "all"):
        assert report.down_proj_width == 192 and report.down_proj_factors == (16, 12)
    if online_rotation in ("qk", "all"):
        assert report.head_dim == model.model.layers[0].self_attn.head_dim
        assert report.head_factors == ((2, 12) if family == "gemma" else (16,))
        assert any("KV" in note for note in report.notes)  # R3 without a quantized cache does nothing
    # R1 rotates down_proj's outputs, which keeps each input column's norm; R4 rotates its inputs too
    columns_kept = torch.allclose(model.model.layers[0].mlp.down_proj.weight.norm(dim=0), down_before.norm(dim=0),
                                  rtol=1e-4, atol=1e-6)
    assert columns_kept is (online_rotation == "qk")


def test_the_online_hadamard_is_needed():
    """Without the online H, down_proj's folded W·H computes something else: the hook is not a no-op."""
    model = _model("llama")
    ids = _ids(model)
    before = _logits(model, ids)
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="down_proj"))
    for block in model.model.layers:
        block.mlp._forward_pre_hooks.clear()
        block.mlp.down_proj._forward_pre_hooks.clear()
    assert not torch.allclose(_logits(model, ids), before, atol=1e-2)


def test_an_input_hook_on_down_proj_sees_the_rotated_input():
    """An input quantizer hooked on down_proj, even before the online rotations, quantizes x·H."""
    model = _model("llama")
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    ids = _ids(model)
    _logits(model, ids)
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="down_proj"))
    _logits(model, ids)
    raw, rotated = seen
    assert torch.allclose(rotated, HadamardTransform(192)(raw), atol=1e-5)
    assert not torch.allclose(rotated, raw, atol=1e-2)


def test_eager_attention_is_wrapped_too():
    model = _model("qwen2")
    model.set_attn_implementation("eager")
    ids = _ids(model)
    before = _logits(model, ids)
    report = add_online_rotations_(model, OnlineRotationSettings(online_rotation="all", kv_bits=8))
    assert report.attention == model.config._attn_implementation == "tritium_online_eager"
    after = _logits(model, ids)
    assert 0 < _relative_error(after, before) < 0.02


def test_a_down_proj_swapped_in_later_gets_the_hadamard():
    """Packing replaces down_proj by another module; the MLP's hook puts the online H on it."""
    model = _model("llama")
    ids = _ids(model)
    before = _logits(model, ids)
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="down_proj"))
    for i, block in enumerate(model.model.layers):
        old = block.mlp.down_proj
        new = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        model.set_submodule(f"model.layers.{i}.mlp.down_proj", new)
    assert torch.allclose(_logits(model, ids), before, atol=2e-4, rtol=1e-4)


def test_awq_does_not_fold_a_scale_across_the_online_hadamard():
    model = _model("llama")

    def producer_of_down_proj():
        groups = decoder_layout(model).scale_groups
        return next(g.producer for g in groups if g.consumers == ("mlp.down_proj",))

    assert producer_of_down_proj() == "mlp.up_proj"
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="down_proj"))
    assert producer_of_down_proj() is None


def test_kv_cache_bits_cost_a_little_at_8_and_more_at_4():
    model = _model("llama")
    ids = _ids(model)
    before = _logits(model, ids)
    errors = {}
    for bits in (8, 4):
        quantized = _model("llama")
        add_online_rotations_(quantized, OnlineRotationSettings(kv_bits=bits))
        errors[bits] = _relative_error(_logits(quantized, ids), before)
    assert 0 < errors[8] < 0.01, errors
    assert errors[4] > 4 * errors[8], errors


def _sharp_attention_with_outlier_keys(factor):
    """Head size 64, queries scaled up so that attention is sharp and key errors matter (a random tiny model
    attends almost uniformly), and two key channel pairs scaled up by ``factor`` with the matching query
    channels scaled down: the scores, and so the model, stay the same, but every key vector has outliers.
    RoPE turns channel i with i + d/2, so both of a pair scale."""
    model = _model("llama", hidden_size=256)
    head_dim = model.model.layers[0].self_attn.head_dim
    with torch.no_grad():
        for block in model.model.layers:
            attn = block.self_attn
            attn.q_proj.weight *= 10
            for c in (1, 5):
                for channel in (c, c + head_dim // 2):
                    attn.k_proj.weight.view(-1, head_dim, attn.k_proj.in_features)[:, channel] *= factor
                    attn.q_proj.weight.view(-1, head_dim, attn.q_proj.in_features)[:, channel] /= factor
    return model


def test_r3_lowers_the_4_bit_kv_error_with_outlier_key_channels():
    ids = _ids(_model("llama"))
    before = _logits(_sharp_attention_with_outlier_keys(1.0), ids)
    assert torch.allclose(_logits(_sharp_attention_with_outlier_keys(10.0), ids), before, atol=1e-4, rtol=1e-4)
    errors = {}
    for rotation in (None, "qk"):
        model = _sharp_attention_with_outlier_keys(10.0)
        add_online_rotations_(model, OnlineRotationSettings(online_rotation=rotation, kv_bits=4))
        errors[rotation] = _relative_error(_logits(model, ids), before)
    assert errors["qk"] < 0.7 * errors[None], errors


def test_quantized_cache_in_decoding_equals_the_full_forward():
    """Per-token scales: quantizing the whole cache each step equals quantizing each token once."""
    model = _model("llama")
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="all", kv_bits=4))
    ids = _ids(model, batch=1, length=20)
    full = _logits(model, ids)[:, -1]
    with torch.no_grad():
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], cache=prefix.cache).logits[:, -1]
    assert torch.allclose(step, full, atol=1e-4, rtol=1e-4)


def test_padding_mask_still_applies():
    """The wrapper's name is registered with the inner implementation's mask, or padding would leak."""
    model = _model("llama")
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="all", kv_bits=8))
    ids = _ids(model, batch=1, length=12)
    alone = _logits(model, ids)
    padded = torch.cat([torch.full((1, 4), 7), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    got = _logits(model, padded, attention_mask=mask, position_ids=position_ids)[:, 4:]
    assert torch.allclose(got, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", [3, 6, 16, 0, True, "8", 8.0])
def test_bad_kv_bits_are_refused(bad):
    with pytest.raises(OnlineRotationError, match="kv_bits"):
        OnlineRotationSettings(kv_bits=bad)
    with pytest.raises(TritiumError, match="kv_bits"):
        online_rotation_settings(kv_bits=bad)


def test_recipe_values():
    assert online_rotation_settings() is None and online_rotation_settings(False, None) is None
    assert online_rotation_settings("all", 4) == OnlineRotationSettings(online_rotation="all", kv_bits=4)
    assert online_rotation_settings(None, 8) == OnlineRotationSettings(kv_bits=8)
    assert online_rotation_settings("qk", 4, kv_symmetric=True).kv_grid.symmetric
    with pytest.raises(OnlineRotationError, match="online_rotation='mlp' is unknown"):
        online_rotation_settings("mlp")
    with pytest.raises(OnlineRotationError, match="online_rotation must be"):
        online_rotation_settings(True)
    with pytest.raises(OnlineRotationError, match="unknown online-rotation option"):
        online_rotation_settings("qk", kv_group=8)
    with pytest.raises(OnlineRotationError, match="kv_clip_ratio"):
        OnlineRotationSettings(kv_bits=4, kv_clip_ratio=1.5)
    grid = OnlineRotationSettings(kv_bits=4).kv_grid
    assert (grid.bits, grid.symmetric, grid.group) == (4, False, "token")


@pytest.mark.parametrize("online_rotation, overrides, width", [
    ("down_proj", dict(intermediate_size=100), "intermediate_size) is 100"),
    ("all", dict(intermediate_size=100), "intermediate_size) is 100"),
    ("qk", dict(hidden_size=40, num_attention_heads=4, num_key_value_heads=2), "head size is 10"),
])
def test_widths_without_a_hadamard_are_refused_before_any_change(online_rotation, overrides, width):
    model = tiny_model("llama", **overrides)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(HadamardOrderError, match=re.escape(width)) as err:
        add_online_rotations_(model, OnlineRotationSettings(online_rotation=online_rotation))
    assert "random orthogonal" in str(err.value)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert getattr(model.config, ONLINE_ROTATION_CONFIG_KEY, None) is None
    assert model.config._attn_implementation == "sdpa"


def test_widths_are_checked_from_a_config_alone():
    """For a preflight before the weights load."""
    check_online_widths(OnlineRotationSettings("all"), 1536, 64)  # SmolLM2-135M: 128·12 and 2^6
    with pytest.raises(HadamardOrderError, match=re.escape("intermediate_size) is 100")):
        check_online_widths(OnlineRotationSettings("down_proj"), 100, 64)
    check_online_widths(OnlineRotationSettings("qk"), 100, 64)  # down_proj is not rotated
    with pytest.raises(HadamardOrderError, match="head size is 10"):
        check_online_widths(OnlineRotationSettings("qk", kv_bits=4), 1536, 10)
    check_online_widths(OnlineRotationSettings(kv_bits=4), 100, 10)  # no rotation: any width


def test_a_width_without_a_hadamard_still_takes_the_other_rotation_and_the_kv_cache():
    model = tiny_model("llama", intermediate_size=100)
    ids = _ids(model)
    before = _logits(model, ids)
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="qk"))
    assert torch.allclose(_logits(model, ids), before, atol=2e-4, rtol=1e-4)


def test_other_refusals():
    model = _model("llama")
    with pytest.raises(OnlineRotationError, match="nothing to add"):
        add_online_rotations_(model, OnlineRotationSettings())
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(OnlineRotationError, match="attn_implementation='sdpa'"):
        add_online_rotations_(model, OnlineRotationSettings(kv_bits=8))
    model.config._attn_implementation = "sdpa"
    add_online_rotations_(model, OnlineRotationSettings(kv_bits=8))
    with pytest.raises(OnlineRotationError, match="already has online rotations"):
        add_online_rotations_(model, OnlineRotationSettings(kv_bits=4))


def _saved(tmp_path, settings=OnlineRotationSettings(online_rotation="all", kv_bits=8)):
    model = _model("qwen2")
    rotate_model_(model)
    add_online_rotations_(model, settings)
    model.save_pretrained(tmp_path)
    return model


def test_saved_model_reloads_with_its_online_rotations(tmp_path):
    model = _saved(tmp_path)
    ids = _ids(model)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["attn_implementation"] == "tritium_online_sdpa"
    assert config[ONLINE_ROTATION_CONFIG_KEY]["online_rotation"] == "all"
    loaded, _, _ = load_model(tmp_path)
    assert loaded.config._attn_implementation == "tritium_online_sdpa"
    assert torch.allclose(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    # installing again (a second load path, a swapped module) adds no second Hadamard
    assert install_online_rotations(loaded) == OnlineRotationSettings(online_rotation="all", kv_bits=8)
    assert len(loaded.model.layers[0].mlp.down_proj._forward_pre_hooks) == 1
    assert torch.allclose(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    # and it saves again with the same record
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["attn_implementation"] == "tritium_online_sdpa"
    assert again[ONLINE_ROTATION_CONFIG_KEY] == config[ONLINE_ROTATION_CONFIG_KEY]


def test_from_pretrained_with_tritium_but_not_installed_refuses_to_run(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _saved(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(OnlineRotationError, match="not installed"):
        _logits(plain, _ids(model))
    install_online_rotations(plain)
    assert torch.allclose(_logits(plain, _ids(model)), _logits(model, _ids(model)), atol=1e-5, rtol=1e-5)


def test_transformers_without_tritium_refuses_the_folder(tmp_path):
    _saved(tmp_path, OnlineRotationSettings(online_rotation="down_proj"))
    script = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
              "try:\n    AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
              "except ValueError as err:\n    print('REFUSED', err)\nelse:\n    print('LOADED')\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert "REFUSED" in out.stdout and "tritium_online_sdpa" in out.stdout, out.stdout + out.stderr


def test_quantized_packed_and_reloaded_model_keeps_its_online_rotations(tmp_path):
    """The real pipeline: rotate, add online rotations, quantize (RTN), pack (down_proj is swapped for a packed
    module, which gets the Hadamard back), save and load with tritium: the same logits throughout."""
    from tritium.export.hf import save_packed
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import tiny_tokenizer
    from tritium.nn import pack_model, packed_modules
    from tritium.quant import UniformGrid
    from tritium.quant.grids import grid_to_dict

    model = _model("llama")
    rotate_model_(model)
    add_online_rotations_(model, OnlineRotationSettings(online_rotation="all", kv_bits=8))
    grid = UniformGrid(4, group=32)
    result = quantize_(model, RTNConfig(grid=grid))
    ids = _ids(model)
    fake = _logits(model, ids)
    pack_model(model, result.weights)
    assert "model.layers.0.mlp.down_proj" in packed_modules(model)
    assert torch.allclose(_logits(model, ids), fake, atol=1e-4, rtol=1e-4)
    save_packed(model, tiny_tokenizer(), tmp_path / "m", "rtn", grid_to_dict(grid))
    loaded, _, _ = load_model(tmp_path / "m")
    assert "model.layers.0.mlp.down_proj" in packed_modules(loaded)
    assert torch.allclose(_logits(loaded, ids), fake, atol=1e-4, rtol=1e-4)
