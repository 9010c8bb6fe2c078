"""Mixed precision: per-linear grids, the sensitivity-driven bit allocator, and its bad-input rule."""

import pytest
import torch

import tritium.runner as runner
from tritium.eval.report import write_report
from tritium.eval.size import size_report
from tritium.methods import RTNConfig, config_from_dict, quantize_
from tritium.methods.gptq import GPTQConfig
from tritium.methods.mixed import allocate, default_candidates, input_second_moments, rtn_sensitivity
from tritium.models import decoder_layout, tiny_model, tiny_tokenizer
from tritium.quant import QuantConfigError, TernaryGrid, UniformGrid, quantize_weight
from tritium.recipes import load_recipe

GROUP = 32
CANDIDATES = default_candidates(UniformGrid(2, GROUP))


def average_bits(result) -> float:
    """Bits per weight of the quantized linears, counted from the weights themselves."""
    return (sum(q.storage_bits() for q in result.weights.values())
            / sum(q.codes.numel() for q in result.weights.values()))


def test_default_candidates_are_ternary_and_2_3_4_bits_at_the_recipes_group():
    assert CANDIDATES == (TernaryGrid("twn", GROUP), UniformGrid(2, GROUP), UniformGrid(3, GROUP),
                          UniformGrid(4, GROUP))
    assert default_candidates(TernaryGrid("dlt", 128, ragged_groups=True))[0] == TernaryGrid("dlt", 128, True)


@pytest.mark.parametrize("budget", [2.2, 2.5, 3.0, 3.7])
def test_the_allocator_hits_the_budget_within_a_hundredth_of_a_bit(budget, calib_ids):
    model = tiny_model("llama", num_hidden_layers=8)  # enough linears for a fine-grained fit
    result = quantize_(model, RTNConfig(grid=UniformGrid(2, GROUP), bits_budget=budget), calib_ids)
    achieved = average_bits(result)
    assert budget - 0.01 <= achieved <= budget + 1e-9
    report = result.details["mixed_precision"]
    assert report["achieved_bits_per_weight"] == pytest.approx(achieved, abs=1e-5)
    assert report["bits_budget"] == budget and len(report["layers"]) == len(result.weights)
    # The size report counts each linear on its own grid (llama's linears have no bias).
    size = size_report(model, result.grid, result.weights, result.grid_overrides)
    assert size.linear_bits_per_weight == pytest.approx(achieved)
    # Each layer's weights lie on the grid the report gives it, and more than one grid is in use.
    for name, qweight in result.weights.items():
        assert qweight.grid.describe() == report["layers"][name]["grid"] == result.grid_for(name).describe()
    assert len({q.grid for q in result.weights.values()}) > 1


def test_allocation_spends_bits_where_the_error_drops_most():
    # Two equal layers, one cheap and one dear option each; the budget pays for one upgrade.
    bits = [[100.0, 200.0], [100.0, 200.0]]
    assert allocate(bits, [[5.0, 4.0], [50.0, 1.0]], budget_bits=300) == [0, 1]
    assert allocate(bits, [[50.0, 1.0], [5.0, 4.0]], budget_bits=300) == [1, 0]
    assert allocate(bits, [[5.0, 4.0], [50.0, 1.0]], budget_bits=400) == [1, 1]
    # An option that costs more and does not lower the error is never taken.
    assert allocate([[100.0, 200.0]], [[5.0, 6.0]], budget_bits=1000) == [0]


def test_sensitivity_is_the_rtn_error_weighted_by_input_second_moments(calib_ids):
    model = tiny_model("llama")
    layout = decoder_layout(model)
    linears = layout.quantizable_linears()
    moments = input_second_moments(model, layout, linears, calib_ids)
    name = "model.layers.1.mlp.down_proj"
    captured = []
    handle = linears[name].register_forward_hook(lambda m, args, out: captured.append(args[0].reshape(-1, 128)))
    with torch.no_grad():
        model(calib_ids)
    handle.remove()
    x = torch.cat(captured)
    assert torch.allclose(moments[name], x.pow(2).mean(0), rtol=1e-5)
    w = linears[name].weight.detach()
    error = quantize_weight(w, UniformGrid(3, GROUP)).dequantize() - w
    expected = float((error.pow(2) * x.pow(2).mean(0)).sum())
    assert rtn_sensitivity(w, moments[name], UniformGrid(3, GROUP)) == pytest.approx(expected, rel=1e-4)
    # Fewer bits, more error.
    errors = [rtn_sensitivity(w, moments[name], g) for g in CANDIDATES[1:]]
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_rtn_and_gptq_run_under_a_budget_end_to_end(family, calib_ids):
    for config in (RTNConfig(grid=UniformGrid(2, GROUP), bits_budget=2.8),
                   GPTQConfig(grid=UniformGrid(2, GROUP), bits_budget=2.8)):
        model = tiny_model(family)
        result = quantize_(model, config, calib_ids)
        assert average_bits(result) <= 2.8 + 1e-9
        assert len({q.grid for q in result.weights.values()}) > 1
        assert result.grid_overrides and result.summary()["grid_overrides"]
        for name, module in decoder_layout(model).quantizable_linears().items():
            qweight = result.weights[name]
            assert qweight.grid == result.grid_for(name)
            assert torch.equal(module.weight, qweight.dequantize())
        assert result.method_args["bits_budget"] == 2.8


