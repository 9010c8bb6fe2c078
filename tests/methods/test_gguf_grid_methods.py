"""GPTQ, AWQ and TesseraQ round under a GGUF block format's own constraints (fp16 d, fixed zero or fp16 min)."""

import pytest
import torch

from tritium.methods import config_from_dict, quantize_
from tritium.methods.gptq import gptq_quantize
from tritium.quant import GGUFBlockGrid, quantize_weight

from tiny_outliers import hidden_error, outlier_model

QUICK_TESSERAQ = dict(soft_fractions=(0.5, 0.1), steps_per_stage=8, batch_size=4, lr=1e-2, dst_lr=1e-2, n_grid=5,
                      clip_n_grid=5)


def assert_on_the_format(qweight, grid):
    """What a GGUF block of ``grid`` can hold: codes in range, fp16 d, the fixed zero or an fp16 min."""
    assert int(qweight.codes.max()) <= grid.max_code
    assert torch.equal(qweight.scale.half().float(), qweight.scale)
    if grid.has_min:
        assert qweight.zero is None and torch.equal(qweight.shift.half().float(), qweight.shift)
    else:
        assert qweight.shift is None and bool((qweight.zero == grid.fixed_zero).all())


@pytest.mark.parametrize("gtype", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_with_an_identity_hessian_gptq_is_round_to_nearest_on_every_type(gtype):
    grid = GGUFBlockGrid(gtype)
    w = torch.randn(24, 96, generator=torch.Generator().manual_seed(0))
    qweight, _ = gptq_quantize(w, torch.eye(96), grid)
    rtn = quantize_weight(w, grid)
    assert torch.equal(qweight.codes, rtn.codes) and torch.equal(qweight.scale, rtn.scale)
    assert_on_the_format(qweight, grid)


@pytest.mark.parametrize("method, args", [("gptq", {"act_order": True}), ("awq", {}), ("tesseraq", QUICK_TESSERAQ)])
@pytest.mark.parametrize("gtype", ["q4_0", "q4_1"])
def test_calibrated_methods_beat_rtn_and_stay_on_the_format(method, args, gtype, calib_ids):
    grid = {"kind": "gguf", "type": gtype}
    reference = outlier_model()
    rtn = outlier_model()
    quantize_(rtn, config_from_dict("rtn", grid))
    model = outlier_model()
    result = quantize_(model, config_from_dict(method, grid, **args), calib_ids)
    assert len(result.weights) == 14
    for qweight in result.weights.values():
        assert qweight.grid == GGUFBlockGrid(gtype)
        assert_on_the_format(qweight, qweight.grid)
    assert hidden_error(model, reference, calib_ids) < hidden_error(rtn, reference, calib_ids)
