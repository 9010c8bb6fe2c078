import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tritium.pack import PackError, bits_per_weight, bits_report, pack_quantized
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight

groups = st.sampled_from([8, 32, 48, 128, "channel", "tensor"])


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 9), in_features=st.integers(1, 200), group=groups,
       variant=st.sampled_from(["absmean", "twn", "dlt"]), layout=st.sampled_from(["base3", "2bit"]),
       seed=st.integers(0, 2**31))
def test_ternary_pack_dequantizes_exactly(out, in_features, group, variant, layout, seed):
    w = torch.randn(out, in_features, generator=torch.Generator().manual_seed(seed))
    qw = quantize_weight(w, TernaryGrid(variant, group=group, ragged_groups=True))
    pw = pack_quantized(qw, ternary_layout=layout)
    assert pw.packed.dtype == torch.uint8 and pw.scale.dtype == torch.float16
    assert (pw.shift is not None) == (variant == "dlt")
    assert torch.equal(pw.dequantize(), qw.dequantize())


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 9), in_features=st.integers(1, 200), group=groups, bits=st.sampled_from([2, 3, 4, 8]),
       symmetric=st.booleans(), seed=st.integers(0, 2**31))
def test_uniform_pack_dequantizes_exactly(out, in_features, group, bits, symmetric, seed):
    w = torch.randn(out, in_features, generator=torch.Generator().manual_seed(seed))
    qw = quantize_weight(w, UniformGrid(bits, group=group, symmetric=symmetric, ragged_groups=True))
    pw = pack_quantized(qw)
    assert (pw.zero is None) == symmetric
    assert torch.equal(pw.dequantize(), qw.dequantize())


def test_bits_per_weight_per_channel_ternary_on_smollm2_width():
    qw = quantize_weight(torch.randn(576, 576), TernaryGrid("absmean", group="channel"))
    report = bits_per_weight(pack_quantized(qw))
    assert report["code_bits_per_weight"] == pytest.approx(116 * 8 / 576)  # 1.611: 576 trits pad to 580
    assert report["scale_bits_per_weight"] == pytest.approx(16 / 576)
    assert report["bits_per_weight"] <= 1.70


def test_bits_per_weight_counts_zero_points_and_shifts():
    w = torch.randn(8, 256)
    uniform = bits_per_weight(pack_quantized(quantize_weight(w, UniformGrid(4, group=128))))
    assert uniform["bits_per_weight"] == pytest.approx(4 + 16 / 128 + 16 / 128)
    dlt = bits_per_weight(pack_quantized(quantize_weight(w, TernaryGrid("dlt", group=128)), ternary_layout="2bit"))
    assert dlt["bits_per_weight"] == pytest.approx(2 + 32 / 128)
    total = bits_report({"a": pack_quantized(quantize_weight(w, UniformGrid(2, group=64)))})
    assert total["bits_per_weight"] == pytest.approx(2 + 32 / 64)


def test_scales_that_are_not_fp16_values_are_refused():
    qw = quantize_weight(torch.randn(4, 64), TernaryGrid("absmean"))
    qw.scale = qw.scale + 1e-5
    with pytest.raises(PackError, match="not exactly representable"):
        pack_quantized(qw)
    assert torch.equal(pack_quantized(qw, scale_dtype="float32").dequantize(), qw.dequantize())


def _bf16_values(t):
    return None if t is None else t.bfloat16().float()


@pytest.mark.parametrize("grid", [TernaryGrid("dlt", group=32, ragged_groups=True),
                                  TernaryGrid("absmean", group="channel"),
                                  UniformGrid(4, group=32, ragged_groups=True),
                                  UniformGrid(3, group=24, symmetric=True, ragged_groups=True)],
                         ids=lambda g: g.describe())
def test_bf16_scales_store_exactly(grid):
    qw = quantize_weight(torch.randn(6, 100, generator=torch.Generator().manual_seed(0)), grid)
    if qw.shift is not None:  # RTN leaves DLT's shift at zero: give it values to keep
        qw.shift = torch.randn(qw.shift.shape, generator=torch.Generator().manual_seed(1))
    # tritium's methods round scales to fp16 values, which bf16 (8 mantissa bits) mostly cannot hold
    with pytest.raises(PackError, match="not exactly representable in torch.bfloat16"):
        pack_quantized(qw, scale_dtype="bfloat16")
    qw.scale, qw.zero, qw.shift = _bf16_values(qw.scale), _bf16_values(qw.zero), _bf16_values(qw.shift)
    pw = pack_quantized(qw, scale_dtype="bfloat16")
    assert pw.scale.dtype == torch.bfloat16
    assert all(t is None or t.dtype == torch.bfloat16 for t in (pw.zero, pw.shift))
    assert torch.equal(pw.dequantize(), qw.dequantize())
    report = bits_per_weight(pw)
    assert report["scale_bits_per_weight"] == pytest.approx(16 * pw.scale.numel() / (6 * 100))
