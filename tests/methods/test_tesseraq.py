import pytest
import torch

from tritium.calib import NonFiniteError, PipelineSettings, run_blockwise
from tritium.methods import config_from_dict, quantize_
from tritium.methods.base import selected_linears
from tritium.methods.grid_params import GroupParams, nearest_codes
from tritium.methods.tesseraq import (
    RoundingState,
    TesseraQConfig,
    inverse_rectified_sigmoid,
    rectified_sigmoid,
    tesseraq_block,
)
from tritium.methods.grid_params import layout_for, rtn_params
from tritium.models import decoder_layout
from tritium.quant.grids import QuantConfigError, TernaryGrid, UniformGrid

from tiny_outliers import hidden_error, outlier_model

QUICK = dict(soft_fractions=(0.5, 0.1), steps_per_stage=8, batch_size=4, lr=1e-2, dst_lr=1e-2, n_grid=5,
             clip_n_grid=5)


def test_rectified_sigmoid_inverse_round_trips():
    h = torch.linspace(0, 0.999, 101)
    assert torch.allclose(rectified_sigmoid(inverse_rectified_sigmoid(h)), h, atol=1e-5)


@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=16), TernaryGrid("dlt", group=16)])
def test_soft_weights_start_at_the_float_weights(grid):
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)) * 0.05
    layout = layout_for(w, grid)
    params = rtn_params(w, grid, layout, clip=2.0 if isinstance(grid, TernaryGrid) else 1.0)
    state = RoundingState("w", w, params, grid, torch.device("cpu"))
    inside = ~state.hard
    assert inside.float().mean() > 0.8  # only the groups' extremes may fall outside the grid
    assert torch.allclose(state.weight()[inside], w[inside], atol=1e-5)


def _run_first_block(config, ids, observe):
    model = outlier_model()
    layout = decoder_layout(model)
    checks = []

    def method(ctx):
        result = tesseraq_block(ctx, config, observe)
        trained = observe[-1].block_output(ctx.quant_inputs)
        for name, qweight in result.weights.items():  # fold, as the pipeline does
            ctx.block.get_submodule(name).weight.data.copy_(qweight.dequantize())
        checks.append((trained, ctx.forward(ctx.quant_inputs), result))
        return result

    run_blockwise(model, layout, selected_linears(layout, ()), ids, method, PipelineSettings(), config.grid,
                  "tesseraq", progress=False)
    return checks


@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=16), TernaryGrid("dlt", group=16)])
def test_par_ends_hard_and_the_folded_weights_reproduce_the_trained_block(grid, calib_ids):
    observe = []
    checks = _run_first_block(TesseraQConfig(grid=grid, **QUICK), calib_ids, observe)
    for reconstruction, (trained, folded, result) in zip(observe, checks):
        assert all(state.all_hard() for state in reconstruction.states.values())
        assert torch.equal(trained, folded)
        for name, state in reconstruction.states.items():
            qweight = result.weights[name]
            # Plain round-to-nearest with the stored scale/zero/shift gives back the same codes.
            params = GroupParams(qweight.scale, qweight.zero, qweight.shift)
            rtn_codes = nearest_codes(qweight.dequantize(), params, grid, qweight.layout)
            assert torch.equal(rtn_codes, qweight.codes.float())


def test_dst_factors_stay_within_zero_and_two(calib_ids):
    observe = []
    config = TesseraQConfig(grid=UniformGrid(bits=2, group=16), **(QUICK | {"dst_lr": 5.0, "awq_init": False}))
    _run_first_block(config, calib_ids, observe)
    factors = torch.cat([s.dst_factor().detach().flatten() for r in observe for s in r.states.values()])
    assert factors.min() >= 0 and factors.max() <= 2
    assert factors.max() > 1.5 or factors.min() < 0.5  # the huge learning rate really pushed them


