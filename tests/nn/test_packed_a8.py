"""A packed linear whose input has an 8-bit per-token activation quantizer runs tritium::packed_linear_a8 on the
CPU: the quantizer lets the input through and the kernel computes the same codes itself. Every other case (the
quantizer off, other activation grids, an AWQ channel scale, 8-bit weights, no quantizer) keeps the pre-hook's
fake quant and the float-activation kernel."""

import pytest
import torch
from torch import nn

import tritium.kernels.cpu as cpu

import tritium.nn.packed_linear as packed_linear_module
from tritium.kernels import packed_linear_reference
from tritium.nn import activations_in_float, install_activation_quantizers
from tritium.nn.activation_quant import activation_quantizer_of
from tritium.nn.packed_linear import PackedLinear
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight
from tritium.quant.activations import ActivationGrid, fake_quantize_activations


@pytest.fixture
def calls(monkeypatch):
    """How often each op the packed linears call ran."""
    seen = {"a8": 0, "float": 0}
    real_a8, real_float = packed_linear_module.packed_linear_a8, packed_linear_module.packed_linear

    def a8(*args, **kwargs):
        seen["a8"] += 1
        return real_a8(*args, **kwargs)

    def float_op(*args, **kwargs):
        seen["float"] += 1
        return real_float(*args, **kwargs)

    monkeypatch.setattr(packed_linear_module, "packed_linear_a8", a8)
    monkeypatch.setattr(packed_linear_module, "packed_linear", float_op)
    return seen


def _model(weight_grid, act_grid=None, out=24, in_features=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    qw = quantize_weight(torch.randn(out, in_features, generator=g), weight_grid)
    if qw.shift is not None:
        qw.shift = torch.randn(qw.shift.shape, generator=g).half().float()
    model = nn.Sequential(PackedLinear.from_quantized(qw, bias=torch.randn(out, generator=g)))
    if act_grid is not None:
        install_activation_quantizers(model, {"0": act_grid})
    return model, model[0]


def _expected(layer, x):
    """What the layer computes on the inputs ``x`` (already as its kernel should see them), in float64."""
    w = layer.dequantize(torch.float64)
    return (x.double() @ w.T + layer.bias.double()).float()


def _close(got, want, x, layer):
    bound = 1e-5 * (x.double().abs() @ layer.dequantize(torch.float64).abs().T).float() + 1e-4
    assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())


@pytest.mark.parametrize("weight_grid", [TernaryGrid("dlt", group=32, ragged_groups=True),
                                         TernaryGrid("absmean"), UniformGrid(4, group=32, ragged_groups=True),
                                         UniformGrid(2, group=64, ragged_groups=True)])
@pytest.mark.parametrize("clip", [1.0, 0.8])
def test_an_a8_quantizer_runs_the_integer_kernel_with_the_fake_quant_codes(calls, weight_grid, clip):
    grid = ActivationGrid(bits=8, clip_ratio=clip)
    model, layer = _model(weight_grid, grid)
    x = torch.randn(2, 5, 80) * 3
    assert layer.integer_activation_grid(x) is grid
    with torch.no_grad():
        got = model(x)
    assert calls == {"a8": 1, "float": 0}
    seen = fake_quantize_activations(x, grid)
    _close(got, _expected(layer, seen), seen, layer)
    # the fake-quant codes matter: float activations give another result, beyond the bound
    assert not bool(((got - _expected(layer, x)).abs() <= 1e-5 * _expected(layer, x).abs() + 1e-5).all())


def test_the_other_cases_keep_the_pre_hook_and_the_float_kernel(calls):
    x = torch.randn(3, 80) * 2
    a8 = ActivationGrid(bits=8)
    # the quantizer switched off: float activations, untouched
    model, layer = _model(UniformGrid(4, group=32, ragged_groups=True), a8)
    with torch.no_grad(), activations_in_float(model):
        got = model(x)
    assert calls == {"a8": 0, "float": 1}
    _close(got, _expected(layer, x), x, layer)
    # 4-bit activations: the pre-hook fake-quantizes them, the float kernel multiplies
    for act in (ActivationGrid(bits=4, symmetric=False), ActivationGrid(bits=8, group=16)):
        model, layer = _model(UniformGrid(4, group=32, ragged_groups=True), act)
        assert layer.integer_activation_grid(x) is None
        with torch.no_grad():
            got = model(x)
        seen = fake_quantize_activations(x, act)
        _close(got, _expected(layer, seen), seen, layer)
    # an AWQ channel scale (set during calibration only) quantizes x / s: only the pre-hook knows it
    model, layer = _model(TernaryGrid("absmean"), a8)
    activation_quantizer_of(layer).channel_scale = torch.rand(80) + 0.5
    assert layer.integer_activation_grid(x) is None
    # 8-bit weight codes: no integer path
    model, layer = _model(UniformGrid(8, group=16), a8)
    assert layer.integer_activation_grid(x) is None
    with torch.no_grad():
        got = model(x)
    seen = fake_quantize_activations(x, a8)
    _close(got, _expected(layer, seen), seen, layer)
    # no quantizer at all
    model, layer = _model(TernaryGrid("absmean"))
    assert layer.integer_activation_grid(x) is None
    assert calls["a8"] == 0


def test_the_integer_layout_is_built_once_and_again_after_new_codes(calls):
    model, layer = _model(UniformGrid(4, group=32, ragged_groups=True), ActivationGrid(bits=8))
    x = torch.randn(1, 80)
    with torch.no_grad():
        first = model(x)
        layout = layer._a8_layout
        assert layout is not None and model(x).equal(first) and layer._a8_layout is layout
        other, _ = _model(UniformGrid(4, group=32, ragged_groups=True), seed=1)
        layer.load_packed(other[0].packed_weight())
        again = model(x)
    assert layer._a8_layout is not layout and not again.equal(first)
    want = packed_linear_reference(fake_quantize_activations(x, ActivationGrid(bits=8)), layer.packed, layer.scale,
                                   layer.zero, layer.shift, layer.radix, layer.in_features, layer.group_size,
                                   layer.implicit_zero) + layer.bias
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("restore_cpu_path")
def test_the_portable_path_keeps_float_activations(calls):
    """Its integer loops are slower than its float lookup tables: there the pre-hook's fake quant stays."""
    if not cpu.load_cpu_kernel():
        pytest.skip("no CPU kernel")
    cpu.set_cpu_path("portable")
    model, layer = _model(UniformGrid(4, group=32, ragged_groups=True), ActivationGrid(bits=8))
    x = torch.randn(2, 80)
    assert layer.integer_activation_grid(x) is None
    with torch.no_grad():
        got = model(x)
    assert calls == {"a8": 0, "float": 1}
    seen = fake_quantize_activations(x, ActivationGrid(bits=8))
    _close(got, _expected(layer, seen), seen, layer)
    for path in ("avx2", "avx512"):
        if path in cpu.available_paths():
            cpu.set_cpu_path(path)
            assert layer.integer_activation_grid(x) is not None
