"""Activation quantizers on the inputs of named linears: what they compute, where they sit, what survives."""

import copy
from dataclasses import replace

import pytest
import torch

from tritium.models import decoder_layout, tiny_model
from tritium.nn.activation_quant import (ActivationQuantizer, activation_grids, activation_quantizer_of,
                                         activation_quantizers, activation_record, activations_in_float,
                                         describe_activations, grids_from_record, install_activation_quantizers,
                                         remove_activation_quantizers)
from tritium.quant.activations import ActivationGrid, fake_quantize_activations
from tritium.quant.grids import QuantConfigError

A4 = ActivationGrid(bits=4, symmetric=False)


def test_a_quantized_linear_computes_on_its_fake_quantized_input():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8)
    x = torch.randn(2, 5, 32) * torch.linspace(0.1, 5, 32)
    expected = torch.nn.functional.linear(fake_quantize_activations(x, A4), linear.weight, linear.bias)
    float_out = linear(x)
    install_activation_quantizers(linear, {"": A4})
    out = linear(x)
    assert torch.equal(out, expected) and not torch.allclose(out, float_out)
    with activations_in_float(linear):
        assert torch.equal(linear(x), float_out)
    assert activation_quantizer_of(linear).enabled  # back on after the block
    assert remove_activation_quantizers(linear) == 1 and torch.equal(linear(x), float_out)


def test_only_the_named_linears_quantize_and_the_model_copy_keeps_them():
    model = tiny_model("llama")
    names = list(decoder_layout(model).quantizable_linears())[:3]
    ids = torch.randint(0, 500, (1, 12))
    with torch.no_grad():
        before = model(ids).logits
    install_activation_quantizers(model, {name: ActivationGrid(bits=8) for name in names})
    assert sorted(activation_quantizers(model)) == sorted(names)
    assert activation_quantizer_of(model.lm_head) is None and activation_quantizer_of(model.model.embed_tokens) is None
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.equal(before, after)
    twin = copy.deepcopy(model)
    assert activation_grids(twin) == activation_grids(model)
    remove_activation_quantizers(twin)  # the copy's hooks are its own
    assert activation_grids(twin) == {} and sorted(activation_grids(model)) == sorted(names)
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, before)


def test_installing_again_replaces_and_a_missing_module_is_an_error():
    linear = torch.nn.Linear(16, 4)
    install_activation_quantizers(linear, {"": ActivationGrid(bits=8)})
    install_activation_quantizers(linear, {"": A4})
    assert len(activation_quantizers(linear)) == 1 and activation_quantizer_of(linear).grid == A4
    with pytest.raises(QuantConfigError, match="has no such module"):
        install_activation_quantizers(linear, {"nope": A4})
    with pytest.raises(QuantConfigError, match="needs an ActivationGrid"):
        ActivationQuantizer({"bits": 8})


def test_a_channel_scale_quantizes_what_the_folded_layer_would_see():
    torch.manual_seed(1)
    x = torch.randn(6, 16) * 3
    s = torch.rand(16) + 0.5
    quantizer = ActivationQuantizer(A4)
    quantizer.channel_scale = s
    assert torch.allclose(quantizer.fake(x), fake_quantize_activations(x / s, A4) * s, atol=1e-6)
    assert not torch.allclose(quantizer.fake(x), fake_quantize_activations(x, A4))


def test_the_saved_record_round_trips_each_linears_clipping_ratio():
    grids = {"a": A4, "b": replace(A4, clip_ratio=0.9), "c": A4}
    record = activation_record(grids)
    assert record == {"grid": {"bits": 4, "symmetric": False, "group": "token", "clip_ratio": 1.0},
                      "linears": ["a", "b", "c"], "clip_ratios": {"b": 0.9}}
    assert grids_from_record(record) == grids
    assert activation_record({}) is None
    assert describe_activations(grids) == "A4-asym (clip searched per linear)"
    assert describe_activations({"a": ActivationGrid(bits=8, clip_ratio=0.9)}) == "A8 (clip 0.9)"
    with pytest.raises(QuantConfigError, match="differ in more than their clipping ratio"):
        activation_record({"a": A4, "b": ActivationGrid(bits=8)})
    with pytest.raises(QuantConfigError, match="damaged"):
        grids_from_record({"grid": record["grid"]})
    with pytest.raises(QuantConfigError, match="does not list"):
        grids_from_record(record | {"clip_ratios": {"z": 0.8}})
