"""q8_0 / q4_0 blocks: GGUF's layouts, the error they promise, and clear refusals."""

import pytest
import torch

from tritium.pack.blocks import BITS_PER_WEIGHT, BlockWeight, HeadTypeError, block_values, quantize_blocks


def _matrix(rows=5, cols=96, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_q8_0_codes_are_within_half_a_step_and_use_the_full_range():
    w = _matrix()
    blocks = quantize_blocks(w, "q8_0")
    assert blocks.codes.dtype == torch.int8 and blocks.codes.shape == (5, 3, 32)
    assert blocks.scale.dtype == torch.float16 and blocks.scale.shape == (5, 3)
    step = blocks.scale.float()[..., None]
    error = (blocks.dequantize().reshape(5, 3, 32) - w.reshape(5, 3, 32)).abs()
    assert bool((error <= step / 2 * 1.01).all())
    assert bool((blocks.codes.abs().amax(-1) == 127).all())  # each block's largest value sits at ±127


def test_q4_0_layout_is_ggufs_low_nibble_j_high_nibble_j_plus_16():
    w = torch.arange(32, dtype=torch.float32)[None] - 16.0  # -16 .. 15: the extreme, -16, maps to -8
    blocks = quantize_blocks(w, "q4_0")
    assert float(blocks.scale[0, 0]) == 2.0  # d = -16 / -8
    values = torch.round(w / 2).clamp(-8, 7) + 8
    byte = blocks.codes[0, 0]
    assert torch.equal((byte & 0x0F).float(), values[0, :16]) and torch.equal((byte >> 4).float(), values[0, 16:])
    torch.testing.assert_close(block_values(blocks.codes, "q4_0")[0, 0], values[0] - 8)


def test_q4_0_maps_each_blocks_largest_magnitude_to_minus_eight_exactly():
    w = _matrix(seed=1)
    blocks = quantize_blocks(w, "q4_0")
    decoded = blocks.dequantize().reshape(5, 3, 32)
    original = w.reshape(5, 3, 32)
    position = original.abs().argmax(-1, keepdim=True)
    assert bool((block_values(blocks.codes, "q4_0").gather(-1, position) == -8).all())
    torch.testing.assert_close(decoded.gather(-1, position), original.gather(-1, position), rtol=1e-3, atol=0)
    step = blocks.scale.float().abs()[..., None]
    assert bool(((decoded - original).abs() <= step * 1.01).all())  # at most one step (the clipped +8 side)


def test_dequantize_rows_decodes_only_the_rows_asked_for():
    blocks = quantize_blocks(_matrix(9, 64), "q8_0")
    ids = torch.tensor([[3, 0], [8, 3]])
    rows = blocks.dequantize_rows(ids, torch.bfloat16)
    assert rows.shape == (2, 2, 64) and rows.dtype == torch.bfloat16
    torch.testing.assert_close(rows.float(), blocks.dequantize()[ids].bfloat16().float())


def test_all_zero_blocks_have_zero_scale_and_decode_to_zero():
    for kind in ("q8_0", "q4_0"):
        blocks = quantize_blocks(torch.zeros(2, 32), kind)
        assert bool((blocks.scale == 0).all()) and bool((blocks.dequantize() == 0).all())


def test_bits_per_weight_include_the_fp16_scale():
    assert BITS_PER_WEIGHT == {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(HeadTypeError, match="multiple of 32"):
        quantize_blocks(_matrix(2, 40), "q8_0")
    with pytest.raises(HeadTypeError, match="unknown"):
        quantize_blocks(_matrix(), "q2_k")
    with pytest.raises(HeadTypeError, match="inf or NaN"):
        quantize_blocks(torch.full((1, 32), float("inf")), "q4_0")
    blocks = quantize_blocks(_matrix(), "q8_0")
    with pytest.raises(HeadTypeError, match="int8"):
        BlockWeight(blocks.codes.view(torch.uint8), blocks.scale, "q8_0").validate()
    with pytest.raises(HeadTypeError, match="float16"):
        BlockWeight(blocks.codes, blocks.scale.float(), "q8_0").validate()
