"""GPTQ, AWQ and TesseraQ round under a GGUF block format's own constraints (fp16 d, fixed zero or fp16 min)."""

import pytest
import torch

from tritium.methods import config_from_dict, quantize_
from tritium.methods.gptq import gptq_quantize
from tritium.quant import GGUF_BLOCK_TYPES, GGUFBlockGrid, quantize_weight

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


@pytest.mark.parametrize("gtype", GGUF_BLOCK_TYPES)
def test_with_an_identity_hessian_gptq_is_round_to_nearest_on_every_type(gtype):
    grid = GGUFBlockGrid(gtype)
    width = 512 if grid.format.row_multiple == 256 else 96
    w = torch.randn(24, width, generator=torch.Generator().manual_seed(0))
    qweight, _ = gptq_quantize(w, torch.eye(width), grid)
    rtn = quantize_weight(w, grid)
    assert torch.equal(qweight.codes, rtn.codes) and torch.equal(qweight.scale, rtn.scale)
    if grid.has_min:
        assert torch.equal(qweight.shift, rtn.shift)
    if grid.super_block:
        assert_encodes_exactly(qweight)
    else:
        assert_on_the_format(qweight, grid)


def assert_encodes_exactly(qweight):
    """The GGUF encoder refuses whatever its type cannot hold (sub-block scales that are no integer multiples
    of one fp16 d, mins that raise a sub-block, ...), and gguf's dequantizer reads back tritium's weight."""
    from gguf import GGMLQuantizationType

    from tritium.export.gguf_tensors import decode_tensor, encode_tensor

    qtype = GGMLQuantizationType[qweight.grid.type.upper()]
    assert (decode_tensor(encode_tensor(qweight, qtype), qtype) == qweight.dequantize().numpy()).all()


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


QUICK_AWQ = dict(n_grid=5, clip_n_grid=5)
K_AND_TERNARY_TYPES = [t for t, f in GGUF_BLOCK_TYPES.items() if f.row_multiple == 256]
# GPTQ (dynamic super-block fits and act-order's static ones, alternately) and TesseraQ (PAR with DST over
# each super-block's d, or each TQ block's) on every type; AWQ on the 2-, 3-, 4- and 6-bit k-quants and TQ1_0;
# TesseraQ without DST once.
CALIBRATED_CASES = [
    *[(t, "gptq", {"act_order": bool(i % 2)}) for i, t in enumerate(K_AND_TERNARY_TYPES)],
    *[(t, "tesseraq", QUICK_TESSERAQ) for t in K_AND_TERNARY_TYPES],
    *[(t, "awq", QUICK_AWQ) for t in ("q2_k", "q3_k", "q4_k", "q6_k", "tq1_0")],
    ("q2_k", "tesseraq", QUICK_TESSERAQ | {"dst": False}),
]


@pytest.mark.parametrize("gtype, method, args", CALIBRATED_CASES)
def test_calibrated_methods_on_the_256_types_keep_their_block_structure_and_beat_rtn(gtype, method, args, calib_ids):
    grid = {"kind": "gguf", "type": gtype}
    reference, rtn, model = wide_outlier_model(), wide_outlier_model(), wide_outlier_model()
    quantize_(rtn, config_from_dict("rtn", grid))
    result = quantize_(model, config_from_dict(method, grid, **args), calib_ids)
    assert len(result.weights) == 7 and not result.grid_overrides
    for qweight in result.weights.values():
        assert_encodes_exactly(qweight)
    assert hidden_error(model, reference, calib_ids) < hidden_error(rtn, reference, calib_ids)


@pytest.mark.parametrize("gtype", ["q2_k", "q3_k", "q6_k"])
def test_tesseraq_dst_tunes_each_super_blocks_d_and_keeps_the_sub_block_integers(gtype):
    from tritium.methods.grid_params import layout_for, rtn_params
    from tritium.methods.tesseraq import RoundingState
    from tritium.quant.grids import sub_block_factors

    grid = GGUFBlockGrid(gtype)
    w = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    params = rtn_params(w, grid, layout_for(w, grid))
    state = RoundingState("blk.0.q", w, params, grid, torch.device("cpu"), tune_scale=True)
    assert state.v.shape == (4, 2)  # one factor per super-block of 256
    with torch.no_grad():
        state.v.copy_(torch.tensor([[0.3, -0.2], [0.0, 0.1], [-0.4, 0.2], [0.05, 0.0]]))
    code, per_super = grid.format.sub_scale, 256 // grid.group
    d, integers, _ = sub_block_factors(params.scale.reshape(-1, per_super), code)
    tuned_d, tuned_integers, exact = sub_block_factors(state.scale(exact=True).reshape(-1, per_super), code)
    assert bool(exact.all()) and torch.equal(tuned_integers, integers)
    assert torch.equal(tuned_d, (d * state.dst_factor().detach().reshape(-1)).half().float())
    state.hard[:] = True
    qweight, _ = state.folded()
    assert_encodes_exactly(qweight)