@pytest.mark.parametrize("grid", [
    {"kind": "uniform", "bits": 2, "group": 16},
    {"kind": "ternary", "variant": "absmean", "group": 16},
    {"kind": "ternary", "variant": "dlt", "group": 16},  # ternary with a shift
])
def test_tesseraq_lowers_block_output_error_against_rtn(grid, calib_ids):
    reference = outlier_model()
    rtn = outlier_model()
    quantize_(rtn, config_from_dict("rtn", grid))
    tesseraq = outlier_model()
    result = quantize_(tesseraq, config_from_dict("tesseraq", grid, **QUICK), calib_ids)
    assert hidden_error(tesseraq, reference, calib_ids) < hidden_error(rtn, reference, calib_ids)
    assert all(0 <= b["dst_min"] <= b["dst_max"] <= 2 for b in result.details["blocks"])


def test_a_schedule_that_softens_again_is_refused():
    with pytest.raises(QuantConfigError, match="must decrease"):
        TesseraQConfig(soft_fractions=(0.2, 0.5))


def test_a_negative_gptq_dampening_is_refused():
    with pytest.raises(QuantConfigError, match="gptq_damp_percent must be ≥ 0"):
        TesseraQConfig(gptq_start=True, gptq_damp_percent=-0.01)


def test_a_non_finite_loss_stops_the_run_naming_the_block(calib_ids):
    """Finite activations can still overflow the loss (a target of 1e30, squared): the run stops there."""
    model = outlier_model()
    layout = decoder_layout(model)
    config = TesseraQConfig(grid=UniformGrid(bits=2, group=16), **QUICK)

    def method(ctx):
        if ctx.index == 1:
            ctx.float_targets = ctx.float_targets.clone()
            ctx.float_targets[:, 0, 0] = 1e30
        return tesseraq_block(ctx, config)

    with pytest.raises(NonFiniteError, match=r"TesseraQ loss at stage 0, step 0 in block 1 \(model\.layers\.1\)"):
        run_blockwise(model, layout, selected_linears(layout, ()), calib_ids, method, PipelineSettings(), config.grid,
                      "tesseraq", progress=False)


@pytest.mark.parametrize("grid", [
    {"kind": "uniform", "bits": 2, "group": 16},
    {"kind": "ternary", "variant": "dlt", "group": 16},
])
def test_a_gptq_start_hardened_at_once_is_gptq(grid, calib_ids):
    """With no PAR steps and no DST, the GPTQ start's codes are exactly GPTQ's (static groups under the same
    RTN parameters, activation order): PAR then starts from GPTQ's solution."""
    gptq = outlier_model()
    want = quantize_(gptq, config_from_dict("gptq", grid, act_order=True, static_groups=True), calib_ids)
    start = outlier_model()
    got = quantize_(start, config_from_dict("tesseraq", grid, awq_init=False, gptq_start=True, dst=False,
                                            soft_fractions=(0.5,), steps_per_stage=0), calib_ids)
    assert set(got.weights) == set(want.weights)
    for name, qweight in want.weights.items():
        assert torch.equal(got.weights[name].codes, qweight.codes), name
        assert torch.equal(got.weights[name].scale, qweight.scale), name
    blocks = got.details["blocks"]
    assert all(b["final_loss"] == pytest.approx(b["gptq_start_loss"], rel=1e-5) for b in blocks)


def test_par_from_a_gptq_start_lowers_the_block_error_below_gptq(calib_ids):
    config = config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16}, **(QUICK | {
        "awq_init": False, "gptq_start": True, "steps_per_stage": 30}))
    result = quantize_(outlier_model(), config, calib_ids)
    blocks = result.details["blocks"]
    assert all(b["final_loss"] < b["gptq_start_loss"] for b in blocks), blocks


