import math

import pytest
import torch

from tritium.quant import (
    GroupLayout,
    QuantConfigError,
    TernaryGrid,
    UniformGrid,
    fake_quantize,
    grid_from_dict,
    grid_to_dict,
    quantize_weight,
    round_ste,
    storage_bits,
)


def test_uniform_asymmetric_codes_and_scale_equations():
    w = torch.tensor([[-1.0, -0.5, 0.0, 2.0], [0.1, 0.2, 0.3, 0.4]])
    q = quantize_weight(w, UniformGrid(bits=2, group=4))
    # scale = (max - min) / (2^b - 1), zero = round(-min / scale)
    assert torch.allclose(q.scale[:, 0], torch.tensor([1.0, 0.1]).half().float())
    assert q.zero[:, 0].tolist() == [1.0, 0.0]
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 3
    # code = round(w / scale) + zero; round(-0.5) is 0 (half to even), so -0.5 maps to the zero point
    assert q.codes[0].tolist() == [0, 1, 1, 3]
    dq = q.dequantize()
    assert torch.allclose(dq[0], torch.tensor([-1.0, 0.0, 0.0, 2.0]))


def test_uniform_symmetric_zero_is_midpoint_and_range_from_absmax():
    w = torch.randn(8, 64)
    grid = UniformGrid(bits=4, group=32, symmetric=True)
    q = quantize_weight(w, grid)
    assert torch.all(q.zero == 8)
    absmax = w.view(8, 2, 32).abs().amax(-1)
    assert torch.allclose(q.scale, (2 * absmax / 15).half().float())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [16, "channel", "tensor"])
def test_uniform_error_bounded_by_half_step(bits, group):
    w = torch.randn(16, 64)
    q = quantize_weight(w, UniformGrid(bits=bits, group=group))
    step = q.layout.expand(q.scale)
    # Every weight is within half a step of its grid point (plus fp16 rounding of the scale).
    assert torch.all((q.dequantize() - w).abs() <= step / 2 * 1.01 + 1e-6)
    assert len(torch.unique(q.codes)) <= 2**bits


