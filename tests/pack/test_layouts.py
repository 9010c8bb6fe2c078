import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tritium.pack import (
    PackError,
    code_bits_per_weight,
    digits_per_byte,
    pack_bits,
    pack_digits,
    pack_grouped,
    pack_ternary,
    pack_uniform,
    unpack_bits,
    unpack_digits,
    unpack_grouped,
    unpack_ternary,
    unpack_uniform,
)

shapes = st.tuples(st.integers(1, 7), st.integers(1, 97))


def _random(shape, low, high, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g)


def test_digits_per_byte():
    assert [digits_per_byte(r) for r in (2, 3, 4, 8, 16, 256)] == [8, 5, 4, 2, 2, 1]


@settings(max_examples=60, deadline=None)
@given(shape=shapes, layout=st.sampled_from(["base3", "2bit"]), seed=st.integers(0, 2**31))
def test_ternary_round_trip(shape, layout, seed):
    codes = _random(shape, -1, 2, seed).to(torch.int8)
    packed = pack_ternary(codes, layout)
    per_byte = 5 if layout == "base3" else 4
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], math.ceil(shape[1] / per_byte))
    assert torch.equal(unpack_ternary(packed, shape[1], layout), codes)


def test_base3_is_five_trits_per_byte_little_endian():
    codes = torch.tensor([[1, -1, 0, 0, 1, -1]], dtype=torch.int8)
    packed = pack_ternary(codes, "base3")
    # digits t+1 = 2,0,1,1,2 | 0 → 2 + 0·3 + 1·9 + 1·27 + 2·81 = 200, then 0 (+ zero padding)
    assert packed.tolist() == [[200, 0]]


def test_2bit_ternary_is_four_per_byte_little_endian():
    codes = torch.tensor([[1, -1, 0, 0, 1]], dtype=torch.int8)
    packed = pack_ternary(codes, "2bit")
    # digits t+1 = 2,0,1,1 | 2 → 2 + 0·4 + 1·16 + 1·64 = 82, then 2 (+ zero padding)
    assert packed.tolist() == [[82, 2]]


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 2**31))
def test_uniform_round_trip(shape, bits, seed):
    codes = _random(shape, 0, 2**bits, seed).to(torch.uint8)
    assert torch.equal(unpack_uniform(pack_uniform(codes, bits), shape[1], bits), codes)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_dense_bits_round_trip(shape, bits, seed):
    codes = _random(shape, 0, 2**bits, seed).to(torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape[-1] == math.ceil(shape[1] * bits / 8)
    assert torch.equal(unpack_bits(packed, shape[1], bits), codes)


@settings(max_examples=80, deadline=None)
@given(out=st.integers(1, 5), in_features=st.integers(1, 300), group=st.integers(1, 130),
       radix=st.sampled_from([3, 4, 8, 16]), seed=st.integers(0, 2**31))
def test_grouped_round_trip_every_group_and_padding(out, in_features, group, radix, seed):
    digits = _random((out, in_features), 0, radix, seed).to(torch.uint8)
    packed = pack_grouped(digits, group, radix)
    n_groups = math.ceil(in_features / group)
    assert packed.shape == (out, n_groups, math.ceil(group / digits_per_byte(radix)))
    assert torch.equal(unpack_grouped(packed, radix, in_features, group), digits)


def test_grouped_groups_do_not_share_bytes():
    # group 7 with 5 trits per byte: each group takes 2 bytes, the second holding 2 trits + 3 padding
    digits = torch.tensor([[2] * 7 + [0] * 7])
    packed = pack_grouped(digits, 7, 3)
    assert packed.tolist() == [[[242, 2 + 2 * 3], [0, 0]]]


def test_bad_codes_and_truncated_bytes_fail_clearly():
    with pytest.raises(PackError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([[2]], dtype=torch.int8))
    with pytest.raises(PackError, match="outside 0..3"):
        pack_uniform(torch.tensor([[4]], dtype=torch.uint8), 2)
    with pytest.raises(PackError, match="integer"):
        pack_digits(torch.tensor([[0.5]]), 3)
    packed = pack_ternary(torch.zeros(2, 11, dtype=torch.int8))
    with pytest.raises(PackError, match="truncated"):
        unpack_ternary(packed[:, :2], 11)
    with pytest.raises(PackError, match="corrupt"):
        unpack_digits(torch.tensor([[250]], dtype=torch.uint8), 3, 5)
    with pytest.raises(PackError, match="truncated, corrupt"):
        unpack_grouped(torch.zeros(2, 3, 4, dtype=torch.uint8), 3, 100, 32)


def test_code_bits():
    assert code_bits_per_weight(3, 576) == pytest.approx(8 * 116 / 576)
    assert code_bits_per_weight(3, 640) == 1.6
    assert code_bits_per_weight(4, 128) == 2.0
    assert code_bits_per_weight(16, 128) == 4.0