def test_a_block_that_par_made_worse_keeps_the_starts_codes(calib_ids):
    """PAR at a learning rate far too high drifts off GPTQ's solution: with revert_if_worse every such block
    stores GPTQ's own codes and scales, and reports the error of what it stores."""
    grid = {"kind": "uniform", "bits": 2, "group": 16}
    want = quantize_(outlier_model(), config_from_dict("gptq", grid, act_order=True, static_groups=True), calib_ids)
    drifting = QUICK | {"awq_init": False, "gptq_start": True, "lr": 50.0, "dst_lr": 50.0}
    plain = quantize_(outlier_model(), config_from_dict("tesseraq", grid, **drifting), calib_ids)
    got = quantize_(outlier_model(), config_from_dict("tesseraq", grid, **(drifting | {"revert_if_worse": True})),
                    calib_ids)
    blocks = got.details["blocks"]
    assert all(b["reverted_to_start"] for b in blocks), blocks
    for b, p in zip(blocks, plain.details["blocks"]):
        assert b["final_loss"] == pytest.approx(b["gptq_start_loss"], rel=1e-5)
        assert b["start_final_loss"] == pytest.approx(b["gptq_start_loss"], rel=1e-5)
        assert b["par_final_loss"] > b["final_loss"]
    assert plain.details["blocks"][0]["final_loss"] == pytest.approx(blocks[0]["par_final_loss"], rel=1e-5)
    for name, qweight in want.weights.items():
        assert torch.equal(got.weights[name].codes, qweight.codes), name
        assert torch.equal(got.weights[name].scale, qweight.scale), name


def test_an_awq_start_that_par_made_worse_keeps_its_rounding_to_nearest(calib_ids):
    """Without a GPTQ start the start's codes are AWQ's scales with plain rounding: hardened at once, the
    same as a TesseraQ run with no PAR steps and no DST."""
    grid = {"kind": "uniform", "bits": 2, "group": 16}
    want = quantize_(outlier_model(), config_from_dict("tesseraq", grid, **(QUICK | {
        "dst": False, "soft_fractions": (0.5,), "steps_per_stage": 0})), calib_ids)
    got = quantize_(outlier_model(), config_from_dict("tesseraq", grid, **(QUICK | {
        "lr": 50.0, "dst_lr": 50.0, "revert_if_worse": True})), calib_ids)
    blocks = got.details["blocks"]
    assert all(b["reverted_to_start"] and b["par_final_loss"] > b["final_loss"] for b in blocks), blocks
    for b, w in zip(blocks, want.details["blocks"]):
        assert b["final_loss"] == pytest.approx(w["final_loss"], rel=1e-5)
    for name, qweight in want.weights.items():
        assert torch.equal(got.weights[name].codes, qweight.codes), name


@pytest.mark.parametrize("grid", [{"kind": "ternary", "variant": "dlt", "group": 16},
                                  {"kind": "uniform", "bits": 2, "group": 16}])
def test_gptq_under_awqs_scales_starts_below_awqs_rounding_to_nearest(grid, calib_ids):
    """awq_init and gptq_start together (the ternary-g128-cpu start): GPTQ rounds each block under AWQ's
    scales and clipping. Hardened at once, the stored codes are GPTQ's (final_loss is gptq_start_loss), and on
    the outlier model their block error is below AWQ's own rounding to nearest in every block."""
    hard_at_once = QUICK | {"dst": False, "soft_fractions": (0.5,), "steps_per_stage": 0}
    awq = quantize_(outlier_model(), config_from_dict("tesseraq", grid, **hard_at_once), calib_ids)
    both = quantize_(outlier_model(), config_from_dict("tesseraq", grid, **(hard_at_once | {"gptq_start": True})),
                     calib_ids)
    assert any(k.startswith("awq.") for k in both.details["blocks"][0]), "the AWQ search did not run"
    for b, a in zip(both.details["blocks"], awq.details["blocks"]):
        assert b["final_loss"] == pytest.approx(b["gptq_start_loss"], rel=1e-5)
        assert b["final_loss"] < a["final_loss"], (b, a)


def test_a_block_that_par_improved_keeps_pars_codes(calib_ids):
    config = config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16}, **(QUICK | {
        "awq_init": False, "gptq_start": True, "steps_per_stage": 30, "revert_if_worse": True}))
    blocks = quantize_(outlier_model(), config, calib_ids).details["blocks"]
    assert not any(b["reverted_to_start"] for b in blocks), blocks
    assert all(b["final_loss"] < b["start_final_loss"] for b in blocks)


