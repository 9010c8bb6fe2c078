"""Grids that are llama.cpp's block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the k-quants Q2_K to Q6_K, TQ1_0, TQ2_0."""

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
    gguf_fallback_grid,
    grid_to_dict,
    parse_grid_name,
    quantize_weight,
    storage_bits,
)
from tritium.quant.grids import UniformGrid

TYPES = list(GGUF_BLOCK_TYPES)
SIMPLE_TYPES = [t for t in TYPES if not GGUF_BLOCK_TYPES[t].super_block]  # one d (and m) per block
K_TYPES = [t for t in TYPES if GGUF_BLOCK_TYPES[t].super_block]
BITS_PER_WEIGHT = {"q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "q8_0": 8.5, "q2_k": 2.625, "q3_k": 3.4375,
                   "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625, "tq1_0": 1.6875, "tq2_0": 2.0625}  # llama.cpp's type sizes
GROUP = {"q2_k": 16, "q3_k": 16, "q6_k": 16, "tq1_0": 256, "tq2_0": 256}  # the others: 32
# llama-quant.cpp's tensor_type_fallback: the type a tensor goes to when 256 does not divide its width
LLAMA_CPP_FALLBACKS = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
                       "tq1_0": "q4_0", "tq2_0": "q4_0"}


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
    assert grid.group == GROUP.get(gtype, 32) and not grid.ragged_groups and grid.describe() == f"gguf:{gtype}"
    assert grid.bits_per_weight == pytest.approx(BITS_PER_WEIGHT[gtype])


def test_unknown_types_and_options_are_refused_with_the_known_ones():
    with pytest.raises(QuantConfigError, match="'q3_0' is unknown.*q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, "
                                               "q5_k, q6_k, tq1_0, tq2_0"):
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


@pytest.mark.parametrize("gtype", LLAMA_CPP_FALLBACKS)
def test_a_256_type_refuses_a_width_256_does_not_divide_naming_llama_cpps_fallback_type(gtype):
    fallback = LLAMA_CPP_FALLBACKS[gtype]
    with pytest.raises(QuantConfigError, match=rf"{gtype.upper()} stores blocks of 256 .*input width 288\. The nearest "
                                               rf"type that fits is {fallback.upper()}.*"
                                               rf"\{{kind: gguf, type: {fallback}\}}"):
        quantize_weight(torch.randn(4, 288), GGUFBlockGrid(gtype))
    with pytest.raises(QuantConfigError, match=f"input width 100, nor do those of {fallback.upper()}.*F16"):
        quantize_weight(torch.randn(4, 100), GGUFBlockGrid(gtype))


def test_the_fallback_table_is_llama_cpps():
    for gtype in TYPES:
        assert gguf_fallback_grid(GGUFBlockGrid(gtype), 512) is None  # 256 divides it: no fallback
        fallback = gguf_fallback_grid(GGUFBlockGrid(gtype), 288, "blk.0.ffn_down")
        if gtype in LLAMA_CPP_FALLBACKS:
            assert fallback == GGUFBlockGrid(LLAMA_CPP_FALLBACKS[gtype])
        else:  # the 32-weight types fit any width 32 divides
            assert fallback is None
        with pytest.raises(QuantConfigError, match=r"blk\.0\.ffn_down: .*input width 48.*skip this linear"):
            gguf_fallback_grid(GGUFBlockGrid(gtype), 48, "blk.0.ffn_down")
    assert gguf_fallback_grid(UniformGrid(2, 128), 100) is None  # no GGUF grid, nothing to fall back from


def test_a_grid_named_in_one_word_is_a_kind_or_a_gguf_type():
    assert parse_grid_name("gguf:q2_k") == {"kind": "gguf", "type": "q2_k"}
    assert parse_grid_name("gguf:TQ1_0") == {"kind": "gguf", "type": "tq1_0"}
    assert parse_grid_name("ternary") == {"kind": "ternary"}
    with pytest.raises(QuantConfigError, match=r"--grid gguf:q7_k: GGUF type 'q7_k' is unknown; the GGUF grids are "
                                               r"gguf:q4_0, .*gguf:q2_k, gguf:q3_k, gguf:q4_k, gguf:q5_k, gguf:q6_k, "
                                               r"gguf:tq1_0, gguf:tq2_0"):
        parse_grid_name("gguf:q7_k")
    with pytest.raises(QuantConfigError, match="--grid gguf needs a block type after a colon: one of gguf:q4_0"):
        parse_grid_name("gguf")
    with pytest.raises(QuantConfigError, match="'ggml:q4_0' is not a grid: use uniform, ternary or one of gguf:q4_0"):
        parse_grid_name("ggml:q4_0")