def test_more_bits_means_less_error():
    w = torch.randn(32, 128)
    errors = [(quantize_weight(w, UniformGrid(bits=b, group=32)).dequantize() - w).pow(2).mean() for b in (2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_group_shapes():
    w = torch.randn(6, 96)
    assert quantize_weight(w, UniformGrid(bits=4, group=32)).scale.shape == (6, 3)
    assert quantize_weight(w, UniformGrid(bits=4, group="channel")).scale.shape == (6, 1)
    assert quantize_weight(w, UniformGrid(bits=4, group="tensor")).scale.shape == (1, 1)


def test_ragged_last_group_uses_only_its_own_weights():
    w = torch.randn(4, 80)
    w[:, 64:] *= 100  # the last 16 columns form their own group of a different scale
    q = quantize_weight(w, UniformGrid(bits=4, group=64, ragged_groups=True))
    assert q.scale.shape == (4, 2)
    ref_tail = quantize_weight(w[:, 64:].contiguous(), UniformGrid(bits=4, group="channel"))
    assert torch.equal(q.scale[:, 1:], ref_tail.scale)
    assert torch.equal(q.codes[:, 64:], ref_tail.codes)


def test_group_that_does_not_divide_is_a_clear_error():
    with pytest.raises(QuantConfigError, match="does not divide the input width 576.*ragged_groups"):
        quantize_weight(torch.randn(4, 576), UniformGrid(bits=2, group=128), name="q_proj")


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_unsupported_bits(bits):
    with pytest.raises(QuantConfigError, match="not supported"):
        UniformGrid(bits=bits)


@pytest.mark.parametrize("group", [0, -3, "row", 1.5])
def test_bad_group(group):
    with pytest.raises(QuantConfigError, match="group"):
        UniformGrid(group=group)


def test_empty_and_non_finite_weights_rejected():
    with pytest.raises(QuantConfigError, match="empty"):
        quantize_weight(torch.empty(0, 8), UniformGrid(bits=4, group="channel"))
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    with pytest.raises(QuantConfigError, match="NaN"):
        quantize_weight(w, UniformGrid(bits=4, group="channel"))
    with pytest.raises(QuantConfigError, match="2-D"):
        GroupLayout.for_weight((4, 4, 4), 4)


def test_ternary_absmean_definition():
    w = torch.randn(8, 64)
    q = quantize_weight(w, TernaryGrid("absmean", group="channel"))
    gamma = w.abs().mean(1, keepdim=True).half().float()
    assert torch.equal(q.scale, gamma)
    assert torch.equal(q.codes, torch.clamp(torch.round(w / gamma), -1, 1).to(torch.int8))
    assert torch.allclose(q.dequantize(), gamma * q.codes.float())


def test_ternary_twn_threshold_and_least_squares_scale():
    w = torch.randn(4, 32)
    q = quantize_weight(w, TernaryGrid("twn", group=16))
    for row in range(4):
        for g in range(2):
            block = w[row, g * 16 : (g + 1) * 16]
            delta = 0.7 * block.abs().mean()
            expected = torch.sign(block) * (block.abs() > delta)
            assert torch.equal(q.codes[row, g * 16 : (g + 1) * 16].float(), expected)
            alpha = block.abs()[expected != 0].mean()
            assert math.isclose(q.scale[row, g].item(), alpha.half().item(), rel_tol=1e-3)


def test_ternary_dlt_shift_is_group_mean_and_beats_twn_on_offset_weights():
    w = torch.randn(16, 64) * 0.1 + 0.3  # weights with a large common offset
    dlt = quantize_weight(w, TernaryGrid("dlt", group=32))
    twn = quantize_weight(w, TernaryGrid("twn", group=32))
    assert torch.allclose(dlt.shift, w.view(16, 2, 32).mean(-1).half().float())
    assert set(torch.unique(dlt.codes).tolist()) <= {-1, 0, 1}
    assert (dlt.dequantize() - w).pow(2).mean() < 0.5 * (twn.dequantize() - w).pow(2).mean()


def test_ternary_codes_are_ternary_and_variant_checked():
    for variant in ("absmean", "twn", "dlt"):
        q = quantize_weight(torch.randn(8, 32), TernaryGrid(variant, group=8))
        assert set(torch.unique(q.codes).tolist()) <= {-1, 0, 1}
    with pytest.raises(QuantConfigError, match="unknown"):
        TernaryGrid("binary")


def test_fake_quantize_is_straight_through():
    w = torch.randn(8, 32, requires_grad=True)
    grid = UniformGrid(bits=2, group=16)
    out = fake_quantize(w, grid)
    assert torch.equal(out.detach(), quantize_weight(w.detach(), grid).dequantize())
    (out * torch.arange(32.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(32.0).expand(8, 32))
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(round_ste(x.detach()), torch.tensor([0.0, 2.0])) and torch.equal(x.grad, torch.ones(2))


def test_storage_bits():
    layout = GroupLayout.for_weight((10, 256), 128)
    assert storage_bits(layout, UniformGrid(bits=2, group=128)) == 10 * 256 * 2 + 20 * (16 + 2)
    assert storage_bits(layout, UniformGrid(bits=2, group=128, symmetric=True)) == 10 * 256 * 2 + 20 * 16
    assert storage_bits(layout, TernaryGrid("dlt", group=128)) == 10 * 256 * 1.6 + 20 * 32


def test_grid_dict_round_trip_and_errors():
    for grid in (UniformGrid(bits=3, group=64, symmetric=True), TernaryGrid("dlt", group="channel")):
        assert grid_from_dict(grid_to_dict(grid)) == grid
    with pytest.raises(QuantConfigError, match="unknown uniform grid option"):
        grid_from_dict({"kind": "uniform", "bitz": 2})
    with pytest.raises(QuantConfigError, match="grid kind"):
        grid_from_dict({"kind": "binary"})