def _first_blocks_with_holdout(config, ids, holdout, monkeypatch):
    """Run ``config`` with ``holdout`` held-out samples; per block: its stats, the output error of the folded
    block on the held-out samples measured here, and how many samples AWQ and PAR saw."""
    import tritium.methods.tesseraq as tesseraq_module

    seen_by_awq, observe, blocks = [], [], []
    real_awq = tesseraq_module.awq_transform
    monkeypatch.setattr(tesseraq_module, "awq_transform",
                        lambda ctx, cfg: seen_by_awq.append(ctx.quant_inputs.shape[0]) or real_awq(ctx, cfg))
    model = outlier_model()

    def method(ctx):
        result = tesseraq_block(ctx, config, observe)
        for name, qweight in result.weights.items():  # fold, as the pipeline does
            ctx.block.get_submodule(name).weight.data.copy_(qweight.dequantize())
        out = ctx.forward(ctx.quant_inputs[-holdout:]).float()
        error = float((out - ctx.float_targets[-holdout:].float()).pow(2).mean())
        blocks.append((result.stats, error, ctx.quant_inputs.shape[0], observe[-1].ctx.quant_inputs.shape[0]))
        return result

    run_blockwise(model, decoder_layout(model), selected_linears(decoder_layout(model), ()), ids, method,
                  PipelineSettings(), config.grid, "tesseraq", progress=False)
    return blocks, seen_by_awq


def test_held_out_samples_train_nothing_and_their_block_error_is_reported(calib_ids, monkeypatch):
    config = config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16},
                              **(QUICK | {"holdout_samples": 2}))
    blocks, seen_by_awq = _first_blocks_with_holdout(config, calib_ids, 2, monkeypatch)
    n = calib_ids.shape[0]
    assert len(blocks) == 2 and seen_by_awq == [n - 2] * len(blocks)  # AWQ's search saw the training samples only
    for stats, held_error, all_samples, trained_on in blocks:
        assert all_samples == n and trained_on == n - 2  # PAR and DST too; the stream still carries all n
        assert stats["holdout_loss"] == pytest.approx(held_error, rel=1e-4)
        assert stats["final_loss"] > 0 and "gptq_start_holdout_loss" not in stats


def test_a_gptq_start_reports_its_own_held_out_error(calib_ids, monkeypatch):
    """Hardened at once, the result is GPTQ's codes: its held-out error is the GPTQ start's."""
    config = config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16}, awq_init=False,
                              gptq_start=True, dst=False, soft_fractions=(0.5,), steps_per_stage=0, holdout_samples=2)
    blocks, _ = _first_blocks_with_holdout(config, calib_ids, 2, monkeypatch)
    for stats, held_error, _, _ in blocks:
        assert stats["gptq_start_holdout_loss"] == pytest.approx(stats["holdout_loss"], rel=1e-5)
        assert stats["holdout_loss"] == pytest.approx(held_error, rel=1e-4)


def test_revert_if_worse_judges_on_the_held_out_samples(calib_ids, monkeypatch):
    config = config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16}, **(QUICK | {
        "awq_init": False, "gptq_start": True, "lr": 50.0, "dst_lr": 50.0, "holdout_samples": 2,
        "revert_if_worse": True}))
    blocks, _ = _first_blocks_with_holdout(config, calib_ids, 2, monkeypatch)
    for stats, held_error, _, _ in blocks:
        assert stats["reverted_to_start"] and stats["par_holdout_loss"] > stats["holdout_loss"]
        assert stats["start_holdout_loss"] == pytest.approx(stats["gptq_start_holdout_loss"], rel=1e-5)
        assert stats["holdout_loss"] == pytest.approx(held_error, rel=1e-4)  # the error of what is stored
        assert stats["final_loss"] == pytest.approx(stats["gptq_start_loss"], rel=1e-5)


def test_holdout_samples_must_leave_samples_to_train_on(calib_ids):
    for bad in (-1, 1.5, True):
        with pytest.raises(QuantConfigError, match="holdout_samples must be a whole number"):
            config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16}, holdout_samples=bad)
    config = config_from_dict("tesseraq", {"kind": "uniform", "bits": 2, "group": 16},
                              **(QUICK | {"holdout_samples": calib_ids.shape[0]}))
    with pytest.raises(QuantConfigError, match=f"leaves none of the {calib_ids.shape[0]} calibration samples"):
        quantize_(outlier_model(), config, calib_ids)
