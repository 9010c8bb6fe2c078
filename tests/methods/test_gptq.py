import math

import pytest
import torch

from tritium.methods import config_from_dict, quantize_
from tritium.methods.gptq import gptq_quantize
from tritium.quant.grids import QuantConfigError, TernaryGrid, UniformGrid, quantize_weight

from tiny_outliers import hidden_error, outlier_model


@pytest.mark.parametrize("grid", [UniformGrid(bits=3, group=16), UniformGrid(bits=2, group="channel"),
                                  TernaryGrid("absmean", group=16)])
def test_with_an_identity_hessian_gptq_is_round_to_nearest(grid):
    # Uncorrelated inputs leave no other column to absorb an error: GPTQ must reduce to RTN.
    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(0))
    qweight, _ = gptq_quantize(w, torch.eye(48), grid, damp_percent=0.01)
    rtn = quantize_weight(w, grid)
    assert torch.equal(qweight.codes, rtn.codes)
    assert torch.equal(qweight.scale, rtn.scale)


def test_gptq_lowers_the_hessian_weighted_error_of_correlated_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=generator) @ torch.randn(32, 32, generator=generator)
    w = torch.randn(16, 32, generator=generator)
    grid = UniformGrid(bits=2, group=8)
    hessian = 2 * x.t() @ x / x.shape[0]
    for act_order in (False, True):
        qweight, _ = gptq_quantize(w, hessian, grid, act_order=act_order)
        gptq_error = (x @ (qweight.dequantize() - w).t()).pow(2).mean()
        rtn_error = (x @ (quantize_weight(w, grid).dequantize() - w).t()).pow(2).mean()
        assert gptq_error < 0.8 * rtn_error


@pytest.mark.parametrize("order", [dict(act_order=True), dict(static_groups=True)])
def test_static_groups_keep_groups_contiguous_with_parameters_from_the_original_weights(order):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 32, generator=generator) * torch.linspace(0.1, 3, 32)
    w = torch.randn(8, 32, generator=generator)
    grid = UniformGrid(bits=3, group=8)
    hessian = 2 * x.t() @ x / 256
    qweight, _ = gptq_quantize(w, hessian, grid, **order)
    rtn = quantize_weight(w, grid)
    assert torch.equal(qweight.scale, rtn.scale) and torch.equal(qweight.zero, rtn.zero)
    assert qweight.layout == rtn.layout
    # Without static groups a group's parameters come from its columns after the earlier updates.
    dynamic, _ = gptq_quantize(w, hessian, grid)
    assert not torch.equal(dynamic.scale, rtn.scale)


def test_dampening_lets_a_singular_hessian_through():
    # Fewer tokens than columns, plus an input that never fires: XᵀX is singular.
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(8, 32, generator=generator)
    x[:, 5] = 0
    w = torch.randn(16, 32, generator=generator)
    hessian = 2 * x.t() @ x / x.shape[0]
    grid = UniformGrid(bits=3, group=8)
    qweight, loss = gptq_quantize(w, hessian, grid, damp_percent=0.01)
    assert torch.isfinite(qweight.dequantize()).all() and math.isfinite(loss)
    assert torch.all(qweight.dequantize()[:, 5] == 0)  # a dead input's weights are zeroed, as in GPTQ
    with pytest.raises(QuantConfigError, match="not positive definite"):
        gptq_quantize(w, hessian, grid, damp_percent=0.0)


def test_mismatched_hessian_is_refused():
    with pytest.raises(QuantConfigError, match="does not match"):
        gptq_quantize(torch.randn(4, 8), torch.eye(6), UniformGrid(bits=2, group="channel"))


@pytest.mark.parametrize("grid", [
    {"kind": "uniform", "bits": 2, "group": 16},
    {"kind": "uniform", "bits": 2, "group": "channel"},
    {"kind": "ternary", "variant": "absmean", "group": 16},
    {"kind": "ternary", "variant": "dlt", "group": 16},
])
def test_gptq_lowers_block_output_error_against_rtn(grid, calib_ids):
    reference = outlier_model()
    rtn = outlier_model()
    quantize_(rtn, config_from_dict("rtn", grid))
    gptq = outlier_model()
    result = quantize_(gptq, config_from_dict("gptq", grid, act_order=True), calib_ids)
    assert hidden_error(gptq, reference, calib_ids) < hidden_error(rtn, reference, calib_ids)
    assert len(result.weights) == 14 and result.details["resumed_from_block"] == 0
