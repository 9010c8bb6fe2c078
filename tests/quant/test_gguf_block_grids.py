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
SIMPLE_TYPES = [t for t in TYPES if not GGUF_BLOCK_TYPES[t].super_block]
BITS_PER_WEIGHT = {"q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "q8_0": 8.5, "q4_k": 4.5}  # llama.cpp's


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
    with pytest.raises(QuantConfigError, match="'q3_0' is unknown.*q4_0, q4_1, q5_0, q5_1, q8_0, q4_k"):
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


def test_q4_k_needs_widths_of_256_and_names_llama_cpps_fallback_type():
    with pytest.raises(QuantConfigError, match=r"Q4_K stores blocks of 256 .*input width 288\. The nearest type that "
                                               r"fits is Q5_0.*\{kind: gguf, type: q5_0\}"):
        quantize_weight(torch.randn(4, 288), GGUFBlockGrid("q4_k"))
    with pytest.raises(QuantConfigError, match="input width 100.*F16"):
        quantize_weight(torch.randn(4, 100), GGUFBlockGrid("q4_k"))


@pytest.mark.parametrize("gtype", SIMPLE_TYPES)
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


def test_q4_k_sub_block_scales_and_mins_are_6_bit_multiples_of_one_fp16_value_per_256():
    grid = GGUFBlockGrid("q4_k")
    w = awkward_weight(width=512)
    w[5, 256:] = 0  # a whole zero super-block
    qw = quantize_weight(w, grid)
    assert qw.zero is None and qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 15
    for values in (qw.scale, -qw.shift):  # w = (d·sc)·q − dmin·m
        assert bool((values >= 0).all())
        per_super = values.reshape(-1, 8)
        # some fp16 d per super-block makes every value d·k exactly, k an integer 0..63
        d = per_super.amax(1, keepdim=True) / torch.arange(1, 64).float()  # [super-blocks, 63 candidates]
        k = torch.round(per_super[:, None, :] / d.clamp_min(2.0**-24)[:, :, None])
        exact = (d.half().float() == d) & (k <= 63).all(-1) & (d[:, :, None] * k == per_super[:, None, :]).all(-1)
        assert bool((exact.any(1) | (per_super.amax(1) == 0)).all())
    assert bool((qw.scale > 0).all())  # sc is never 0: methods divide by the scale
    got = qw.dequantize()
    assert torch.all(got[5, 256:] == 0) and torch.all(got[0, :32] == 0) and torch.isfinite(got).all()
    expected = qw.codes.float() * qw.scale.repeat_interleave(32, 1) + qw.shift.repeat_interleave(32, 1)
    assert torch.equal(got, expected)
    assert storage_bits(qw.layout, grid) == pytest.approx(w.numel() * 4.5)


def llama_cpp_reference(w: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """llama.cpp's own C quantizer (ggml_quantize_chunk, no importance matrix), dequantized by gguf."""
    import ctypes
    from pathlib import Path

    import llama_cpp
    from gguf import GGML_QUANT_SIZES

    library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    quantize = library.ggml_quantize_chunk
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_int64, ctypes.c_void_p]
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows, width = w.shape
    w = np.ascontiguousarray(w, dtype=np.float32)
    raw = np.zeros((rows, width // block * type_size), np.uint8)
    assert quantize(int(qtype), w.ctypes.data, raw.ctypes.data, 0, rows, width, None) == raw.size
    return quants.dequantize(raw, qtype)


@pytest.mark.parametrize("gtype", TYPES)
@pytest.mark.parametrize("distribution", ["gaussian", "heavy-tailed"])
def test_round_to_nearest_is_as_good_as_llama_cpps_reference_quantizer(gtype, distribution):
    # tritium rounds against the stored fp16 d (and m); llama.cpp's reference against the unrounded ones.
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(64, 512, generator=generator)
    if distribution == "heavy-tailed":
        w = w / torch.rand(64, 512, generator=generator).clamp_min(0.05).sqrt()
    ours = float((quantize_weight(w, GGUFBlockGrid(gtype)).dequantize() - w).pow(2).mean())
    qtype = GGMLQuantizationType[gtype.upper()]
    reference = llama_cpp_reference(w.numpy(), qtype)
    theirs = float(((torch.from_numpy(reference) - w) ** 2).mean())
    assert ours <= 1.01 * theirs
    if gtype in SIMPLE_TYPES:  # the gguf package's numpy quantizer is llama.cpp's reference too
        numpy_reference = quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)
        assert ours <= 1.01 * float(((torch.from_numpy(numpy_reference) - w) ** 2).mean())


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