def narrow_llama(intermediate: int):
    from tritium.models import tiny_model

    return tiny_model("llama", seed=0, num_hidden_layers=2, hidden_size=256, intermediate_size=intermediate,
                      num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("method, gtype, fallback", [("rtn", "q2_k", "q4_0"), ("gptq", "q3_k", "q4_0"),
                                                     ("rtn", "q5_k", "q5_1"), ("rtn", "q6_k", "q8_0"),
                                                     ("gptq", "tq1_0", "q4_0")])
def test_a_linear_256_does_not_divide_falls_back_to_llama_cpps_type_and_the_result_lists_it(method, gtype, fallback,
                                                                                            calib_ids):
    model = narrow_llama(intermediate=288)  # down_proj reads 288 = 9·32 inputs
    result = quantize_(model, config_from_dict(method, {"kind": "gguf", "type": gtype}),
                       None if method == "rtn" else calib_ids)
    down = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    assert result.details["gguf_fallbacks"] == {
        name: {"type": fallback, "instead_of": gtype, "in_features": 288} for name in down}
    assert result.grid_overrides == {name: GGUFBlockGrid(fallback) for name in down}
    assert result.describe_grids() == "mixed " + ", ".join(sorted([f"gguf:{gtype}×12", f"gguf:{fallback}×2"]))
    for name, qweight in result.weights.items():
        assert qweight.grid == GGUFBlockGrid(fallback if name in down else gtype)
        assert_encodes_exactly(qweight)


def test_a_width_no_fallback_fits_is_refused_naming_the_linear_and_what_to_do():
    from tritium.quant import QuantConfigError

    with pytest.raises(QuantConfigError, match=r"model\.layers\.0\.mlp\.down_proj: GGUF Q2_K stores blocks of 256 "
                                               r".*input width 272, nor do those of Q4_0.*skip this linear"):
        quantize_(narrow_llama(intermediate=272), config_from_dict("rtn", {"kind": "gguf", "type": "q2_k"}))
    # skipped, the narrow linears stay in float and the rest is quantized
    result = quantize_(narrow_llama(intermediate=272), config_from_dict("rtn", {"kind": "gguf", "type": "q2_k"},
                                                                         skip=["*.down_proj"]))
    assert len(result.weights) == 12 and "gguf_fallbacks" not in result.details


# The types the tests above run no AWQ on: the simple 5- and 8-bit ones on the outlier model (widths of 64 and
# 128 hold their 32-weight blocks), Q5_K and TQ2_0 on the wide one (their 256-weight super-blocks).
AWQ_REST = [("q5_0", outlier_model), ("q5_1", outlier_model), ("q8_0", outlier_model),
            ("q5_k", wide_outlier_model), ("tq2_0", wide_outlier_model)]


def test_every_gguf_type_has_an_awq_case():
    covered = {t for t, m, _ in CALIBRATED_CASES if m == "awq"} | {"q4_0", "q4_1"} | {t for t, _ in AWQ_REST}
    assert covered == set(GGUF_BLOCK_TYPES)


@pytest.mark.parametrize("gtype, make_model", AWQ_REST)
def test_awq_on_the_remaining_types_is_exact_to_the_format_and_no_worse_than_rtn(gtype, make_model, calib_ids):
    grid = {"kind": "gguf", "type": gtype}
    reference, rtn, model = make_model(), make_model(), make_model()
    quantize_(rtn, config_from_dict("rtn", grid))
    result = quantize_(model, config_from_dict("awq", grid, **QUICK_AWQ), calib_ids)
    assert result.weights and not result.grid_overrides
    for qweight in result.weights.values():
        assert qweight.grid == GGUFBlockGrid(gtype)
        assert_encodes_exactly(qweight)  # gguf's own dequantizer reads back tritium's weight bit for bit
    # AWQ's searches include RTN's own point (α = 0, clip ratio 1), so each module's error is at most RTN's
    assert hidden_error(model, reference, calib_ids) <= hidden_error(rtn, reference, calib_ids)