@pytest.mark.parametrize("gtype", SIMPLE_TYPES)
def test_codes_and_fp16_scales_follow_the_format(gtype):
    grid = GGUFBlockGrid(gtype)
    w = awkward_weight()
    qw = quantize_weight(w, grid)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= grid.max_code
    assert qw.scale.shape == (8, 256 // grid.group)
    assert torch.equal(qw.scale.half().float(), qw.scale)  # d is an fp16 value
    if grid.has_min:  # w = d·q + m, m an fp16 value of its own (not d times an integer)
        assert qw.zero is None and torch.equal(qw.shift.half().float(), qw.shift)
        expected = qw.codes.float() * qw.scale.repeat_interleave(grid.group, 1) + \
            qw.shift.repeat_interleave(grid.group, 1)
    else:  # w = d·(q − levels/2)
        assert qw.shift is None and bool((qw.zero == grid.levels // 2).all())
        expected = (qw.codes.float() - grid.levels // 2) * qw.scale.repeat_interleave(grid.group, 1)
    assert torch.equal(qw.dequantize(), expected)
    assert torch.equal(fake_quantize(w, grid), expected)
    got = qw.dequantize()
    assert torch.all(got[0, :32] == 0)  # an all-zero block stays exactly zero
    assert torch.isfinite(got).all()
    assert storage_bits(qw.layout, grid) == pytest.approx(w.numel() * BITS_PER_WEIGHT[gtype])


def integer_multiples_of_one_fp16_value(values: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Per row of ``values`` [super-blocks, sub-blocks]: is there an fp16 d with every value d·k, k an integer in
    low..high? (d is the value of largest magnitude over some count in low..high.)"""
    peak = values.gather(1, values.abs().argmax(1, keepdim=True))
    counts = torch.tensor([c for c in range(low, high + 1) if c], dtype=torch.float32)
    d = peak / counts  # [super-blocks, counts]
    k = torch.round(values[:, None, :] / torch.where(d == 0, 1.0, d)[:, :, None])
    exact = (d.half().float() == d) & (k >= low).all(-1) & (k <= high).all(-1) & (
        d[:, :, None] * k == values[:, None, :]).all(-1)
    return exact.any(1) | (peak[:, 0] == 0)


@pytest.mark.parametrize("gtype", K_TYPES)
def test_k_quant_sub_block_scales_and_mins_are_coded_multiples_of_one_fp16_value_per_256(gtype):
    grid = GGUFBlockGrid(gtype)
    code, minimum = grid.format.sub_scale, grid.format.sub_min
    w = awkward_weight(width=512)
    w[5, 256:] = 0  # a whole zero super-block
    qw = quantize_weight(w, grid)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= grid.max_code
    per_super = 256 // grid.group
    assert bool(integer_multiples_of_one_fp16_value(qw.scale.reshape(-1, per_super), code.low, code.high).all())
    assert bool((qw.scale != 0).all())  # sc is never 0: methods divide by the scale
    if grid.has_min:  # w = (d·sc)·q − dmin·m with sc, m ≥ 0
        assert qw.zero is None and bool((qw.scale > 0).all()) and bool((qw.shift <= 0).all())
        assert bool(integer_multiples_of_one_fp16_value(-qw.shift.reshape(-1, per_super), 0, minimum.high).all())
        expected = qw.codes.float() * qw.scale.repeat_interleave(grid.group, 1) + \
            qw.shift.repeat_interleave(grid.group, 1)
    else:  # w = (d·sc)·(q − zero), sc signed
        assert qw.shift is None and bool((qw.zero == grid.fixed_zero).all()) and code.signed
        expected = (qw.codes.float() - grid.fixed_zero) * qw.scale.repeat_interleave(grid.group, 1)
    got = qw.dequantize()
    assert torch.all(got[5, 256:] == 0) and torch.all(got[0, :32] == 0) and torch.isfinite(got).all()
    assert torch.equal(got, expected)
    assert storage_bits(qw.layout, grid) == pytest.approx(w.numel() * BITS_PER_WEIGHT[gtype])


@pytest.mark.parametrize("gtype", ["tq1_0", "tq2_0"])
def test_the_ternary_types_take_each_blocks_least_squares_scale(gtype):
    w = awkward_weight(width=512)
    qw = quantize_weight(w, GGUFBlockGrid(gtype))
    assert qw.scale.shape == (8, 2) and set(qw.codes.unique().tolist()) <= {0, 1, 2}
    ours = (qw.dequantize() - w).pow(2).reshape(8, 2, 256).sum(-1)
    for alpha in torch.linspace(0.01, 3, 300):  # no other scale, with its nearest codes, does better
        t = torch.clamp(torch.round(w / alpha), -1, 1)
        theirs = (alpha * t - w).pow(2).reshape(8, 2, 256).sum(-1)
        assert bool((ours <= theirs * (1 + 1e-3) + 1e-6).all())


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
