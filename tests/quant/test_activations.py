import pytest
import torch

from tritium.quant.activations import (
    ActivationGrid,
    dequantize_activations,
    fake_quantize_activations,
    quantize_activations,
)
from tritium.quant.grids import QuantConfigError
from tritium.utils.errors import TritiumError


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", ["token", 16])
def test_codes_stay_in_range_and_dequantize_within_half_a_step(bits, symmetric, group):
    torch.manual_seed(bits)
    x = torch.randn(3, 5, 64) * torch.linspace(0.1, 4.0, 64)
    grid = ActivationGrid(bits=bits, symmetric=symmetric, group=group)
    codes, scale, zero = quantize_activations(x, grid)
    assert codes.dtype == torch.int32 and codes.shape == x.shape
    assert int(codes.min()) >= grid.min_code and int(codes.max()) <= grid.max_code
    back = dequantize_activations(codes, scale, zero, grid)
    step = scale.expand(*scale.shape[:-1], 64 if group == "token" else 16).reshape(x.shape)
    assert torch.all((back - x).abs() <= step / 2 + 1e-6)
    assert (zero is None) == symmetric


def test_symmetric_int8_keeps_each_tokens_peak_exactly():
    x = torch.tensor([[0.5, -2.0, 1.0, 0.0], [3.0, 0.1, -0.2, 0.3]])
    codes, scale, _ = quantize_activations(x, ActivationGrid(bits=8))
    assert codes[0, 1] == -127 and codes[1, 0] == 127
    assert torch.allclose(scale.flatten(), torch.tensor([2.0 / 127, 3.0 / 127]))


def test_a_zero_token_gives_zero_codes_and_no_nan():
    x = torch.zeros(2, 8)
    for symmetric in (True, False):
        out = fake_quantize_activations(x, ActivationGrid(bits=4, symmetric=symmetric))
        assert torch.equal(out, x)


def test_clipping_lowers_the_scale_and_saturates_the_peak():
    x = torch.tensor([[10.0, 1.0, -1.0, 0.5]])
    full, s_full, _ = quantize_activations(x, ActivationGrid(bits=4))
    clipped, s_clip, _ = quantize_activations(x, ActivationGrid(bits=4, clip_ratio=0.5))
    assert float(s_clip) == pytest.approx(float(s_full) / 2)
    assert int(clipped[0, 0]) == 7


def test_fake_quant_passes_the_gradient_straight_through_and_keeps_the_dtype():
    x = torch.randn(4, 32, requires_grad=True)
    y = fake_quantize_activations(x, ActivationGrid(bits=4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert fake_quantize_activations(x.detach().bfloat16(), ActivationGrid()).dtype == torch.bfloat16
    assert fake_quantize_activations(x, None) is x


@pytest.mark.parametrize("kwargs, words", [
    ({"bits": 3}, "act_bits=3"),
    ({"bits": True}, "act_bits=True"),
    ({"group": 0}, "act_group=0"),
    ({"group": "channel"}, "act_group='channel'"),
    ({"clip_ratio": 1.5}, "act_clip_ratio=1.5"),
    ({"clip_ratio": 0.0}, "act_clip_ratio=0.0"),
])
def test_a_bad_activation_grid_is_refused_naming_the_setting(kwargs, words):
    with pytest.raises(QuantConfigError, match=words.replace("(", r"\(")) as err:
        ActivationGrid(**kwargs)
    assert isinstance(err.value, TritiumError)


def test_a_group_that_does_not_divide_the_width_is_refused():
    with pytest.raises(QuantConfigError, match="does not divide the activation width 48"):
        quantize_activations(torch.randn(2, 48), ActivationGrid(group=32))
