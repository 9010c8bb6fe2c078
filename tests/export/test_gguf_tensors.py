import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from tritium.export.gguf_tensors import (
    GGUFTypeError,
    bits_per_weight,
    choose_tensor_type,
    decode_tensor,
    encode_tensor,
)
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight


def round_trip(qw, qtype):
    decoded = decode_tensor(encode_tensor(qw, qtype), qtype)
    expected = qw.dequantize().numpy()
    # The stored values are the fp16 scale (and fp16 offset) times the codes.
    np.testing.assert_allclose(decoded, expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())
    return decoded


@pytest.mark.parametrize("preferred, qtype", [("tq1_0", T.TQ1_0), ("tq2_0", T.TQ2_0)])
@pytest.mark.parametrize("group", ["channel", 256, 512, "tensor"])
def test_ternary_with_constant_256_block_scales_goes_to_tq_exactly(preferred, qtype, group):
    qw = quantize_weight(torch.randn(8, 512), TernaryGrid("absmean", group=group))
    choice = choose_tensor_type(qw, preferred, allow_fallback=False)
    assert choice.qtype == qtype
    decoded = decode_tensor(encode_tensor(qw, qtype), qtype)
    assert np.array_equal(decoded, qw.dequantize().numpy())  # TQ keeps codes and fp16 scales bit-exactly


def test_ternary_groups_smaller_than_256_fall_back_to_q4_0_exactly():
    qw = quantize_weight(torch.randn(4, 576), TernaryGrid("twn", group=64))
    choice = choose_tensor_type(qw, "tq1_0")
    assert choice.qtype == T.Q4_0 and "256" in choice.reason
    decoded = decode_tensor(encode_tensor(qw, T.Q4_0), T.Q4_0)
    assert np.array_equal(decoded, qw.dequantize().numpy())


def test_ternary_with_shift_goes_to_q4_1():
    qw = quantize_weight(torch.randn(4, 256) + 0.5, TernaryGrid("dlt", group=128))
    assert choose_tensor_type(qw, "tq2_0").qtype == T.Q4_1
    round_trip(qw, T.Q4_1)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_codes_go_to_q4_1(bits, symmetric):
    qw = quantize_weight(torch.randn(6, 576), UniformGrid(bits=bits, group=128, ragged_groups=True, symmetric=symmetric))
    assert choose_tensor_type(qw, "tq1_0").qtype == T.Q4_1
    round_trip(qw, T.Q4_1)


def test_unaligned_groups_fall_back_to_f16():
    qw = quantize_weight(torch.randn(3, 48), UniformGrid(bits=8, group=48))
    assert choose_tensor_type(qw, "tq1_0").qtype == T.F16
    round_trip(qw, T.F16)


def test_no_fallback_is_a_clear_error():
    qw = quantize_weight(torch.randn(4, 576), TernaryGrid("absmean", group="channel"))
    with pytest.raises(GGUFTypeError, match="blk.0.attn_q.*TQ1_0 cannot hold.*576"):
        choose_tensor_type(qw, "tq1_0", allow_fallback=False, name="blk.0.attn_q")
    with pytest.raises(GGUFTypeError, match="unknown GGUF ternary type"):
        choose_tensor_type(qw, "q2_k")


def test_bits_per_weight_of_the_types():
    assert bits_per_weight(T.TQ1_0) == pytest.approx(1.6875)
    assert bits_per_weight(T.TQ2_0) == pytest.approx(2.0625)
    assert bits_per_weight(T.Q4_0) == pytest.approx(4.5)
