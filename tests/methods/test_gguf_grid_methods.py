"""GPTQ, AWQ and TesseraQ round under a GGUF block format's own constraints (fp16 d, fixed zero or fp16 min)."""

import pytest
import torch

from tritium.methods import config_from_dict, quantize_
from tritium.methods.gptq import gptq_quantize
from tritium.quant import GGUFBlockGrid, QuantConfigError, quantize_weight

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


def wide_outlier_model():
    """outlier_model's outlier channels on a model whose widths divide Q4_K's 256-weight super-blocks."""
    from tritium.models import decoder_layout, tiny_model

    model = tiny_model("llama", seed=0, num_hidden_layers=1, hidden_size=256, intermediate_size=512,
                       num_attention_heads=4, num_key_value_heads=2)
    with torch.no_grad():
        for block in decoder_layout(model).blocks:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight[torch.randperm(256, generator=torch.Generator().manual_seed(7))[:4]] *= 20
    return model


@pytest.mark.parametrize("method, args", [("gptq", {}), ("gptq", {"act_order": True}), ("awq", {}),
                                          ("tesseraq", QUICK_TESSERAQ | {"dst": False})])
def test_calibrated_methods_on_q4_k_keep_its_super_block_structure(method, args, calib_ids):
    from gguf import GGMLQuantizationType

    from tritium.export.gguf_tensors import decode_tensor, encode_tensor

    grid = {"kind": "gguf", "type": "q4_k"}
    reference, rtn, model = wide_outlier_model(), wide_outlier_model(), wide_outlier_model()
    quantize_(rtn, config_from_dict("rtn", grid))
    result = quantize_(model, config_from_dict(method, grid, **args), calib_ids)
    for qweight in result.weights.values():  # 6-bit multiples of one d per 256, or encoding refuses
        raw = encode_tensor(qweight, GGMLQuantizationType.Q4_K)
        assert (decode_tensor(raw, GGMLQuantizationType.Q4_K) == qweight.dequantize().numpy()).all()
    assert hidden_error(model, reference, calib_ids) < hidden_error(rtn, reference, calib_ids)


def test_tesseraq_dst_is_refused_on_q4_k_whose_sub_block_scales_share_one_d():
    from tritium.methods.grid_params import layout_for, rtn_params
    from tritium.methods.tesseraq import RoundingState

    grid = GGUFBlockGrid("q4_k")
    w = torch.randn(4, 256)
    params = rtn_params(w, grid, layout_for(w, grid))
    with pytest.raises(QuantConfigError, match="DST tunes every group's scale.*dst: false"):
        RoundingState("blk.0.q", w, params, grid, torch.device("cpu"), tune_scale=True)
    RoundingState("blk.0.q", w, params, grid, torch.device("cpu"), tune_scale=False)