def test_gptq_quantizes_each_linear_on_its_own_grid(calib_ids):
    overrides = {"*.mlp.down_proj": UniformGrid(4, GROUP), "model.layers.0.self_attn.q_proj": TernaryGrid("twn", GROUP)}
    result = quantize_(tiny_model("llama"), GPTQConfig(grid=UniformGrid(2, GROUP), grid_overrides=overrides), calib_ids)
    grids = {name: q.grid for name, q in result.weights.items()}
    assert grids["model.layers.1.mlp.down_proj"] == UniformGrid(4, GROUP)
    assert grids["model.layers.0.self_attn.q_proj"] == TernaryGrid("twn", GROUP)
    assert grids["model.layers.1.self_attn.q_proj"] == UniformGrid(2, GROUP)
    assert set(result.grid_overrides) == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj",
                                          "model.layers.0.self_attn.q_proj"}


def test_recipe_grid_dicts_build_the_mixed_precision_settings():
    config = config_from_dict("rtn", {"kind": "uniform", "bits": 2, "group": 32}, bits_budget=2.5,
                              candidate_grids=[{"kind": "uniform", "bits": 2, "group": 32},
                                               {"kind": "uniform", "bits": 4, "group": 32}])
    assert config.candidate_grids == (UniformGrid(2, 32), UniformGrid(4, 32))
    assert config.method_args()["candidate_grids"][1]["bits"] == 4
    assert "bits_budget" not in RTNConfig().method_args()  # off: the settings stay out of the record
    config = config_from_dict("rtn", {"kind": "uniform"}, grid_overrides={"*.down_proj": {"kind": "ternary"}})
    assert config.grid_for("model.layers.0.mlp.down_proj") == TernaryGrid()


@pytest.mark.parametrize("budget", [1.5, 4.7])
def test_an_unreachable_budget_fails_before_calibration(budget, monkeypatch):
    called = []
    monkeypatch.setattr(runner, "calibration_samples", lambda *a, **k: called.append("calibration"))
    monkeypatch.setattr(runner, "quantize_", lambda *a, **k: called.append("quantize"))
    recipe = load_recipe("w2g128-gptq-cpu")
    recipe["grid"] = {"kind": "uniform", "bits": 2, "group": GROUP}
    recipe["method_args"]["bits_budget"] = budget
    with pytest.raises(QuantConfigError, match=r"cannot be reached.*between 2\.100 and 4\.625 bits per weight"):
        runner.quantize_model(tiny_model("llama"), tiny_tokenizer(), recipe)
    assert called == []


def test_quantize_rejects_bad_mixed_precision_settings_before_touching_the_model(calib_ids, monkeypatch):
    import tritium.methods.mixed as mixed

    monkeypatch.setattr(mixed, "input_second_moments", lambda *a, **k: pytest.fail("sensitivity was measured"))
    model = tiny_model("llama")
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    grid = UniformGrid(2, GROUP)
    with pytest.raises(QuantConfigError, match="between 2.100 and 4.625"):
        quantize_(model, RTNConfig(grid=grid, bits_budget=2.0), calib_ids)
    with pytest.raises(QuantConfigError, match="needs calibration data"):
        quantize_(model, RTNConfig(grid=grid, bits_budget=2.5))
    with pytest.raises(QuantConfigError, match="names none of the quantized linears"):
        quantize_(model, RTNConfig(grid=grid, grid_overrides={"*.mlp.gate": grid}))
    with pytest.raises(QuantConfigError, match="not both"):
        quantize_(model, RTNConfig(grid=grid, bits_budget=2.5, grid_overrides={"*.down_proj": grid}), calib_ids)
    with pytest.raises(QuantConfigError, match="set bits_budget too"):
        quantize_(model, RTNConfig(grid=grid, candidate_grids=(grid,)))
    with pytest.raises(QuantConfigError, match="does not divide"):  # a candidate's group is checked up front
        quantize_(model, RTNConfig(grid=grid, bits_budget=3.0, candidate_grids=(UniformGrid(2, 48),)), calib_ids)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_the_report_shows_the_allocation_per_layer(tmp_path, calib_ids):
    model = tiny_model("llama")
    result = quantize_(model, RTNConfig(grid=UniformGrid(2, GROUP), bits_budget=3.0), calib_ids)
    row = runner.quantized_row(model, result, {}, None, 1.0)
    assert row["mixed_precision"]["layers"]["model.layers.0.mlp.up_proj"]["label"] in ("T", "W2", "W3", "W4")
    assert row["grid"].startswith("mixed ")
    assert row["size"]["linear_bits_per_weight"] == pytest.approx(average_bits(result))
    _, md_path = write_report(tmp_path, {"title": "t"}, [row])
    text = md_path.read_text()
    assert "| block | q_proj | k_proj | v_proj | o_proj | gate_proj | up_proj | down_proj | bits/weight |" in text
    assert "| model.layers.1 |" in text and "Bit allocation: budget 3" in text


