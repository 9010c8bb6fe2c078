"""packed_to_quantized inverts pack_quantized exactly; pack_with_codes / unpack_model swap modules both ways."""

import pytest
import torch
from torch import nn

from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.nn import TernaryLinear, pack_with_codes, packed_modules, packed_to_quantized, unpack_model
from tritium.nn.packed_linear import QuantLinear
from tritium.pack import PackError, pack_quantized
from tritium.quant import TernaryGrid, UniformGrid
from tritium.quant.grids import quantize_weight

GRIDS = [
    TernaryGrid("absmean", group=32, ragged_groups=True),
    TernaryGrid("dlt", group="channel"),
    TernaryGrid("twn", group="tensor"),
    UniformGrid(2, group=16, ragged_groups=True),
    UniformGrid(3, group="channel", symmetric=True),
    UniformGrid(4, group=64, ragged_groups=True, symmetric=True),
    UniformGrid(4, group="tensor"),
    UniformGrid(8, group=32, ragged_groups=True),
]


def _dlt_shift(qw):
    # RTN leaves DLT's shift at zero; give it real values so the round trip has something to keep.
    if qw.shift is not None:
        qw.shift = torch.randn(qw.shift.shape).half().float()
    return qw


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.describe())
@pytest.mark.parametrize("layout", ["base3", "2bit"])
def test_round_trip_dequantizes_identically_on_random_shapes(grid, layout):
    gen = torch.Generator().manual_seed(7)
    for _ in range(4):
        out_features, in_features = (int(torch.randint(1, 40, (1,), generator=gen)),
                                     int(torch.randint(1, 150, (1,), generator=gen)))
        w = torch.randn(out_features, in_features, generator=gen)
        qw = _dlt_shift(quantize_weight(w, grid))
        packed = pack_quantized(qw, layout)
        back = packed_to_quantized(packed, grid)
        assert back.scale.shape == qw.layout.scale_shape == back.layout.scale_shape
        assert back.codes.dtype == (torch.int8 if isinstance(grid, TernaryGrid) else torch.uint8)
        assert torch.equal(back.codes.long(), qw.codes.long())
        assert torch.equal(back.dequantize(), packed.dequantize())
        assert torch.equal(back.dequantize(), qw.dequantize())
        assert (back.shift is None) == (qw.shift is None)
        if isinstance(grid, UniformGrid):
            assert torch.equal(back.zero, qw.zero)  # explicit or the implicit 2^(k-1)


def test_module_input_and_mismatched_grids_fail_clearly():
    qw = quantize_weight(torch.randn(8, 64), TernaryGrid("absmean", group=32))
    module = TernaryLinear.from_quantized(qw)
    assert torch.equal(packed_to_quantized(module, TernaryGrid("absmean", group=32)).dequantize(), qw.dequantize())
    with pytest.raises(PackError, match="groups of 32"):
        packed_to_quantized(module, TernaryGrid("absmean", group=16))
    with pytest.raises(PackError, match="needs .*shift"):
        packed_to_quantized(module, TernaryGrid("dlt", group=32))
    with pytest.raises(PackError, match="radix"):
        packed_to_quantized(module, UniformGrid(4, group=32))
    per_channel = pack_quantized(quantize_weight(torch.randn(4, 16), TernaryGrid("absmean", group="channel")))
    with pytest.raises(PackError, match="per-tensor"):
        packed_to_quantized(per_channel, TernaryGrid("absmean", group="tensor"))


@pytest.mark.parametrize("grid,layout,cls", [(TernaryGrid("dlt", group=32), "2bit", TernaryLinear),
                                             (UniformGrid(4, group=32), "base3", QuantLinear)])
def test_pack_with_codes_then_unpack_gives_the_fake_model_back(grid, layout, cls):
    model = tiny_model("llama", seed=1)
    result = quantize_(model, RTNConfig(grid=grid))
    codes = {name: pack_quantized(qw) for name, qw in result.weights.items()}
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake = model(ids).logits
        pack_with_codes(model, codes, grid, ternary_layout=layout)
        assert len(packed_modules(model)) == len(codes)
        assert all(type(m) is cls for m in packed_modules(model).values())
        packed_logits = model(ids).logits
        torch.testing.assert_close(packed_logits, fake, rtol=1e-4, atol=1e-4)
        weights = unpack_model(model, grid)
        assert not packed_modules(model) and set(weights) == set(codes)
        assert isinstance(model.get_submodule(next(iter(codes))), nn.Linear)
        assert torch.equal(model(ids).logits, fake)
        for name, qw in weights.items():
            assert torch.equal(qw.dequantize(), result.weights[name].dequantize())


def test_pack_with_codes_refuses_codes_of_other_weights():
    grid = TernaryGrid("absmean", group=32)
    model = tiny_model("llama", seed=1)
    result = quantize_(model, RTNConfig(grid=grid))
    other = tiny_model("llama", seed=2)
    quantize_(other, RTNConfig(grid=grid))
    codes = {name: pack_quantized(qw) for name, qw in result.weights.items()}
    with pytest.raises(PackError, match="do not belong to these weights"):
        pack_with_codes(other, codes, grid)
    with pytest.raises(PackError, match="does not have"):
        pack_with_codes(model, {"model.layers.9.mlp.up_proj": next(iter(codes.values()))}, grid)
