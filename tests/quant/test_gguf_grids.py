"""Grids that are llama.cpp's simple block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from tritium.quant import (
    GGUF_BLOCK_TYPES,
    GGUFBlockGrid,
    QuantConfigError,
    fake_quantize,
    grid_from_dict,
    grid_to_dict,
    quantize_weight,
    storage_bits,
)

TYPES = list(GGUF_BLOCK_TYPES)
BITS_PER_WEIGHT = {"q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "q8_0": 8.5}  # llama.cpp's own figures


def awkward_weight(rows=8, width=256, seed=0):
    """Random rows, plus blocks that test the edges: all zero, constant, one outlier, all of one sign."""
    w = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))
    w[0, :32] = 0
    w[1, 32:64] = 0.37
    w[2, 64:96] = 0.01
    w[2, 70] = -5.0
    w[3, 96:128] = w[3, 96:128].abs() + 1
    w[4, 128:160] = -w[4, 128:160].abs()
    return w


@pytest.mark.parametrize("gtype", TYPES)
def test_the_grid_round_trips_through_its_recipe_mapping(gtype):
    grid = GGUFBlockGrid(gtype)
    assert grid_to_dict(grid) == {"kind": "gguf", "type": gtype}
    assert grid_from_dict({"kind": "gguf", "type": gtype.upper()}) == grid
    assert grid.group == 32 and not grid.ragged_groups and grid.describe() == f"gguf:{gtype}"


def test_unknown_types_and_options_are_refused_with_the_known_ones():
    with pytest.raises(QuantConfigError, match="'q3_0' is unknown.*q4_0, q4_1, q5_0, q5_1, q8_0"):
        GGUFBlockGrid("q3_0")
    with pytest.raises(QuantConfigError, match=r"unknown gguf grid option\(s\) \['bits'\]"):
        grid_from_dict({"kind": "gguf", "type": "q4_0", "bits": 4})
    with pytest.raises(QuantConfigError, match="uniform, ternary, gguf"):
        grid_from_dict({"kind": "ggml"})


@pytest.mark.parametrize("gtype", ["q4_0", "q8_0"])
def test_a_width_the_block_does_not_divide_is_refused_naming_width_block_and_what_fits(gtype):
    with pytest.raises(QuantConfigError, match=rf"layers\.0\.mlp\.down_proj: GGUF {gtype.upper()} stores blocks of 32 "
                                               r".*input width 100\..*F16"):
        quantize_weight(torch.randn(4, 100), GGUFBlockGrid(gtype), name="layers.0.mlp.down_proj")
    with pytest.raises(QuantConfigError, match="input width 48"):
        fake_quantize(torch.randn(4, 48), GGUFBlockGrid(gtype))


@pytest.mark.parametrize("gtype", TYPES)
def test_codes_and_fp16_scales_follow_the_format(gtype):
    grid = GGUFBlockGrid(gtype)
    w = awkward_weight()
    qw = quantize_weight(w, grid)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 2**grid.bits - 1
    assert qw.scale.shape == (8, 256 // 32)
    assert torch.equal(qw.scale.half().float(), qw.scale)  # d is an fp16 value
    if grid.has_min:  # w = d·q + m, m an fp16 value of its own (not d times an integer)
        assert qw.zero is None and torch.equal(qw.shift.half().float(), qw.shift)
        expected = qw.codes.float() * qw.scale.repeat_interleave(32, 1) + qw.shift.repeat_interleave(32, 1)
    else:  # w = d·(q − 2^(bits−1))
        assert qw.shift is None and bool((qw.zero == 2 ** (grid.bits - 1)).all())
        expected = (qw.codes.float() - 2 ** (grid.bits - 1)) * qw.scale.repeat_interleave(32, 1)
    assert torch.equal(qw.dequantize(), expected)
    assert torch.equal(fake_quantize(w, grid), expected)
    got = qw.dequantize()
    assert torch.all(got[0, :32] == 0)  # an all-zero block stays exactly zero
    assert torch.isfinite(got).all()
    assert storage_bits(qw.layout, grid) == pytest.approx(w.numel() * BITS_PER_WEIGHT[gtype])


@pytest.mark.parametrize("gtype", TYPES)
def test_round_to_nearest_is_as_good_as_llama_cpps_reference_quantizer(gtype):
    # tritium rounds against the stored fp16 d (and m); llama.cpp's reference against the unrounded ones.
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(3))
    ours = float((quantize_weight(w, GGUFBlockGrid(gtype)).dequantize() - w).pow(2).mean())
    qtype = GGMLQuantizationType[gtype.upper()]
    reference = quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)
    theirs = float(((torch.from_numpy(reference) - w) ** 2).mean())
    assert ours <= 1.01 * theirs


def test_q4_0_uses_the_longer_end_of_its_code_range_for_either_sign():
    # The value of largest magnitude maps to code 0 (q − 8 = −8), whatever its sign: d takes the opposite sign.
    w = torch.zeros(2, 32)
    w[0, 0], w[0, 1] = 0.8, -0.3
    w[1, 0], w[1, 1] = -0.8, 0.3
    qw = quantize_weight(w, GGUFBlockGrid("q4_0"))
    assert qw.codes[:, 0].tolist() == [0, 0]
    assert qw.scale[0, 0] < 0 < qw.scale[1, 0]
    assert torch.equal(qw.dequantize()[:, 0], torch.tensor([0.8, -0.8]).half().float())


def test_fake_quantize_passes_the_gradient_straight_through():
    w = torch.randn(4, 64, requires_grad=True)
    fake_quantize(w, GGUFBlockGrid("q4_1")).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