MIXED = {"*.mlp.down_proj": UniformGrid(4, GROUP), "*.self_attn.q_proj": TernaryGrid("twn", GROUP),
         "model.layers.1.mlp.gate_proj": UniformGrid(3, GROUP)}


def _awq():
    from tritium.methods.awq import AWQConfig

    return AWQConfig(grid=UniformGrid(2, GROUP), grid_overrides=MIXED, n_grid=4, clip_n_grid=4)


def _tesseraq():
    from tritium.methods.tesseraq import TesseraQConfig

    return TesseraQConfig(grid=UniformGrid(2, GROUP), grid_overrides=MIXED, soft_fractions=(0.5,), steps_per_stage=4,
                          batch_size=4, n_grid=4, clip_n_grid=4)


@pytest.mark.parametrize("make_config", [_awq, _tesseraq], ids=["awq", "tesseraq"])
def test_awq_and_tesseraq_quantize_each_linear_on_its_own_grid(make_config, calib_ids):
    model = tiny_model("llama")
    result = quantize_(model, make_config(), calib_ids)
    for name, module in decoder_layout(model).quantizable_linears().items():
        qweight = result.weights[name]
        expected = RTNConfig(grid=UniformGrid(2, GROUP), grid_overrides=MIXED).grid_for(name)
        assert qweight.grid == expected
        lo, hi = (-1, 1) if isinstance(expected, TernaryGrid) else (0, 2 ** expected.bits - 1)
        assert int(qweight.codes.min()) >= lo and int(qweight.codes.max()) <= hi
        assert torch.equal(module.weight, qweight.dequantize())
    # The 4-bit down_proj uses more than 4 levels somewhere; the 2-bit up_proj never more than 4.
    assert len(torch.unique(result.weights["model.layers.0.mlp.down_proj"].codes)) > 4
    assert len(torch.unique(result.weights["model.layers.0.mlp.up_proj"].codes)) <= 4


def test_a_resumed_mixed_run_keeps_every_linears_grid(calib_ids, tmp_path):
    config = GPTQConfig(grid=UniformGrid(2, GROUP), grid_overrides=MIXED, checkpoint_dir=str(tmp_path))
    first = quantize_(tiny_model("llama"), config, calib_ids)
    resumed = quantize_(tiny_model("llama"), config, calib_ids)  # every block replays from its checkpoint
    assert resumed.details["resumed_from_block"] == 2
    for name, qweight in first.weights.items():
        assert resumed.weights[name].grid == qweight.grid
        assert torch.equal(resumed.weights[name].codes, qweight.codes)
    # Other per-linear grids make another run: the checkpoint is refused, not mixed in.
    other = GPTQConfig(grid=UniformGrid(2, GROUP), grid_overrides={"*.mlp.down_proj": UniformGrid(3, GROUP)},
                       checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="holds a different run"):
        quantize_(tiny_model("llama"), other, calib_ids)


def test_a_method_that_reads_one_grid_refuses_mixed_precision(calib_ids):
    config = config_from_dict("dlt", {"kind": "ternary", "variant": "dlt", "group": GROUP}, bits_budget=2.5)
    with pytest.raises(QuantConfigError, match="quantizes every linear on one grid"):
        quantize_(tiny_model("llama"), config, calib_ids)


def test_the_allocation_costs_less_sensitivity_than_one_grid_for_all_at_the_same_bits(calib_ids):
    model = tiny_model("llama", num_hidden_layers=4)
    linears = decoder_layout(model).quantizable_linears()
    n_weights = sum(m.weight.numel() for m in linears.values())
    uniform = quantize_(tiny_model("llama", num_hidden_layers=4), RTNConfig(grid=UniformGrid(3, GROUP)))
    budget = sum(q.storage_bits() for q in uniform.weights.values()) / n_weights  # all-W3 fits exactly
    result = quantize_(model, RTNConfig(grid=UniformGrid(3, GROUP), bits_budget=budget), calib_ids)
    layers = result.details["mixed_precision"]["layers"]
    chosen = sum(layer["sensitivity"][layer["grid"]] for layer in layers.values())
    all_w3 = sum(layer["sensitivity"]["W3g32"] for layer in layers.values())
    assert chosen < all_w3 and average_bits(result) <= budget + 1e-9
